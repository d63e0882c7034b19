"""Header helpers: Connection tokens, RFC 7239 elements, rendering."""

from loadweaver.proxy.headers import (
    connection_tokens,
    forwarded_element,
    names_extra_headers,
    render_headers,
    status_line,
)
from loadweaver.security.trusted import TrustedProxies


def test_connection_tokens_are_lowercased_and_protect_framing_headers() -> None:
    tokens = connection_tokens([b"keep-alive, X-Secret", b"Host,Content-Length , Upgrade"])
    assert tokens == {b"keep-alive", b"x-secret", b"upgrade"}


def test_plain_connection_values_name_no_extra_headers() -> None:
    assert not names_extra_headers([b"keep-alive", b"close", b"Upgrade"])
    assert not names_extra_headers([b"keep-alive, close"])
    assert names_extra_headers([b"close, X-Secret"])


def test_forwarded_element_quotes_ipv6_and_host() -> None:
    assert (
        forwarded_element("192.0.2.1", b"http", b"a.test")
        == b'for=192.0.2.1;proto=http;host="a.test"'
    )
    assert forwarded_element("::1", b"https", b'a"b') == b'for="[::1]";proto=https;host="a\\"b"'


def test_render_headers() -> None:
    assert render_headers([(b"A", b"1"), (b"B", b"2")]) == b"A: 1\r\nB: 2\r\n"
    assert render_headers([]) == b""


def test_status_line_uses_standard_phrases() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(299) == b"HTTP/1.1 299 Unknown\r\n"


def test_real_client_is_the_rightmost_untrusted_forwarded_address() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    chain = [b"203.0.113.9, 198.51.100.7", b"10.0.0.2"]
    assert trusted.real_client("10.0.0.1", chain) == "198.51.100.7"
    assert trusted.real_client("192.0.2.5", chain) == "192.0.2.5"  # untrusted peer
    assert trusted.real_client("10.0.0.1", []) == "10.0.0.1"
    assert trusted.real_client("10.0.0.1", [b"10.0.0.3, 10.0.0.2"]) == "10.0.0.3"
