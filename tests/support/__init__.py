"""Shared test helpers: real loopback backends, raw clients and node fixtures."""
