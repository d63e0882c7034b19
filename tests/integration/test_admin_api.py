"""The admin API over real HTTP against an in-process node and loopback backends: every endpoint,
the bearer token, the error statuses and their JSON bodies, versions and If-Match, changes that
really move traffic, secrets that stay on the node, reloads, live stats and cluster status."""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from pydantic import BaseModel

from loadweaver.admin.api import AdminApi
from loadweaver.admin.endpoints import Endpoint
from loadweaver.admin.schemas import StatsDocument
from loadweaver.balancing.sticky import CookieSigner
from loadweaver.control.redaction import REDACTED
from tests.conftest import StartBackend, StartProxy
from tests.support.admin import AdminClient, ApiResponse, named_backends, served_by, served_by_many
from tests.support.backend import Backend
from tests.support.client import RawClient, RawResponse, get
from tests.support.nodes import Proxy, admin_port
from tests.support.polling import eventually

TOKEN = "admin-token-for-tests-0123"
STICKY_SECRET = "sticky-secret-for-admin-tests-42"


pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@dataclass
class Admin:
    """A node in front of named backends, the client for its admin API, and the backends' gate:
    requests to paths under /wait are held until `gate` is set."""

    proxy: Proxy
    backends: list[Backend]
    client: AdminClient
    gate: asyncio.Event

    @property
    def port(self) -> int:
        return self.proxy.port


class StartAdmin(Protocol):
    async def __call__(
        self,
        serving: int = 2,
        spare: int = 0,
        token: str | None = None,
        config_file: Path | None = None,
        **sections: Any,
    ) -> Admin:
        """Backends b0, b1...: the first `serving` in pool app, `spare` more for the API to add.

        With `token`, the node reads it from LOADWEAVER_ADMIN_TOKEN and the client sends it.
        """
        ...


@pytest.fixture
def start_admin(
    backend_factory: StartBackend,
    proxy_factory: StartProxy,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> StartAdmin:
    async def start(
        serving: int = 2,
        spare: int = 0,
        token: str | None = None,
        config_file: Path | None = None,
        **sections: Any,
    ) -> Admin:
        if token is not None:
            monkeypatch.setenv("LOADWEAVER_ADMIN_TOKEN", token)
        gate = asyncio.Event()
        backends = await named_backends(backend_factory, serving + spare, gate)
        urls = [backend.url for backend in backends[:serving]]
        proxy = await proxy_factory(urls, config_file=config_file, **sections)
        client = AdminClient(session, admin_port(proxy.config), token)
        return Admin(proxy, backends, client, gate)

    return start


def new_backend(backend: Backend, **fields: Any) -> dict[str, Any]:
    return {"name": backend.name, "url": backend.url, **fields}


def metric(text: str, name: str) -> float:
    """One sample of a Prometheus exposition; 0 when the series has not appeared yet."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def fetch(port: int, path: str = "/", extra: str = "") -> RawResponse:
    client = await RawClient.connect(port)
    try:
        await client.send(get(path, extra=extra))
        return await client.read_response()
    finally:
        await client.close()


# ---- authentication and the open paths ----


async def test_open_paths_need_no_token_even_when_one_is_configured(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(token=TOKEN)
    anonymous = AdminClient(admin.client.session, admin_port(admin.proxy.config))
    await served_by(admin.port)

    health = await anonymous.call("GET", "/healthz")
    assert (health.status, health.body) == (200, {"status": "ok"})
    ready = await anonymous.call("GET", "/readyz")
    assert (ready.status, ready.body) == (200, {"status": "ready"})
    metrics = await anonymous.call("GET", "/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert metric(metrics.text, "loadweaver_requests_received_total") == 1
    page = await anonymous.call("GET", "/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<html" in page.text.lower()


async def test_readyz_answers_503_while_the_node_drains(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    held = asyncio.ensure_future(fetch(admin.port, "/wait"))
    await eventually(lambda: any(backend.requests for backend in admin.backends))
    stopping = asyncio.ensure_future(admin.proxy.node.stop(grace=5))
    try:
        await eventually(lambda: not admin.proxy.node.ready, message="still ready")
        ready = await admin.client.call("GET", "/readyz")
        assert (ready.status, ready.body) == (503, {"status": "not ready"})
        assert (await admin.client.call("GET", "/healthz")).status == 200
    finally:
        admin.gate.set()
        await asyncio.wait_for(stopping, 5)
    assert (await asyncio.wait_for(held, 5)).status == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
    ],
    ids=["missing", "wrong", "longer", "shorter", "empty", "basic", "other-scheme", "no-scheme"],
)
async def test_api_paths_refuse_a_missing_or_wrong_token_with_401(
    start_admin: StartAdmin, authorization: str | None
) -> None:
    admin = await start_admin(token=TOKEN)
    anonymous = AdminClient(admin.client.session, admin_port(admin.proxy.config))
    for method, path in [
        ("GET", "/pools"),
        ("GET", "/openapi.json"),
        ("POST", "/pools/app/backends/b0/drain"),
        ("GET", "/no/such/path"),
    ]:
        answer = await anonymous.api(method, path, authorization=authorization)
        assert answer.status == 401, (method, path, answer.text)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in answer.error["message"]
    assert admin.proxy.node.config.pools["app"].backends[0].state == "active"


async def test_the_right_token_opens_the_api_whatever_the_scheme_case(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(token=TOKEN)
    for scheme in ("Bearer", "bearer", "BEARER"):
        answer = await admin.client.get("/pools", authorization=f"{scheme} {TOKEN}")
        assert answer.status == 200, answer.text


async def test_a_token_with_bytes_that_are_not_utf8_gets_401(start_admin: StartAdmin) -> None:
    admin = await start_admin(token=TOKEN)
    client = await RawClient.connect(admin_port(admin.proxy.config))
    try:
        await client.send(
            b"GET /api/v1/pools HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
        )
        answer = await client.read_response()
    finally:
        await client.close()
    assert answer.status == 401


# ---- error statuses ----


async def test_unknown_pools_backends_and_paths_get_404_naming_them(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    api = admin.client
    spare = {"name": "b9", "url": "http://127.0.0.1:9"}
    for method, path, body, named in [
        ("GET", "/pools/nope", None, "nope"),
        ("GET", "/pools/nope/backends", None, "nope"),
        ("POST", "/pools/nope/backends", spare, "nope"),
        ("GET", "/pools/app/backends/b9", None, "b9"),
        ("PATCH", "/pools/app/backends/b9", {"weight": 2}, "b9"),
        ("DELETE", "/pools/app/backends/b9", None, "b9"),
        ("POST", "/pools/app/backends/b9/drain", None, "b9"),
        ("POST", "/pools/nope/backends/b0/drain", None, "nope"),
        ("GET", "/no/such/thing", None, "/api/v1/no/such/thing"),
    ]:
        answer = await api.api(method, path, **({"body": body} if body else {}))
        assert answer.status == 404, (method, path, answer.text)
        assert named in answer.error["message"], answer.error
    outside = await api.call("GET", "/nope")
    assert outside.status == 404
    assert "/nope" in outside.error["message"]
    assert admin.proxy.node.version == 1


async def test_a_method_the_path_does_not_take_gets_405_with_a_json_error(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    for method, path in [
        ("DELETE", "/pools"),
        ("PUT", "/pools/app/backends/b0"),
        ("POST", "/stats"),
        ("GET", "/config/reload"),
        ("PATCH", "/config"),
    ]:
        answer = await admin.client.api(method, path)
        assert answer.status == 405, (method, path, answer.text)
        assert method in answer.error["message"]
    assert admin.proxy.node.version == 1


async def test_a_405_names_the_allowed_methods(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    answer = await admin.client.api("PUT", "/pools/app/backends/b0")
    assert answer.status == 405
    assert set(answer.headers.get("Allow", "").replace(" ", "").split(",")) >= {
        "GET",
        "PATCH",
        "DELETE",
    }


async def test_adding_a_backend_under_a_taken_name_gets_409(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    taken = {"name": "b1", "url": "http://127.0.0.1:9"}
    answer = await admin.client.api("POST", "/pools/app/backends", taken)
    assert answer.status == 409
    assert "b1" in answer.error["message"]
    assert admin.proxy.node.config.pools["app"].backends[1].url == admin.backends[1].url


async def test_if_match_refuses_an_old_version_and_accepts_the_current_one(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    api, node = admin.client, admin.proxy.node
    current = (await api.get("/config")).version
    path = "/pools/app/backends/b0"

    stale = await api.api("PATCH", path, {"weight": 5}, headers={"If-Match": f'"{current - 1}"'})
    assert stale.status == 412
    assert str(current) in stale.error["message"]
    assert (node.version, node.config.pools["app"].backends[0].weight) == (current, 1)

    fresh = await api.api("PATCH", path, {"weight": 5}, headers={"If-Match": f'"{current}"'})
    assert fresh.status == 200, fresh.text
    assert fresh.version == current + 1
    bare = await api.api("PATCH", path, {"weight": 6}, headers={"If-Match": str(current + 1)})
    assert bare.status == 200, bare.text
    anything = await api.api("PATCH", path, {"weight": 7}, headers={"If-Match": "*"})
    assert anything.status == 200, anything.text
    assert node.config.pools["app"].backends[0].weight == 7

    for malformed in ('"seven"', "abc", '"1", "2"', "-1"):
        answer = await api.api("PATCH", path, {"weight": 8}, headers={"If-Match": malformed})
        assert answer.status == 400, (malformed, answer.text)
        assert "If-Match" in answer.error["message"]
    stale_delete = await api.api("DELETE", path, headers={"If-Match": '"1"'})
    assert stale_delete.status == 412
    assert node.config.pools["app"].backends[0].weight == 7


async def test_invalid_bodies_get_422_with_one_problem_per_field_path(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(spare=1)
    api = admin.client
    version = admin.proxy.node.version

    heavy = await api.api("POST", "/pools/app/backends", new_backend(admin.backends[2], weight=999))
    assert heavy.status == 422
    assert any(problem.startswith("weight:") for problem in heavy.problems), heavy.problems
    patched = await api.api("PATCH", "/pools/app/backends/b0", {"weight": 999})
    assert patched.status == 422
    assert any(problem.startswith("weight:") for problem in patched.problems), patched.problems
    paused = await api.api("PATCH", "/pools/app/backends/b0", {"state": "paused"})
    assert any(problem.startswith("state:") for problem in paused.problems), paused.problems
    empty = await api.api("PATCH", "/pools/app/backends/b0", {})
    assert empty.status == 422
    assert "nothing to change" in " ".join(empty.problems)

    routes = [{"name": "default", "pool": "missing"}]
    dangling = await api.api("PUT", "/config", {"pools": {"app": {}}, "routes": routes})
    assert dangling.status == 422
    assert any(problem.startswith("routes.0.pool") for problem in dangling.problems)
    pools = {"app": {"backends": [{"name": "x", "url": "http://127.0.0.1:1", "weight": 300}]}}
    bad_pool = await api.api("PUT", "/config", {"pools": pools, "routes": []})
    assert bad_pool.status == 422
    assert any("pools.app.backends.0.weight" in problem for problem in bad_pool.problems)

    assert admin.proxy.node.version == version
    assert await served_by_many(admin.port, 4) == {"b0", "b1"}


async def test_an_unknown_key_in_a_body_lists_the_keys_that_body_allows(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    answer = await admin.client.api("PATCH", "/pools/app/backends/b0", {"url": "http://x:1"})
    assert answer.status == 422
    [problem] = answer.problems
    assert problem.startswith("url: unknown key")
    assert "weight" in problem
    assert "listeners" not in problem


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe{}"], ids=repr)
async def test_a_body_that_is_not_a_json_object_gets_400(
    start_admin: StartAdmin, raw: bytes
) -> None:
    admin = await start_admin()
    answer = await admin.client.api(
        "POST", "/pools/app/backends", data=raw, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400, answer.text
    assert "JSON" in answer.error["message"]
    assert admin.proxy.node.version == 1


async def test_a_body_sent_as_something_other_than_json_gets_415(start_admin: StartAdmin) -> None:
    admin = await start_admin(spare=1)
    body = json.dumps(new_backend(admin.backends[2]))
    answer = await admin.client.api(
        "POST", "/pools/app/backends", data=body, headers={"Content-Type": "text/plain"}
    )
    assert answer.status == 415


# ---- versions ----


async def test_the_etag_version_increases_with_every_change_and_only_then(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(spare=1)
    api = admin.client
    config = await api.get("/config")
    assert config.version == config.body["version"] == admin.proxy.node.version
    versions = [config.version]
    for method, path, body in [
        ("POST", "/pools/app/backends", new_backend(admin.backends[2])),
        ("PATCH", "/pools/app/backends/b2", {"weight": 3}),
        ("POST", "/pools/app/backends/b2/drain", None),
        ("DELETE", "/pools/app/backends/b2", None),
        ("PUT", "/config", {"pools": {"app": {}}, "routes": []}),
    ]:
        answer = await api.api(method, path, **({"body": body} if body else {}))
        assert 200 <= answer.status < 300, (method, path, answer.text)
        versions.append(answer.version)
        unchanged = await api.get("/pools")
        assert unchanged.version == answer.version
        refused = await api.api("PATCH", "/pools/app/backends/b0", {"weight": 999})
        assert refused.version == answer.version
    assert versions == sorted(set(versions)), versions
    assert (await api.get("/config")).body["version"] == versions[-1]


# ---- changes move traffic ----


async def test_adding_patching_draining_and_deleting_backends_moves_traffic(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(serving=1, spare=2)
    api, port = admin.client, admin.port
    assert await served_by_many(port, 4) == {"b0"}

    added = await api.ok("POST", "/pools/app/backends", new_backend(admin.backends[1]))
    assert (added["name"], added["source"], added["in_flight"]) == ("b1", "api", 0)
    assert await served_by_many(port, 6) == {"b0", "b1"}

    await api.ok("PATCH", "/pools/app/backends/b0", {"weight": 0})
    assert await served_by_many(port, 6) == {"b1"}
    await api.ok("PATCH", "/pools/app/backends/b0", {"weight": 1, "state": "maintenance"})
    assert await served_by_many(port, 6) == {"b1"}
    patched = await api.ok("PATCH", "/pools/app/backends/b0", {"state": "active"})
    assert (patched["weight"], patched["state"]) == (1, "active")
    assert await served_by_many(port, 6) == {"b0", "b1"}

    await api.ok("POST", "/pools/app/backends", new_backend(admin.backends[2]))
    drained = await api.ok("POST", "/pools/app/backends/b1/drain")
    assert drained["state"] == "draining"
    assert await served_by_many(port, 8) == {"b0", "b2"}

    deleted = await api.api("DELETE", "/pools/app/backends/b2")
    assert (deleted.status, deleted.text) == (204, "")
    assert await served_by_many(port, 6) == {"b0"}
    names = [b["name"] for b in (await api.ok("GET", "/pools/app/backends"))["backends"]]
    assert names == ["b0", "b1"]


async def test_drain_reports_the_requests_in_flight_until_they_finish(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    api = admin.client
    held = asyncio.ensure_future(fetch(admin.port, "/wait"))
    await eventually(
        lambda: any(r.target == "/wait" for b in admin.backends for r in b.requests),
        message="the held request reached no backend",
    )
    busy = next(b for b in admin.backends if any(r.target == "/wait" for r in b.requests))
    path = f"/pools/app/backends/{busy.name}"

    drained = await api.ok("POST", f"{path}/drain")
    assert (drained["state"], drained["in_flight"]) == ("draining", 1)
    assert (await api.ok("GET", path))["in_flight"] == 1
    runtime = admin.proxy.node.holder.current.pools["app"].backends
    [busy_load] = [backend.load for backend in runtime if backend.name == busy.name]
    others = {b.name for b in admin.backends} - {busy.name}
    assert await served_by_many(admin.port, 4) == others

    admin.gate.set()
    answer = await asyncio.wait_for(held, 5)
    assert answer.header("X-Served-By") == busy.name
    await eventually(lambda: busy_load.in_flight == 0, message="the request never finished")
    assert (await api.ok("GET", path))["in_flight"] == 0


# ---- config: secrets, replace, validate, reload ----


def set_cookie(answer: RawResponse) -> str:
    [line] = answer.headers_named("Set-Cookie")
    match = re.match(r"lw=([^;\s]+);", line)
    assert match is not None, line
    return match.group(1)


async def test_config_redacts_secrets_and_a_get_put_round_trip_keeps_them(
    start_admin: StartAdmin,
) -> None:
    sticky = {"cookie": "lw", "ttl": "1h", "secret": STICKY_SECRET}
    admin = await start_admin(serving=3, pool={"sticky": sticky})
    api, port = admin.client, admin.port
    first = await fetch(port)
    cookie, pinned = set_cookie(first), first.header("X-Served-By")

    shown = await api.get("/config")
    assert shown.body["config"]["pools"]["app"]["sticky"]["secret"] == REDACTED
    pool = await api.get("/pools/app")
    assert pool.body["settings"]["sticky"]["secret"] == REDACTED
    for answer in (shown, pool, await api.get("/pools"), await api.get("/routes")):
        assert STICKY_SECRET not in answer.text

    config = shown.body["config"]
    put = await api.api("PUT", "/config", {"pools": config["pools"], "routes": config["routes"]})
    assert put.status == 200, put.text
    assert put.version > shown.version
    assert put.body["config"]["pools"]["app"]["sticky"]["secret"] == REDACTED
    sticky_config = admin.proxy.node.config.pools["app"].sticky
    assert sticky_config is not None
    assert sticky_config.secret == STICKY_SECRET
    assert CookieSigner(STICKY_SECRET.encode(), "app").verify(cookie) is not None
    for _ in range(6):
        assert (await fetch(port, extra=f"Cookie: lw={cookie}\r\n")).header("X-Served-By") == pinned


async def test_the_secret_marker_for_a_pool_without_a_secret_gets_422(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    pools = {"app": {"sticky": {"cookie": "lw", "secret": REDACTED}}}
    answer = await admin.client.api("PUT", "/config", {"pools": pools, "routes": []})
    assert answer.status == 422
    assert any(problem.startswith("pools.app.sticky.secret") for problem in answer.problems)
    assert admin.proxy.node.version == 1


async def test_put_config_replaces_every_pool_and_route(start_admin: StartAdmin) -> None:
    admin = await start_admin(serving=1, spare=1)
    blue = {"algorithm": "least_conn", "backends": [new_backend(admin.backends[1])]}
    body = {
        "pools": {"blue": blue},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "pool": "blue"}],
    }
    answer = await admin.client.api("PUT", "/config", body)
    assert answer.status == 200, answer.text
    assert list(answer.body["config"]["pools"]) == ["blue"]
    assert answer.body["sources"]["pools.blue"] == "api"
    assert answer.body["sources"]["routes"] == "api"
    assert await served_by_many(admin.port, 4) == {"b1"}
    pools = (await admin.client.ok("GET", "/pools"))["pools"]
    assert [(p["name"], p["algorithm"], p["source"]) for p in pools] == [
        ("blue", "least_conn", "api")
    ]
    routes = (await admin.client.ok("GET", "/routes"))["routes"]
    assert [(r["name"], r["pool"]) for r in routes] == [("all", "blue")]


async def test_validate_checks_a_config_without_applying_it(start_admin: StartAdmin) -> None:
    admin = await start_admin(spare=1)
    node = admin.proxy.node
    before = node.config
    valid = {
        "pools": {"app": {"backends": [new_backend(admin.backends[2])]}},
        "routes": [{"name": "r", "pool": "app"}],
    }
    answer = await admin.client.api("POST", "/config/validate", valid)
    assert answer.status == 200, answer.text
    assert answer.body["valid"] is True
    assert answer.body["version"] == answer.version == 1
    assert "1 pool(s), 1 backend(s), 1 route(s)" in answer.body["summary"]

    invalid = {**valid, "routes": [{"name": "r", "pool": "ghost"}]}
    refused = await admin.client.api("POST", "/config/validate", invalid)
    assert refused.status == 422
    assert any(problem.startswith("routes.0.pool") for problem in refused.problems)
    assert (node.version, node.config) == (1, before)
    assert await served_by_many(admin.port, 4) == {"b0", "b1"}


async def test_reload_without_a_config_file_gets_409(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    answer = await admin.client.api("POST", "/config/reload")
    assert answer.status == 409
    assert "config file" in answer.error["message"]
    assert admin.proxy.node.version == 1


async def test_reload_applies_a_valid_file_and_refuses_a_broken_one(
    start_admin: StartAdmin, tmp_path: Path
) -> None:
    admin = await start_admin(serving=1, spare=1, config_file=tmp_path / "loadweaver.yaml")
    api, proxy = admin.client, admin.proxy
    failures = "loadweaver_config_reload_failures_total"
    assert metric((await api.call("GET", "/metrics")).text, failures) == 0

    proxy.config["pools"]["app"]["backends"].append(new_backend(admin.backends[1]))
    proxy.rewrite_config()
    reloaded = await api.api("POST", "/config/reload")
    assert reloaded.status == 200, reloaded.text
    assert reloaded.body == {"reloaded": True, "version": 2}
    assert reloaded.version == 2
    assert await served_by_many(admin.port, 4) == {"b0", "b1"}

    proxy.config["pools"]["app"]["backends"][0]["weight"] = 999
    proxy.rewrite_config()
    broken = await api.api("POST", "/config/reload")
    assert broken.status == 422
    assert "loadweaver.yaml" in broken.error["message"]
    assert any("pools.app.backends.0.weight" in problem for problem in broken.problems)
    assert proxy.node.version == 2
    assert await served_by_many(admin.port, 4) == {"b0", "b1"}
    assert metric((await api.call("GET", "/metrics")).text, failures) == 1


# ---- stats and cluster ----


async def test_stats_count_requests_in_flight_and_latency_per_backend(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    for _ in range(6):
        await served_by(admin.port)
    held = asyncio.ensure_future(fetch(admin.port, "/wait"))
    await eventually(lambda: sum(len(b.requests) for b in admin.backends) == 7)

    stats = await admin.client.get("/stats")
    assert stats.status == 200
    document = StatsDocument.model_validate(stats.body)
    assert document.node.config_version == stats.version
    assert document.node.id == admin.proxy.node.config.node.id
    assert document.totals.requests >= 6
    [pool] = document.pools
    assert (pool.name, pool.algorithm) == ("app", "round_robin")
    assert [b.name for b in pool.backends] == ["b0", "b1"]
    assert sum(b.in_flight for b in pool.backends) == 1
    for backend in pool.backends:
        assert backend.requests >= 3, backend
        latency = backend.latency_ms
        assert latency.p50 is not None, latency
        assert latency.p95 is not None, latency
        assert latency.p99 is not None, latency
        assert 0 < latency.p50 <= latency.p95 <= latency.p99, latency
        assert backend.errors == 0
    admin.gate.set()
    assert (await asyncio.wait_for(held, 5)).status == 200


async def test_the_stats_stream_sends_a_stats_event_every_second(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    for _ in range(4):
        await served_by(admin.port)
    events = await admin.client.events("/stats/stream", count=2, timeout=5)
    assert [name for name, _ in events] == ["stats", "stats"]
    documents = [StatsDocument.model_validate(data) for _, data in events]
    assert documents[0].time < documents[1].time
    for document in documents:
        backends = document.pools[0].backends
        assert sum(backend.requests for backend in backends) == 4
        assert all(backend.latency_ms.p50 is not None for backend in backends)


async def test_cluster_status_shows_this_node_as_its_own_leader(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    status = await admin.client.get("/cluster/status")
    assert status.status == 200
    node_id = admin.proxy.node.config.node.id
    assert status.body["leader"] == node_id
    assert status.body["config_version"] == status.version == admin.proxy.node.version
    assert status.body["store"].startswith("memory")
    [node] = status.body["nodes"]
    assert (node["id"], node["leader"], node["ready"]) == (node_id, True, True)
    assert node["admin"] == f"http://{admin.proxy.config['admin']['bind']}"


# ---- every endpoint, and the OpenAPI document ----


def endpoints_of(admin: Admin) -> list[Endpoint]:
    return AdminApi(admin.proxy.node, asyncio.Event()).endpoints()


def sample_calls(admin: Admin) -> list[tuple[str, str, str, Any]]:
    """One valid call of each endpoint: (method, path template, concrete path, body), in an
    order that works: each change leaves the config the next call expects."""
    app, b0 = "/api/v1/pools/{pool}", "/api/v1/pools/{pool}/backends/{name}"
    dynamic = {"pools": {"app": {"backends": [new_backend(admin.backends[0])]}}, "routes": []}
    return [
        ("GET", "/api/v1/pools", "/pools", None),
        ("GET", app, "/pools/app", None),
        ("GET", "/api/v1/backends", "/backends?name=b1", None),
        ("GET", f"{app}/backends", "/pools/app/backends", None),
        ("POST", f"{app}/backends", "/pools/app/backends", new_backend(admin.backends[2])),
        ("GET", b0, "/pools/app/backends/b2", None),
        ("PATCH", b0, "/pools/app/backends/b2", {"weight": 2}),
        ("POST", f"{b0}/drain", "/pools/app/backends/b2/drain", None),
        ("DELETE", b0, "/pools/app/backends/b2", None),
        ("GET", "/api/v1/routes", "/routes", None),
        ("GET", "/api/v1/config", "/config", None),
        ("POST", "/api/v1/config/validate", "/config/validate", dynamic),
        ("PUT", "/api/v1/config", "/config", dynamic),
        ("POST", "/api/v1/config/reload", "/config/reload", None),
        ("GET", "/api/v1/stats", "/stats", None),
        ("GET", "/api/v1/stats/stream", "/stats/stream", None),
        ("GET", "/api/v1/cluster/status", "/cluster/status", None),
        ("GET", "/api/v1/traffic", "/traffic?top=3&scope=node", None),
        ("GET", "/api/v1/alerts", "/alerts", None),
    ]


async def test_every_endpoint_answers_with_its_status_and_response_model(
    start_admin: StartAdmin, tmp_path: Path
) -> None:
    admin = await start_admin(spare=1, token=TOKEN, config_file=tmp_path / "loadweaver.yaml")
    endpoints = {(e.method, e.path): e for e in endpoints_of(admin)}
    calls = sample_calls(admin)
    assert {(method, template) for method, template, _, _ in calls} == set(endpoints)

    for method, template, path, body in calls:
        endpoint = endpoints[(method, template)]
        if endpoint.media_type == "text/event-stream":
            [(event, _)] = await admin.client.events(path, count=1)
            assert event == "stats"
            continue
        answer = await admin.client.api(method, path, **({"body": body} if body else {}))
        assert answer.status == endpoint.status, (method, path, answer.text)
        assert answer.version == admin.proxy.node.version
        if endpoint.response is not None:
            assert_shaped_by(endpoint.response, answer)
    [backend] = (await admin.client.ok("GET", "/backends?name=b0&pool=app"))["backends"]
    assert (backend["pool"], backend["name"]) == ("app", "b0")
    assert (await admin.client.ok("GET", "/backends?pool=nope"))["backends"] == []


def assert_shaped_by(model: type[BaseModel], answer: ApiResponse) -> None:
    assert answer.headers["Content-Type"].startswith("application/json")
    model.model_validate(answer.body)


async def test_openapi_describes_every_endpoint_with_its_errors_and_bodies(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(token=TOKEN)
    answer = await admin.client.get("/openapi.json")
    assert answer.status == 200
    document = answer.body
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    schemas = document["components"]["schemas"]
    for endpoint in endpoints_of(admin):
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        responses = operation["responses"]
        assert str(endpoint.status) in responses, endpoint.path
        assert {str(status) for status in (*endpoint.errors, 401)} <= set(responses)
        if endpoint.body is not None:
            reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert reference.rsplit("/", 1)[1] in schemas
        if endpoint.conditional:
            assert "If-Match" in [parameter["name"] for parameter in operation["parameters"]]
        path_parameters = re.findall(r"{(\w+)}", endpoint.path)
        in_path = [p["name"] for p in operation["parameters"] if p["in"] == "path"]
        assert in_path == path_parameters
    patch = document["paths"]["/api/v1/pools/{pool}/backends/{name}"]["patch"]
    patch_schema = patch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    weight = schemas[patch_schema.rsplit("/", 1)[1]]["properties"]["weight"]
    assert "256" in str(weight)
