"""Decides whose X-Forwarded-For and Forwarded headers are believed."""

import ipaddress
from collections.abc import Sequence


class TrustedProxies:
    def __init__(self, cidrs: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, ip: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def real_client(self, peer_ip: str, forwarded_for: list[bytes]) -> str:
        """The client behind trusted proxies: the rightmost X-Forwarded-For entry not trusted.

        Walking from the right stops at the first address a trusted proxy did not vouch for,
        so a client cannot choose its own identity by prepending entries (nginx's
        real_ip_recursive). Untrusted peers are their own client.
        """
        if not self.trusts(peer_ip):
            return peer_ip
        chain = [
            entry.strip().decode("latin-1")
            for value in forwarded_for
            for entry in value.split(b",")
            if entry.strip()
        ]
        for address in reversed(chain):
            if not self.trusts(address):
                return address
        return chain[0] if chain else peer_ip
