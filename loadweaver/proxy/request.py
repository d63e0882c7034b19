"""A parsed request head, as the client connection hands it to an exchange."""

from dataclasses import dataclass

from loadweaver.proxy.headers import Header


@dataclass(slots=True)
class ParsedRequest:
    method: bytes
    target: bytes
    headers: list[Header]  # forwarded as they are
    special: list[Header]  # lower-cased names: framing, hop-by-hop, Host and forwarding headers
    http11: bool
    keep_alive: bool
    upgrade: bool
    content_length: int | None
    chunked: bool
    host: bytes | None  # the Host header; None when absent

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)
