"""One active probe of one backend: an HTTP request or a TCP connect.

Probes never raise (except cancellation): every failure is a result with a short reason, since
the reason is what an operator reads on the status page and in the log.
"""

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

import aiohttp

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.config.models import HealthCheck

USER_AGENT = "loadweaver-health"
MAX_BODY = 64 * 1024  # how much of a body `expect_body` searches
MAX_SHOWN = 40  # characters of `expect_body` quoted in a reason


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str
    latency_ms: float


async def probe_http(
    check: HealthCheck,
    address: UpstreamAddress,
    session: aiohttp.ClientSession,
    ssl_context: ssl.SSLContext | None,
    *,
    server_name: str | None = None,
) -> ProbeResult:
    """Sends `check.method check.path` and judges the status and, if asked, the body.

    `ssl_context` is used for https addresses; `server_name` overrides the name the
    certificate must match (and the SNI), by default the address's host.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            ok, reason = await _exchange(check, address, session, ssl_context, server_name)
    except TimeoutError:
        ok, reason = False, timed_out(check.timeout)
    except Exception as error:
        ok, reason = False, _http_failure(error)
    return ProbeResult(ok, reason, _elapsed_ms(started))


async def probe_tcp(check: HealthCheck, address: UpstreamAddress) -> ProbeResult:
    """Succeeds when a TCP connection opens within `check.timeout` (no TLS, nothing sent)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            _, writer = await asyncio.open_connection(address.host, address.port)
    except TimeoutError:
        return ProbeResult(False, timed_out(check.timeout), _elapsed_ms(started))
    except Exception as error:
        return ProbeResult(False, _connect_failure(error), _elapsed_ms(started))
    latency_ms = _elapsed_ms(started)
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), check.timeout)
    return ProbeResult(True, "ok", latency_ms)


def timed_out(seconds: float) -> str:
    return f"timed out after {seconds:g}s"


async def _exchange(
    check: HealthCheck,
    address: UpstreamAddress,
    session: aiohttp.ClientSession,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None,
) -> tuple[bool, str]:
    headers = {"User-Agent": USER_AGENT, **check.headers, "Host": check.host or address.authority}
    async with session.request(
        check.method,
        address.url + check.path,
        headers=headers,
        allow_redirects=False,  # a redirect is an answer: expect_status decides about it
        ssl=ssl_context if ssl_context is not None else True,
        server_hostname=server_name if address.tls else None,
    ) as response:
        if not check.accepts(response.status):
            return False, f"status {response.status}"
        if check.expect_body is not None and not await _body_contains(
            response, check.expect_body.encode()
        ):
            return False, f"body lacks {_shown(check.expect_body)}"
    return True, "ok"


async def _body_contains(response: aiohttp.ClientResponse, needle: bytes) -> bool:
    seen = bytearray()
    while len(seen) < MAX_BODY:
        chunk = await response.content.read(MAX_BODY - len(seen))
        if not chunk:
            break
        seen += chunk
        if needle in seen:
            return True
    return needle in seen


def _shown(text: str) -> str:
    return repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...")


def _http_failure(error: Exception) -> str:
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        verify_message = getattr(error.certificate_error, "verify_message", None)
        return f"TLS certificate rejected: {verify_message or error.certificate_error}"
    if isinstance(error, aiohttp.ClientSSLError):
        return f"TLS handshake failed: {_os_error_text(error.os_error)}"
    if isinstance(error, aiohttp.ClientConnectorError):
        return _connect_failure(error.os_error)
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "connection closed before a response"
    if isinstance(error, aiohttp.ClientResponseError):
        # aiohttp's parser messages run over several lines with the offending bytes.
        first_line = error.message.strip().splitlines()[0] if error.message.strip() else ""
        return f"invalid response: {first_line.rstrip(':') or error.status}"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "invalid response: the body was cut short or malformed"
    if isinstance(error, aiohttp.ClientError | OSError):
        return f"request failed: {error}"
    return f"probe failed: {type(error).__name__}: {error}"


def _connect_failure(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, OSError):
        return f"cannot connect: {_os_error_text(error)}"
    return f"cannot connect: {type(error).__name__}: {error}"


def _os_error_text(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
