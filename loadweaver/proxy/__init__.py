"""The data plane: listener, client protocol, one exchange per request, upstream relay, tunnels."""
