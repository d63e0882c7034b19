"""Header helpers: Connection tokens, RFC 7239 elements, rendering."""

from loadweaver.proxy.headers import (
    connection_tokens,
    forwarded_element,
    names_extra_headers,
    render_headers,
    status_line,
)


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
