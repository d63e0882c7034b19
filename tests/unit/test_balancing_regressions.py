"""Regressions found in review of the balancing work: each proved first, then fixed."""

import asyncio
from pathlib import Path

import pytest

from loadweaver.balancing.base import NONE_AVAILABLE, PickContext
from loadweaver.balancing.ip_hash import IpHash
from loadweaver.balancing.round_robin import RoundRobin
from loadweaver.balancing.sticky import CookieSigner, Sticky, StickyPolicy
from loadweaver.cluster.memory import MemoryStore
from loadweaver.config.loader import ConfigError, build_config, sticky_secret_from_environment
from loadweaver.control.compiler import CompileResources, compile_snapshot
from loadweaver.control.limiters import LimiterRegistry
from loadweaver.control.loads import LoadRegistry
from loadweaver.pool.manager import PoolManager
from tests.support.balancing import FakeClock, make_backend


@pytest.mark.parametrize(
    "value",
    ["YjA.9999999999.\xe9\xe9", "YjA.\u00b2\u00b2.c2ln", "YjA." + "9" * 5000 + ".c2ln"],
    ids=["non-ascii-signature", "unicode-digits", "huge-expiry"],
)
def test_malformed_cookie_values_verify_as_nothing(value: str) -> None:
    assert CookieSigner(b"k" * 32, "app").verify(value) is None


def test_a_draining_backends_session_cookie_is_not_renewed() -> None:
    backends = [make_backend(0, state="draining"), make_backend(1)]
    policy = StickyPolicy("app", 3600, b"s" * 32, cookie="lw")
    sticky = Sticky(RoundRobin(backends), policy, None, backends)
    ctx = PickContext("192.0.2.1", policy.signer.sign("b0", 1000))  # under half its ttl left
    assert sticky.pick(ctx) is backends[0]
    assert ctx.new_session is None


def test_ip_hash_with_its_only_backend_down_answers_at_once() -> None:
    only = make_backend(0, weight=256)
    only.load.healthy = False
    strategy = IpHash([only])
    assert strategy.pick(PickContext("192.0.2.1")) == NONE_AVAILABLE


def test_a_changed_sticky_ttl_applies_to_the_kept_session_table() -> None:
    loop = asyncio.new_event_loop()  # the pool manager needs one; nothing connects here
    limiters = LimiterRegistry(MemoryStore(), lambda: 1, loop)
    resources = CompileResources(PoolManager(loop), LoadRegistry(FakeClock()), b"f" * 32, limiters)
    loop.close()
    for ttl in ("1h", "10s"):
        config = build_config(
            {"pools": {"app": {"sticky": {"header": "X-Session", "ttl": ttl}}}}, "test"
        )
        compile_snapshot(config, 1, resources)
    assert resources.sessions["app"].ttl == 10


def test_the_node_sticky_key_comes_from_the_environment_then_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LOADWEAVER_STICKY_SECRET=from-dotenv-0123456789\n")
    assert sticky_secret_from_environment({}, dotenv) == "from-dotenv-0123456789"
    environ = {"LOADWEAVER_STICKY_SECRET": "from-environ-0123456789"}
    assert sticky_secret_from_environment(environ, dotenv) == "from-environ-0123456789"
    assert sticky_secret_from_environment({}, tmp_path / "missing") is None
    with pytest.raises(ConfigError, match="at least 16"):
        sticky_secret_from_environment({"LOADWEAVER_STICKY_SECRET": "short"}, dotenv)
