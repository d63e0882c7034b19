"""The control plane's output: immutable snapshots, swapped by one reference."""
