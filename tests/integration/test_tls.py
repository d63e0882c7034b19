"""TLS: SNI certificate selection, protocol floors, https backends and live certificate reload."""

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import trustme

from loadweaver.node import NodeStartError
from tests.conftest import StartProxied, StartProxy
from tests.support.backend import Backend
from tests.support.client import RawClient, get
from tests.support.nodes import Proxied, Proxy, node_config, start_node

HANDSHAKE_TIMEOUT = 5.0


@dataclass
class CertFiles:
    cert_file: Path
    key_file: Path

    def entry(self) -> dict[str, str]:
        return {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}


def write_cert(cert: Any, directory: Path, name: str) -> CertFiles:
    """Writes the leaf plus chain and the private key as PEM files."""
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(files.cert_file, append=index > 0)
    cert.private_key_pem.write_to_path(files.key_file)
    return files


@dataclass
class Pki:
    ca: Any
    ca_file: Path
    a: CertFiles  # a.test
    b: CertFiles  # *.b.test


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    a = write_cert(ca.issue_cert("a.test"), tmp_path, "a")
    b = write_cert(ca.issue_cert("*.b.test"), tmp_path, "b")
    return Pki(ca, ca_file, a, b)


def client_context(pki: Pki, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    context.check_hostname = check_hostname
    context.set_alpn_protocols(["http/1.1"])
    return context


def tls_listener(*certs: CertFiles, **extra: Any) -> dict[str, Any]:
    return {"tls": {"certificates": [cert.entry() for cert in certs], **extra}}


async def handshake(
    port: int, context: ssl.SSLContext, server_hostname: str | None
) -> tuple[ssl.SSLObject, asyncio.StreamWriter]:
    """Opens a TLS connection; `server_hostname=None` sends no SNI (connects by IP address)."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=server_hostname or "127.0.0.1"
        ),
        HANDSHAKE_TIMEOUT,
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object is not None
    return ssl_object, writer


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def handshake_and_close(
    port: int, context: ssl.SSLContext, server_hostname: str | None
) -> None:
    _, writer = await handshake(port, context, server_hostname)
    await close_writer(writer)


def dns_names(ssl_object: ssl.SSLObject) -> list[str]:
    cert = ssl_object.getpeercert()
    assert cert is not None
    entries = cast(tuple[tuple[str, str], ...], cert.get("subjectAltName", ()))
    return [value for kind, value in entries if kind == "DNS"]


async def peer_names(port: int, context: ssl.SSLContext, server_hostname: str | None) -> list[str]:
    ssl_object, writer = await handshake(port, context, server_hostname)
    names = dns_names(ssl_object)
    await close_writer(writer)
    return names


# ---- SNI ----


async def test_sni_selects_the_certificate(pki: Pki, proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(listener=tls_listener(pki.a, pki.b))
    port = proxied.port
    context = client_context(pki)

    assert await peer_names(port, context, "a.test") == ["a.test"]
    assert await peer_names(port, context, "x.b.test") == ["*.b.test"]
    assert await peer_names(port, context, "A.TEST") == ["a.test"]
    # A wildcard covers exactly one label: deeper names get the default certificate.
    unchecked = client_context(pki, check_hostname=False)
    assert await peer_names(port, unchecked, "deep.x.b.test") == ["a.test"]


async def test_missing_or_unknown_sni_gets_the_first_certificate(
    pki: Pki, proxied_factory: StartProxied
) -> None:
    # The *.b.test certificate is listed first here, so it is the default.
    proxied = await proxied_factory(listener=tls_listener(pki.b, pki.a))
    port = proxied.port
    context = client_context(pki, check_hostname=False)

    assert await peer_names(port, context, None) == ["*.b.test"]
    assert await peer_names(port, context, "unknown.test") == ["*.b.test"]
    assert await peer_names(port, context, "b.test") == ["*.b.test"]
    assert await peer_names(port, context, "a.test") == ["a.test"]


async def test_alpn_negotiates_http11(pki: Pki, proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(listener=tls_listener(pki.a, pki.b))
    port = proxied.port
    for name in ("a.test", "x.b.test"):
        context = client_context(pki)
        context.set_alpn_protocols(["h2", "http/1.1"])
        ssl_object, writer = await handshake(port, context, name)
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        await close_writer(writer)


# ---- protocol versions ----


def _tls11_client_context() -> ssl.SSLContext | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    return context


def _local_tls11_works(client: ssl.SSLContext, cert: CertFiles) -> bool:
    """Whether this OpenSSL can complete a TLS 1.1 handshake at all (in memory, no sockets)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            server.minimum_version = ssl.TLSVersion.TLSv1_1
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.load_cert_chain(cert.cert_file, cert.key_file)
    except (ValueError, ssl.SSLError):
        return False
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for role, obj, out, peer_in in (
            ("client", client_side, client_out, server_in),
            ("server", server_side, server_out, client_in),
        ):
            if not done[role]:
                try:
                    obj.do_handshake()
                    done[role] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
            if data := out.read():
                peer_in.write(data)
        if all(done.values()):
            return client_side.version() == "TLSv1.1"
    return False


async def test_tls11_client_is_refused(pki: Pki, proxied_factory: StartProxied) -> None:
    client = _tls11_client_context()
    if client is None or not _local_tls11_works(client, pki.a):
        pytest.skip("the local OpenSSL cannot negotiate TLS 1.1 even with itself")
    proxied = await proxied_factory(listener=tls_listener(pki.a))
    port = proxied.port
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake_and_close(port, client, "a.test")
    # A modern client still gets in afterwards.
    assert await peer_names(port, client_context(pki), "a.test") == ["a.test"]
    assert proxied.backend.requests == []


async def test_min_version_13_refuses_a_tls12_client(
    pki: Pki, proxied_factory: StartProxied
) -> None:
    proxied = await proxied_factory(listener=tls_listener(pki.a, min_version="1.3"))
    port = proxied.port
    old = client_context(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake_and_close(port, old, "a.test")
    ssl_object, writer = await handshake(port, client_context(pki), "a.test")
    assert ssl_object.version() == "TLSv1.3"
    await close_writer(writer)


async def test_default_min_version_accepts_tls12(pki: Pki, proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(listener=tls_listener(pki.a))
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    ssl_object, writer = await handshake(proxied.port, context, "a.test")
    assert ssl_object.version() == "TLSv1.2"
    await close_writer(writer)


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00"])
async def test_stalled_handshake_is_cut_by_the_request_header_timeout(
    pki: Pki, proxied_factory: StartProxied, sent: bytes
) -> None:
    """A TCP connection that never finishes its handshake must not be kept open indefinitely."""
    proxied = await proxied_factory(
        listener={**tls_listener(pki.a), "timeouts": {"request_header": "500ms"}}
    )
    client = await proxied.connect()
    if sent:
        await client.send(sent)
    assert await client.is_closed(timeout=2.5)
    await client.close()


# ---- proxying over TLS ----


async def test_request_over_tls_is_forwarded_as_https(
    pki: Pki, proxied_factory: StartProxied
) -> None:
    proxied = await proxied_factory(listener=tls_listener(pki.a, pki.b))
    client = await proxied.connect(ssl=client_context(pki), server_hostname="x.b.test")
    for path in ("/one", "/two"):  # keep-alive over TLS
        await client.send(get(path, host="x.b.test"))
        response = await client.read_response()
        assert response.status == 200
        assert response.body.startswith(f"GET {path} len=0".encode())
    await client.close()

    assert len(proxied.backend.requests) == 2
    request = proxied.backend.requests[0]
    assert request.headers_named("X-Forwarded-Proto") == ["https"]
    assert request.header("X-Forwarded-Host") == "x.b.test"
    assert request.header("X-Forwarded-For") == "127.0.0.1"
    forwarded = request.headers_named("Forwarded")
    assert len(forwarded) == 1
    assert "proto=https" in forwarded[0]
    assert "for=127.0.0.1" in forwarded[0]
    assert request.header("Host") == "x.b.test"


# ---- https backends ----


@dataclass
class TlsBackend(Backend):
    """A backend serving https; its URL names `hostname` rather than the address."""

    hostname: str = "localhost"

    @property
    def url(self) -> str:
        return f"https://{self.hostname}:{self.port}"


@pytest.fixture
async def tls_backend(pki: Pki) -> AsyncIterator[TlsBackend]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.ca.issue_cert("localhost", "backend.internal").configure_cert(context)
    backend = await TlsBackend(name="tls-backend", ssl_context=context).start()
    yield backend
    await backend.stop()


async def proxied_status(proxy: Proxy) -> tuple[int, bytes]:
    client = await proxy.connect()
    await client.send(get("/secure"))
    response = await client.read_response()
    await client.close()
    return response.status, response.body


async def test_https_backend_with_ca_file(
    pki: Pki, tls_backend: TlsBackend, proxy_factory: StartProxy
) -> None:
    proxy = await proxy_factory([tls_backend.url], pool={"tls": {"ca_file": str(pki.ca_file)}})
    status, body = await proxied_status(proxy)
    assert status == 200
    assert body.startswith(b"GET /secure len=0")
    assert len(tls_backend.requests) == 1
    assert tls_backend.requests[0].header("Host") == "example.test"


async def test_https_backend_untrusted_certificate_is_502(
    tls_backend: TlsBackend, proxy_factory: StartProxy
) -> None:
    proxy = await proxy_factory([tls_backend.url], pool={"timeouts": {"connect": "2s"}})
    status, _ = await proxied_status(proxy)
    assert status == 502
    assert tls_backend.requests == []


async def test_https_backend_without_verification(
    tls_backend: TlsBackend, proxy_factory: StartProxy
) -> None:
    proxy = await proxy_factory([tls_backend.url], pool={"tls": {"verify": False}})
    status, body = await proxied_status(proxy)
    assert status == 200
    assert body.startswith(b"GET /secure len=0")


async def test_https_backend_server_name_override(
    pki: Pki, tls_backend: TlsBackend, proxy_factory: StartProxy
) -> None:
    tls_backend.hostname = "127.0.0.1"  # the certificate has no IP address in it
    url = tls_backend.url
    rejected = await proxy_factory([url], pool={"tls": {"ca_file": str(pki.ca_file)}})
    assert (await proxied_status(rejected))[0] == 502
    accepted = await proxy_factory(
        [url], pool={"tls": {"ca_file": str(pki.ca_file), "server_name": "backend.internal"}}
    )
    assert (await proxied_status(accepted))[0] == 200


async def test_https_backend_connections_are_reused(
    pki: Pki, tls_backend: TlsBackend, proxy_factory: StartProxy
) -> None:
    proxy = await proxy_factory([tls_backend.url], pool={"tls": {"ca_file": str(pki.ca_file)}})
    client = await proxy.connect()
    for _ in range(3):
        await client.send(get("/again"))
        assert (await client.read_response()).status == 200
    await client.close()
    assert tls_backend.connections == 1


# ---- certificate reload ----


@pytest.fixture
async def reloadable(pki: Pki, tmp_path: Path, proxied_factory: StartProxied) -> Proxied:
    """A node with a TLS listener for a.test, started from a config file so it can reload."""
    return await proxied_factory(
        listener=tls_listener(pki.a), config_file=tmp_path / "loadweaver.yaml"
    )


async def test_certificate_reload_applies_to_new_handshakes(
    pki: Pki, tmp_path: Path, reloadable: Proxied
) -> None:
    node, port = reloadable.node, reloadable.port
    listener = node.listeners["web"]
    context = client_context(pki)

    first, writer = await handshake(port, context, "a.test")
    old_cert = first.getpeercert()
    assert old_cert is not None
    old_serial = old_cert["serialNumber"]
    await close_writer(writer)

    # An established connection that must survive the reload.
    kept = await RawClient.connect(port, ssl=context, server_hostname="a.test")
    await kept.send(get("/before", host="a.test"))
    assert (await kept.read_response()).status == 200

    renewed = write_cert(pki.ca.issue_cert("a.test"), tmp_path, "a-renewed")
    reloadable.config["listeners"][0]["tls"]["certificates"] = [renewed.entry()]
    reloadable.rewrite_config()
    assert await node.reload() is True

    second, writer = await handshake(port, context, "a.test")
    new_cert = second.getpeercert()
    assert new_cert is not None
    assert new_cert["serialNumber"] != old_serial
    assert dns_names(second) == ["a.test"]
    await close_writer(writer)

    assert node.listeners["web"] is listener  # the socket was not re-bound
    await kept.send(get("/after", host="a.test"))
    assert (await kept.read_response()).status == 200
    await kept.close()


async def test_reload_with_a_broken_certificate_keeps_the_old_one(
    pki: Pki, tmp_path: Path, reloadable: Proxied
) -> None:
    reloadable.config["listeners"][0]["tls"]["certificates"] = [
        {"cert_file": str(tmp_path / "missing.pem"), "key_file": str(tmp_path / "missing.key")}
    ]
    reloadable.rewrite_config()
    assert await reloadable.node.reload() is False
    assert await peer_names(reloadable.port, client_context(pki), "a.test") == ["a.test"]


# ---- certificate problems at start ----


@pytest.mark.parametrize("missing", ["cert_file", "key_file"])
async def test_missing_certificate_file_stops_the_start(
    pki: Pki, tmp_path: Path, missing: str
) -> None:
    entry = pki.a.entry()
    entry[missing] = str(tmp_path / f"nowhere-{missing}.pem")
    config = node_config([], listener={"tls": {"certificates": [entry]}})
    with pytest.raises(NodeStartError) as caught:
        await start_node(config)
    assert entry[missing] in str(caught.value)


async def test_garbage_certificate_file_stops_the_start(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    config = node_config(
        [],
        listener={
            "tls": {"certificates": [{"cert_file": str(garbage), "key_file": str(pki.a.key_file)}]}
        },
    )
    with pytest.raises(NodeStartError) as caught:
        await start_node(config)
    assert str(garbage) in str(caught.value)


async def test_missing_upstream_ca_file_stops_the_start(tmp_path: Path) -> None:
    ca_file = tmp_path / "no-ca.pem"
    config = node_config(["https://localhost:1"], pool={"tls": {"ca_file": str(ca_file)}})
    with pytest.raises(NodeStartError) as caught:
        await start_node(config)
    assert str(ca_file) in str(caught.value)
