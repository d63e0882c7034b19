"""Responses the proxy writes itself: a status, a short plain-text body, a reason for metrics."""

import math
from dataclasses import dataclass
from http import HTTPStatus


@dataclass(frozen=True, slots=True)
class LocalReply:
    status: int
    reason: str  # a metric label: short, fixed vocabulary
    message: str  # the body: one sentence for a person
    close: bool = True
    headers: bytes = b""  # extra header lines, each ending in CRLF

    def render(self, keep_alive: bool, extra: bytes = b"") -> bytes:
        """`extra`: more header lines, each ending in CRLF, such as the request id."""
        body = (self.message + "\n").encode()
        phrase = HTTPStatus(self.status).phrase
        connection = b"keep-alive" if keep_alive else b"close"
        return (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nCache-Control: no-store\r\n%s%sConnection: %s\r\n\r\n%s"
            % (self.status, phrase.encode(), len(body), self.headers, extra, connection, body)
        )


class RequestRejectedError(Exception):
    """Raised inside parser callbacks to stop parsing; the reply is queued in order."""

    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.reason)
        self.reply = reply


def bad_request(reason: str, message: str) -> LocalReply:
    return LocalReply(400, reason, message)


LENGTH_AND_CHUNKED = bad_request(
    "length_and_chunked", "Content-Length and Transfer-Encoding cannot both be present."
)
MULTIPLE_HOSTS = bad_request("multiple_hosts", "The request has more than one Host.")
URL_TOO_LONG = LocalReply(414, "url_too_long", "The request URL is too long.")
HEADERS_TOO_LARGE = LocalReply(431, "headers_too_large", "The request header block is too large.")
BODY_TOO_LARGE = LocalReply(413, "body_too_large", "The request body is too large.")
HEADER_TIMEOUT = LocalReply(
    408, "request_header_timeout", "The request headers did not arrive in time."
)
NO_ROUTE = LocalReply(404, "no_route", "No route matches this request.", close=False)
NOT_IMPLEMENTED_TE = LocalReply(
    501, "unsupported_transfer_encoding", "Only the chunked transfer-coding is supported."
)
CONNECT_REJECTED = LocalReply(405, "connect_not_allowed", "CONNECT is not supported by this proxy.")
UPSTREAM_TIMEOUT = LocalReply(
    504, "upstream_response_timeout", "The backend did not answer in time."
)
TOTAL_TIMEOUT = LocalReply(504, "request_timeout", "The request took longer than allowed.")
QUEUE_TIMEOUT = LocalReply(
    503, "upstream_queue_timeout", "No connection to the backend became free in time."
)
CIRCUIT_OPEN = LocalReply(
    503, "circuit_breaker", "The backend is at its limit; retry shortly.", close=False
)
CONNECT_TIMEOUT = LocalReply(
    504, "upstream_connect_timeout", "The backend could not be reached in time."
)


def no_backend(message: str) -> LocalReply:
    return LocalReply(503, "no_backend", message.capitalize() + ".", close=False)


def bad_gateway(reason: str, message: str) -> LocalReply:
    return LocalReply(502, reason, message)


def too_many_requests(limit: int, remaining: int, reset: float, retry_after: float) -> LocalReply:
    """429 with the IETF RateLimit fields, in whole seconds rounded up, and Retry-After."""
    headers = (
        b"Retry-After: %d\r\nRateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\n"
        b"RateLimit-Reset: %d\r\n"
        % (max(1, math.ceil(retry_after)), limit, max(0, remaining), math.ceil(reset))
    )
    return LocalReply(
        429, "rate_limited", "Too many requests: slow down and retry later.", False, headers
    )
