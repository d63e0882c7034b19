"""The socket-free hot-path harness proxies correctly (its timing is for benchmarks, not tests)."""

from tests.performance.hot_path import measure


async def test_hot_path_harness_forwards_request_and_response() -> None:
    per_request, sent_upstream, sent_to_client = await measure(200)
    assert per_request > 0
    assert sent_upstream.startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in sent_upstream
    assert sent_to_client.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: keep-alive" not in sent_to_client
    assert sent_to_client.endswith(b"\r\n\r\nhello from a\n")
