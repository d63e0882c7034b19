"""The access log: one line per request with the promised fields, in JSON or combined format,
sampled, rotated, and written by loguru's thread from batches; real nodes and backends."""

import asyncio
import json
import re
import ssl
import time
from pathlib import Path
from typing import Any

import trustme
from loguru import logger

from tests.conftest import StartBackend, StartProxied, StartProxy
from tests.support.backend import ReceivedRequest
from tests.support.client import RawClient, get
from tests.support.nodes import Proxied
from tests.support.polling import eventually
from tests.support.ports import closed_port

FIELDS = {
    "ts", "node", "listener", "client", "method", "host", "path", "status", "bytes_in",
    "bytes_out", "duration_ms", "upstream_connect_ms", "upstream_response_ms", "route", "pool",
    "backend", "retries", "request_id", "user_agent", "error", "tls",
}  # fmt: skip
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
CLF_LINE = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /clf HTTP/1\.1" 200 \d+ '
    r'"https://ref\.test/" "probe/1\.0" rt=\d+\.\d{6} route=default backend=b0 rid=\S+$'
)


def access_log(path: Path, **settings: Any) -> dict[str, Any]:
    return {"level": "warning", "access_log": {"enabled": True, "path": str(path), **settings}}


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_lines(path: Path, count: int) -> list[str]:
    await eventually(lambda: len(lines_of(path)) >= count, timeout=5.0, message=f"{path}")
    return lines_of(path)


async def send(port: int, *requests: bytes, **connect: Any) -> list[int]:
    client = await RawClient.connect(port, **connect)
    try:
        statuses = []
        for request in requests:
            await client.send(request)
            statuses.append((await client.read_response()).status)
        return statuses
    finally:
        await client.close()


async def test_json_lines_carry_every_field(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    backend = await backend_factory(name="b0")
    log = tmp_path / "access.log"
    proxy = await proxy_factory([backend.url], logging=access_log(log))
    await send(proxy.port, get("/items/7?secret=1", extra="User-Agent: probe/1.0\r\n"))

    (line,) = await wait_for_lines(log, 1)
    entry = json.loads(line)
    assert set(entry) == FIELDS
    assert TIMESTAMP.match(entry["ts"]), entry["ts"]
    assert entry["node"] == proxy.node.config.node.id
    assert (entry["listener"], entry["client"], entry["method"]) == ("web", "127.0.0.1", "GET")
    assert (entry["host"], entry["path"], entry["status"]) == ("example.test", "/items/7", 200)
    assert (entry["route"], entry["pool"], entry["backend"]) == ("default", "app", "b0")
    assert entry["request_id"] == backend.requests[0].header("X-Request-ID")
    assert entry["user_agent"] == "probe/1.0"
    assert entry["retries"] == 0
    assert entry["error"] is None
    assert entry["tls"] is None
    assert entry["bytes_in"] >= len(get("/items/7?secret=1"))
    assert entry["bytes_out"] > 100
    assert entry["duration_ms"] >= entry["upstream_response_ms"] >= 0
    assert entry["upstream_connect_ms"] >= 0


async def test_local_replies_and_failures_are_logged_with_their_reason(
    proxy_factory: StartProxy, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    proxy = await proxy_factory(
        [f"http://127.0.0.1:{closed_port()}"],
        routes=[{"name": "app", "match": {"host": "app.test"}, "pool": "app"}],
        logging=access_log(log),
    )
    await send(proxy.port, get("/", host="nowhere.test"), get("/", host="app.test"))
    await send(proxy.port, b"NOT HTTP AT ALL\r\n\r\n")

    entries = [json.loads(line) for line in await wait_for_lines(log, 3)]
    by_status = {entry["status"]: entry for entry in entries}
    assert by_status[404]["error"] == "no_route"
    assert by_status[404]["route"] is None
    assert by_status[502]["error"] == "upstream_connect_refused"
    assert (by_status[502]["route"], by_status[502]["backend"]) == ("app", "b0")
    assert by_status[400]["method"] is None
    assert by_status[400]["error"] == "malformed_request"
    assert all(entry["request_id"] for entry in entries if entry["method"] is not None)


async def test_a_connect_request_is_logged_with_its_authority_as_path(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    backend = await backend_factory(name="b0")
    log = tmp_path / "access.log"
    proxy = await proxy_factory([backend.url], logging=access_log(log))
    connect = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
    assert await send(proxy.port, connect) == [405]
    await send(proxy.port, get("/after"))

    entries = [json.loads(line) for line in await wait_for_lines(log, 2)]
    assert [(entry["method"], entry["path"], entry["status"]) for entry in entries] == [
        ("CONNECT", "example.test:443", 405),
        ("GET", "/after", 200),
    ]
    traffic = proxy.node.observing.traffic
    assert traffic is not None
    await eventually(
        lambda: (
            {"example.test:443", "/after"}
            <= {key for key, _ in traffic.summaries()["paths"].top(10)}
        ),
        message="the CONNECT request was not counted in the traffic patterns",
    )


async def test_the_combined_format(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    backend = await backend_factory(name="b0")
    log = tmp_path / "access.log"
    proxy = await proxy_factory([backend.url], logging=access_log(log, format="clf"))
    extra = "User-Agent: probe/1.0\r\nReferer: https://ref.test/\r\n"
    await send(proxy.port, get("/clf", extra=extra))
    (line,) = await wait_for_lines(log, 1)
    assert CLF_LINE.match(line), line


async def test_sampling_keeps_errors_and_queries_only_when_asked(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    async def fail_on_boom(request: ReceivedRequest, writer: Any) -> bool:
        status = b"500 Boom" if request.target.startswith("/boom") else b"200 OK"
        writer.write(b"HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n" % status)
        return True

    backend = await backend_factory(fail_on_boom)
    log = tmp_path / "access.log"
    proxy = await proxy_factory(
        [backend.url],
        pool={"retries": {"attempts": 0}},
        logging=access_log(log, sample=0, include_query=True),
    )
    await send(proxy.port, *[get("/fine")] * 20, get("/boom?x=1"))
    (line,) = await wait_for_lines(log, 1)
    entry = json.loads(line)
    assert (entry["status"], entry["path"], entry["query"]) == (500, "/boom", "x=1")


async def test_tls_connections_log_their_protocol(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("proxy.test")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(cert_file)
    certificate.private_key_pem.write_to_path(key_file)
    backend = await backend_factory()
    log = tmp_path / "access.log"
    files = {"cert_file": str(cert_file), "key_file": str(key_file)}
    proxy = await proxy_factory(
        [backend.url], listener={"tls": {"certificates": [files]}}, logging=access_log(log)
    )
    context = ssl.create_default_context()
    authority.configure_trust(context)
    await send(proxy.port, get("/"), ssl=context, server_hostname="proxy.test")
    (line,) = await wait_for_lines(log, 1)
    assert json.loads(line)["tls"] in ("TLSv1.2", "TLSv1.3")


async def test_the_file_rotates_by_size_and_keeps_what_it_is_told(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    backend = await backend_factory()
    log = tmp_path / "access.log"
    settings = access_log(log, rotation_size="2KiB", retention_count=2)
    proxy = await proxy_factory([backend.url], logging=settings)
    for _ in range(8):
        await send(proxy.port, *[get("/rotate")] * 10)
        await wait_for_lines(log, 1)  # each batch reaches the file before the next
    await proxy.node.stop(grace=0)
    rotated = sorted(path.name for path in tmp_path.glob("access.*.log"))
    assert 1 <= len(rotated) <= 2, rotated
    lines = sum(len(lines_of(path)) for path in tmp_path.glob("access*.log"))
    assert lines <= 80


async def test_without_a_path_lines_go_through_the_log_sinks(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    captured: list[str] = []
    sink = logger.add(lambda message: captured.append(message.record["message"]), level="INFO")
    try:
        backend = await backend_factory()
        proxy = await proxy_factory(
            [backend.url], logging={"level": "warning", "access_log": {"enabled": True}}
        )
        await send(proxy.port, get("/through-sinks"))
        await eventually(
            lambda: any('"path":"/through-sinks"' in line for line in captured),
            message="no access line reached the log sinks",
        )
    finally:
        logger.remove(sink)


async def test_turning_the_log_on_by_reload_starts_writing(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    backend = await backend_factory()
    log = tmp_path / "access.log"
    config_file = tmp_path / "loadweaver.yaml"
    proxy = await proxy_factory([backend.url], config_file=config_file)
    await send(proxy.port, get("/before"))
    proxy.config["logging"] = access_log(log)
    proxy.rewrite_config()
    assert await proxy.node.reload()
    await send(proxy.port, get("/after"))
    await eventually(
        lambda: any(json.loads(line)["path"] == "/after" for line in lines_of(log)),
        message="the request after the reload was not logged",
    )


async def logged_proxy(proxied_factory: StartProxied, tmp_path: Path) -> tuple[Proxied, Path]:
    """A node with an access log file and a config file to reload; and the log's path."""
    log = tmp_path / "access.log"
    proxy = await proxied_factory(config_file=tmp_path / "loadweaver.yaml", logging=access_log(log))
    return proxy, log


def rewrite_log_level(proxy: Proxied, log: Path, level: str) -> None:
    """The config file with a new log level: reloading it replaces every log sink."""
    proxy.config["logging"] = {**access_log(log), "level": level}
    proxy.rewrite_config()


async def test_a_logging_reload_loses_no_access_line(
    proxied_factory: StartProxied, tmp_path: Path
) -> None:
    proxy, log = await logged_proxy(proxied_factory, tmp_path)
    for level in ("error", "warning", "error"):
        await send(proxy.port, *[get("/kept")] * 20)
        rewrite_log_level(proxy, log, level)
        assert await proxy.node.reload()  # replaces every log sink, the access log's too
    await wait_for_lines(log, 60)
    await proxy.node.stop(grace=0)
    assert len(lines_of(log)) == 60


async def test_a_logging_reload_waits_for_a_slow_disk_without_stalling_requests(
    proxied_factory: StartProxied, tmp_path: Path
) -> None:
    proxy, log = await logged_proxy(proxied_factory, tmp_path)
    writer = proxy.node.observing.access_log._writer
    assert writer is not None
    write_to_disk = writer._emit

    def slow_disk(text: str) -> None:  # runs on the writer's thread
        time.sleep(1.0)
        write_to_disk(text)

    writer._emit = slow_disk
    await send(proxy.port, *[get("/before")] * 20)
    await asyncio.sleep(0.3)  # the reader hands the chunk over; the writer sits on it

    rewrite_log_level(proxy, log, "error")
    reload = asyncio.create_task(proxy.node.reload())
    assert await send(proxy.port, get("/during")) == [200]
    assert not reload.done()  # the request was served while the old writer drained
    assert await reload

    await wait_for_lines(log, 21)
    await proxy.node.stop(grace=0)
    paths = [json.loads(line)["path"] for line in lines_of(log)]
    assert paths == ["/before"] * 20 + ["/during"]
