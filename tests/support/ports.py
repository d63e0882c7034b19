"""Free loopback ports for tests."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, so connecting to it is refused."""
    return free_port(host)
