"""Balancing through a running node with real loopback backends: weighted round robin, least
connections with a slow backend, IP-hash persistence from many source addresses, random and p2c,
backups, connection caps, pools with nothing available, and the config errors for bad settings."""

import asyncio
import itertools
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadweaver.config.loader import ConfigError, build_config
from tests.conftest import StartBackend, StartProxy
from tests.support.backend import Backend, ReceivedRequest, response
from tests.support.client import RawResponse, get
from tests.support.nodes import Proxy, write_config
from tests.support.upstream import local_reply_count

SOURCES = [f"127.0.0.{last}" for last in range(2, 201)]
MAX_PARALLEL_CLIENTS = 16


@dataclass
class Served:
    """Names its backend in `X-Served-By` after `delay` seconds; tracks requests in progress."""

    name: str
    delay: float = 0.0
    active: int = 0
    peak: int = 0
    served: int = 0

    async def __call__(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        self.served += 1
        writer.write(response(200, self.name.encode(), {"X-Served-By": self.name}))
        return True


@dataclass
class Farm:
    """Backends b0, b1... and their handlers, in the order `pool_of` lists them."""

    backends: list[Backend]
    handlers: list[Served]

    def pool(self, algorithm: str = "round_robin", **per_backend: dict[str, Any]) -> dict[str, Any]:
        """A pool section; `per_backend` adds settings by name, e.g. b0={"weight": 5}."""
        return {
            "algorithm": algorithm,
            "backends": [
                {"name": handler.name, "url": backend.url, **per_backend.get(handler.name, {})}
                for backend, handler in zip(self.backends, self.handlers, strict=True)
            ],
        }

    def served(self) -> dict[str, int]:
        return {handler.name: handler.served for handler in self.handlers}


async def farm_of(backend_factory: StartBackend, *delays: float) -> Farm:
    handlers = [Served(f"b{index}", delay) for index, delay in enumerate(delays)]
    backends = [await backend_factory(handler, name=handler.name) for handler in handlers]
    return Farm(backends, handlers)


def served_by(result: RawResponse) -> str:
    assert result.status == 200, (result.status, result.body)
    name = result.header("X-Served-By")
    assert name is not None
    return name


async def fetch(proxy: Proxy, extra: str = "", **connect: Any) -> RawResponse:
    """One request on a new client connection (`connect`: e.g. local_addr)."""
    client = await proxy.connect(**connect)
    try:
        await client.send(get("/", extra=extra))
        return await client.read_response()
    finally:
        await client.close()


async def sequential(proxy: Proxy, count: int) -> list[str]:
    """`count` requests one after another on one keep-alive connection; who served each."""
    client = await proxy.connect()
    names = []
    for _ in range(count):
        await client.send(get("/"))
        names.append(served_by(await client.read_response()))
    await client.close()
    return names


async def concurrent(proxy: Proxy, clients: int, each: int, stagger: float = 0.0) -> list[str]:
    """`clients` keep-alive connections doing `each` requests in turn, all at once."""

    async def client_run(index: int) -> list[str]:
        await asyncio.sleep(index * stagger)
        return await sequential(proxy, each)

    runs = await asyncio.gather(*(client_run(index) for index in range(clients)))
    return list(itertools.chain.from_iterable(runs))


def longest_run(names: Sequence[str]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(names))


# ---- round robin ----


async def test_round_robin_weights_give_exact_proportions(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0, 0)
    pool = farm.pool(b0={"weight": 5}, b1={"weight": 3}, b2={"weight": 1})
    proxy = await proxy_factory(pool=pool)
    names = await sequential(proxy, 900)
    assert Counter(names) == {"b0": 500, "b1": 300, "b2": 100}
    assert farm.served() == {"b0": 500, "b1": 300, "b2": 100}
    assert longest_run(names) <= 3, f"bursts instead of interleaving: {names[:18]}"
    for start in range(0, 900, 9):  # every cycle of 9 has exactly 5:3:1
        assert Counter(names[start : start + 9]) == {"b0": 5, "b1": 3, "b2": 1}


async def test_round_robin_with_equal_weights_takes_turns(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0, 0)
    proxy = await proxy_factory(pool=farm.pool())
    names = await sequential(proxy, 30)
    assert farm.served() == {"b0": 10, "b1": 10, "b2": 10}
    assert longest_run(names) == 1


# ---- least connections ----


async def test_least_conn_gives_a_slow_backend_a_small_share(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0.3, 0, 0)
    proxy = await proxy_factory(pool=farm.pool("least_conn"))
    names = await concurrent(proxy, clients=12, each=8, stagger=0.003)
    counts = Counter(names)
    assert len(names) == 96
    assert counts["b0"] >= 1, f"the slow backend got nothing at all: {counts}"
    assert counts["b0"] / len(names) < 0.2, f"the slow backend took too much: {counts}"
    assert abs(counts["b1"] - counts["b2"]) <= 0.25 * len(names), counts


# ---- IP hash ----


async def backend_for_source(proxy: Proxy, source: str, connections: int, requests: int) -> str:
    """Who serves `source`, asserting it is the same one on every connection and request."""
    seen: list[str] = []
    for _ in range(connections):
        client = await proxy.connect(local_addr=(source, 0))
        for _ in range(requests):
            await client.send(get("/"))
            seen.append(served_by(await client.read_response()))
        await client.close()
    assert len(set(seen)) == 1, f"{source} went to {seen}"
    return seen[0]


async def map_sources(
    proxy: Proxy, sources: Sequence[str] = SOURCES, connections: int = 1, requests: int = 1
) -> dict[str, str]:
    """The backend each source address lands on, with a bounded number of clients at once."""
    gate = asyncio.Semaphore(MAX_PARALLEL_CLIENTS)

    async def one(source: str) -> str:
        async with gate:
            return await backend_for_source(proxy, source, connections, requests)

    backends = await asyncio.gather(*(one(source) for source in sources))
    return dict(zip(sources, backends, strict=True))


async def test_ip_hash_pins_each_source_and_moves_few_on_changes(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0, 0, 0)
    pool = farm.pool("ip_hash")
    newcomer = pool["backends"].pop()
    proxy = await proxy_factory(pool=pool)

    first = await map_sources(proxy, connections=2, requests=2)
    shares = Counter(first.values())
    assert set(shares) == {"b0", "b1", "b2"}
    assert min(shares.values()) >= len(SOURCES) // 6, f"uneven spread: {shares}"
    assert await map_sources(proxy) == first, "sources moved with no change to the pool"

    await proxy.node.editor.add_backend("app", newcomer)
    grown = await map_sources(proxy)
    moved = [source for source in SOURCES if grown[source] != first[source]]
    assert len(moved) / len(SOURCES) <= 0.4, f"{len(moved)} of {len(SOURCES)} sources moved"
    assert Counter(grown[source] for source in moved)["b3"] >= 0.8 * len(moved)
    assert Counter(grown.values())["b3"] >= len(SOURCES) // 8, "the new backend got few sources"

    await proxy.node.editor.remove_backend("app", "b0")
    shrunk = await map_sources(proxy)
    for source in SOURCES:
        if grown[source] != "b0":
            assert shrunk[source] == grown[source], f"{source} moved off {grown[source]}"
        else:
            assert shrunk[source] != "b0"


async def test_ip_hash_uses_the_client_behind_a_trusted_proxy(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0, 0)
    proxy = await proxy_factory(
        pool=farm.pool("ip_hash"), security={"trusted_proxies": ["127.0.0.1/32"]}
    )
    sources = SOURCES[:40]
    direct = await map_sources(proxy, sources)
    assert len(set(direct.values())) == 3

    via_proxy = await proxy.connect(local_addr=("127.0.0.1", 0))
    for index, source in enumerate(sources):
        # The rightmost untrusted entry is the client; what it prepended is not believed.
        spoofed = sources[(index + 1) % len(sources)]
        chain = source if index % 2 else f"{spoofed}, {source}"
        await via_proxy.send(get("/", extra=f"X-Forwarded-For: {chain}\r\n"))
        assert served_by(await via_proxy.read_response()) == direct[source], chain
    await via_proxy.close()

    untrusted = await proxy.connect(local_addr=("127.0.0.250", 0))
    seen = set()
    for source in sources:  # an untrusted peer cannot pick its backend with the header
        await untrusted.send(get("/", extra=f"X-Forwarded-For: {source}\r\n"))
        seen.add(served_by(await untrusted.read_response()))
    await untrusted.close()
    assert len(seen) == 1


# ---- random and p2c ----


@pytest.mark.parametrize("algorithm", ["random", "p2c"])
async def test_random_and_p2c_serve_everything_across_all_backends(
    backend_factory: StartBackend, proxy_factory: StartProxy, algorithm: str
) -> None:
    farm = await farm_of(backend_factory, 0, 0.002, 0)
    proxy = await proxy_factory(pool=farm.pool(algorithm))
    names = await concurrent(proxy, clients=6, each=20)
    assert len(names) == 120
    counts = Counter(names)
    assert set(counts) == {"b0", "b1", "b2"}, counts
    assert sum(farm.served().values()) == 120


# ---- backups ----


async def serving(proxy: Proxy, count: int = 9) -> set[str]:
    return set(await sequential(proxy, count))


async def test_a_backup_serves_only_while_no_primary_can(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0, 0)
    proxy = await proxy_factory(pool=farm.pool(b2={"backup": True}))
    editor = proxy.node.editor
    assert await serving(proxy) == {"b0", "b1"}

    await editor.update_backend("app", "b0", state="maintenance")
    assert await serving(proxy) == {"b1"}, "one primary left: the backup must stay idle"
    await editor.update_backend("app", "b1", state="maintenance")
    assert await serving(proxy) == {"b2"}

    await editor.update_backend("app", "b0", state="active")
    assert await serving(proxy) == {"b0"}, "no failback to the primary"

    await editor.set_weight("app", "b0", 0)
    assert await serving(proxy) == {"b2"}
    await editor.set_weight("app", "b0", 2)
    await editor.update_backend("app", "b1", state="active")
    assert await serving(proxy) == {"b0", "b1"}
    assert farm.handlers[2].served == 18


# ---- connection caps ----


async def test_a_backend_at_its_connection_cap_is_skipped(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0.1, 0.1, 0.1)
    proxy = await proxy_factory(pool=farm.pool(b0={"max_connections": 1}))
    results = await asyncio.gather(*(fetch(proxy) for _ in range(30)))
    names = Counter(served_by(result) for result in results)
    capped, *others = farm.handlers
    assert capped.peak == 1, f"b0 had {capped.peak} requests at once with max_connections 1"
    assert names["b0"] >= 1
    assert names["b1"] + names["b2"] == 30 - names["b0"]
    assert all(handler.peak > 1 for handler in others)
    backends = proxy.node.holder.current.pools["app"].backends
    assert [backend.load.in_flight for backend in backends] == [0, 0, 0]


# ---- nothing available ----


async def test_a_pool_with_only_weight_zero_answers_503_and_counts_it(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0)
    proxy = await proxy_factory(pool=farm.pool(b0={"weight": 0}, b1={"weight": 0}))
    node = proxy.node
    before = local_reply_count(node, 503, "no_backend")
    client = await proxy.connect()
    for _ in range(2):  # the connection stays usable
        await client.send(get("/"))
        result = await client.read_response()
        assert result.status == 503
        assert result.body == b"No available backend.\n"
    await client.close()
    assert local_reply_count(node, 503, "no_backend") == before + 2
    assert farm.served() == {"b0": 0, "b1": 0}

    await node.editor.update_backend("app", "b1", weight=1)
    assert await serving(proxy, 3) == {"b1"}


async def test_a_pool_with_every_backend_in_maintenance_answers_503(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    farm = await farm_of(backend_factory, 0, 0)
    maintenance = {"state": "maintenance"}
    proxy = await proxy_factory(pool=farm.pool("least_conn", b0=maintenance, b1=maintenance))
    before = local_reply_count(proxy.node, 503, "no_backend")
    result = await fetch(proxy)
    assert result.status == 503
    assert result.body == b"No available backend.\n"
    assert local_reply_count(proxy.node, 503, "no_backend") == before + 1


async def test_an_empty_pool_answers_503(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory()
    result = await fetch(proxy)
    assert result.status == 503
    assert result.body == b"No backends configured.\n"
    assert local_reply_count(proxy.node, 503, "no_backend") == 1


# ---- bad settings ----


def config_with_pool(**pool: Any) -> dict[str, Any]:
    backends = pool.pop("backends", [{"name": "a", "url": "http://127.0.0.1:9001"}])
    return {
        "listeners": [{"name": "web", "bind": "127.0.0.1:8000"}],
        "pools": {"app": {"backends": backends, **pool}},
        "routes": [{"name": "default", "pool": "app"}],
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data, "test.yaml")
    return caught.value.problems


def only_problem(data: dict[str, Any]) -> str:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    return problems[0]


STICKY = {"cookie": "lw", "secret": "validation-secret-0123456789"}


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("weight", [-1, 257, 300])
def test_a_weight_outside_0_to_256_names_its_field(weight: int) -> None:
    backends = [{"name": "a", "url": "http://127.0.0.1:9001", "weight": weight}]
    assert only_problem(config_with_pool(backends=backends)).startswith(
        "pools.app.backends.0.weight:"
    )


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("weight", [0, 1, 256])
def test_weights_0_to_256_are_accepted(weight: int) -> None:
    backends = [{"name": "a", "url": "http://127.0.0.1:9001", "weight": weight}]
    config = build_config(config_with_pool(backends=backends), "t")
    assert config.pools["app"].backends[0].weight == weight


@pytest.mark.usefixtures("clean_environment")
def test_an_unknown_algorithm_lists_the_allowed_ones() -> None:
    problem = only_problem(config_with_pool(algorithm="roundrobin"))
    assert problem.startswith("pools.app.algorithm:")
    for algorithm in ("round_robin", "least_conn", "ip_hash", "random", "p2c"):
        assert algorithm in problem


@pytest.mark.usefixtures("clean_environment")
def test_duplicate_backend_names_are_refused() -> None:
    backends = [
        {"name": "a", "url": "http://127.0.0.1:9001"},
        {"name": "a", "url": "http://127.0.0.1:9002"},
    ]
    problem = only_problem(config_with_pool(backends=backends))
    assert problem.startswith("pools.app.backends")
    assert "'a'" in problem


@pytest.mark.usefixtures("clean_environment")
def test_sticky_on_ip_hash_is_refused() -> None:
    problem = only_problem(config_with_pool(algorithm="ip_hash", sticky=STICKY))
    assert problem.startswith("pools.app")
    assert "ip_hash" in problem


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    "sticky",
    [
        {**STICKY, "header": "X-Session"},
        {"secret": STICKY["secret"]},
        {**STICKY, "secret": "too-short"},
        {**STICKY, "ttl": "0s"},
        {**STICKY, "cookie": "bad name"},
    ],
    ids=["cookie-and-header", "neither", "short-secret", "zero-ttl", "bad-cookie-name"],
)
def test_bad_sticky_settings_are_refused(sticky: dict[str, Any]) -> None:
    assert only_problem(config_with_pool(sticky=sticky)).startswith("pools.app.sticky")


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("algorithm", ["round_robin", "least_conn", "random", "p2c"])
def test_sticky_fits_every_other_algorithm(algorithm: str) -> None:
    config = build_config(config_with_pool(algorithm=algorithm, sticky=STICKY), "t")
    assert config.pools["app"].sticky is not None


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("change", "field_path"),
    [
        ({"state": "paused"}, "pools.app.backends.0.state"),
        ({"max_connections": -1}, "pools.app.backends.0.max_connections"),
        ({"slow_start": "soon"}, "pools.app.backends.0.slow_start"),
        ({"backup": "maybe"}, "pools.app.backends.0.backup"),
    ],
)
def test_bad_backend_attributes_name_their_field(change: dict[str, Any], field_path: str) -> None:
    backends = [{"name": "a", "url": "http://127.0.0.1:9001", **change}]
    assert only_problem(config_with_pool(backends=backends)).startswith(field_path + ":")


def test_config_validate_reports_balancing_errors_with_field_paths(tmp_path: Path) -> None:
    backends = [{"name": "a", "url": "http://127.0.0.1:9001", "weight": 300}]
    path = write_config(tmp_path / "bad.yaml", config_with_pool(algorithm="rr", backends=backends))
    done = subprocess.run(
        [sys.executable, "-m", "loadweaver", "config", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if not key.startswith("LOADWEAVER_")},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "pools.app.backends.0.weight" in output
    assert "pools.app.algorithm" in output
