#!/usr/bin/env python3
"""Print N distinct free TCP ports on 127.0.0.1, space separated (stdlib only).

The kernel picks each port (bind to port 0); all sockets are held open until every
port is chosen so the N ports are distinct, then closed. There is an unavoidable
small race between this and the caller binding them.
"""

import socket
import sys


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    if not 1 <= n <= 100:
        print("free_ports.py: N must be 1..100", file=sys.stderr)
        return 2
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
