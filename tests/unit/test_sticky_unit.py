"""Sticky sessions without a node: signed cookies, reading the session from a request, the
session table, and the Sticky wrapper around a simple inner strategy."""

import time
from collections.abc import Collection, Sequence

import pytest

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    BackendState,
    NoBackend,
    PickContext,
)
from loadweaver.balancing.sticky import (
    CookieSigner,
    MemorySessionTable,
    SessionTable,
    Sticky,
    StickyPolicy,
)
from tests.support.balancing import make_backend

SECRET = b"unit-test-secret-0123456789"
TTL = 3600.0


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rotating:
    """A plain inner strategy: the next available backend in turn; counts its picks."""

    load_aware = False

    def __init__(self, backends: Sequence[Backend] = ()) -> None:
        self.backends: list[Backend] = list(backends)
        self.turn = 0
        self.picks = 0
        self.acquired: list[Backend] = []
        self.released: list[Backend] = []

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        self.picks += 1
        if not self.backends:
            return NO_BACKENDS
        for _ in range(len(self.backends)):
            backend = self.backends[self.turn % len(self.backends)]
            self.turn += 1
            if backend.available and backend not in avoid:
                return backend
        return NONE_AVAILABLE

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)

    def on_acquire(self, backend: Backend) -> None:
        self.acquired.append(backend)

    def on_release(self, backend: Backend) -> None:
        self.released.append(backend)


def cookie_policy() -> StickyPolicy:
    return StickyPolicy("app", TTL, SECRET, cookie="lw")


def sticky_over(
    backends: Sequence[Backend],
    policy: StickyPolicy | None = None,
    sessions: SessionTable | None = None,
) -> tuple[Sticky, Rotating]:
    """A Sticky around a Rotating strategy, told about `backends` as the registry does."""
    inner = Rotating()
    sticky = Sticky(inner, policy or cookie_policy(), sessions)
    sticky.on_hosts_changed(backends)
    return sticky, inner


def cookie_for(backend: str, pool: str = "app", secret: bytes = SECRET) -> str:
    return CookieSigner(secret, pool).sign(backend, TTL)


def cookie_names(value: str | None) -> str | None:
    """The backend a cookie value (signed with SECRET for pool app) names."""
    assert value is not None, "no cookie was handed out"
    verified = CookieSigner(SECRET, "app").verify(value)
    assert verified is not None, f"{value!r} does not verify"
    return verified[0]


def flip(value: str, index: int) -> str:
    """`value` with the character at `index` changed to another cookie-safe character."""
    replacement = "A" if value[index] != "A" else "B"
    return value[:index] + replacement + value[index + 1 :]


# ---- CookieSigner ----


def test_a_signed_cookie_verifies_to_its_backend_and_remaining_time() -> None:
    clock = Clock()
    signer = CookieSigner(SECRET, "app", clock=clock)
    value = signer.sign("b1", TTL)
    assert signer.verify(value) == ("b1", TTL)
    clock.now += 600
    assert signer.verify(value) == ("b1", TTL - 600)


@pytest.mark.parametrize("name", ["b", "web-1.eu-west", "backend_with.dots.and-dashes", "é"])
def test_any_backend_name_round_trips(name: str) -> None:
    signer = CookieSigner(SECRET, "app", clock=Clock())
    value = signer.sign(name, TTL)
    assert ";" not in value
    assert "," not in value
    assert " " not in value
    assert "=" not in value
    verified = signer.verify(value)
    assert verified is not None
    assert verified[0] == name


def test_cookie_values_are_three_dot_separated_parts() -> None:
    value = CookieSigner(SECRET, "app", clock=Clock()).sign("b1", TTL)
    assert len(value.split(".")) == 3


@pytest.mark.parametrize("part", [0, 1, 2], ids=["backend", "expiry", "signature"])
def test_a_tampered_cookie_is_rejected(part: int) -> None:
    signer = CookieSigner(SECRET, "app", clock=Clock())
    parts = signer.sign("b1", TTL).split(".")
    if part == 1:
        parts[1] = str(int(parts[1]) + 100_000)  # a later expiry, still digits
    else:
        parts[part] = flip(parts[part], len(parts[part]) // 2)
    assert signer.verify(".".join(parts)) is None


def test_a_cookie_naming_another_backend_with_the_old_signature_is_rejected() -> None:
    signer = CookieSigner(SECRET, "app", clock=Clock())
    first = signer.sign("b1", TTL).split(".")
    second = signer.sign("b2", TTL).split(".")
    assert signer.verify(f"{second[0]}.{first[1]}.{first[2]}") is None


@pytest.mark.parametrize(
    "value",
    ["", "b1", "a.b", "a.b.c.d", "YjE.notdigits.sig", "YjE.-5.sig", "...", "YjE..x"],
)
def test_malformed_cookie_values_are_rejected(value: str) -> None:
    assert CookieSigner(SECRET, "app", clock=Clock()).verify(value) is None


def test_an_expired_cookie_is_rejected() -> None:
    clock = Clock()
    signer = CookieSigner(SECRET, "app", clock=clock)
    value = signer.sign("b1", 60)
    clock.now += 59
    assert signer.verify(value) is not None
    clock.now += 1
    assert signer.verify(value) is None
    clock.now += 10_000
    assert signer.verify(value) is None


def test_a_cookie_of_another_pool_is_rejected() -> None:
    clock = Clock()
    value = CookieSigner(SECRET, "other", clock=clock).sign("b1", TTL)
    assert CookieSigner(SECRET, "app", clock=clock).verify(value) is None


def test_a_cookie_signed_with_another_secret_is_rejected() -> None:
    clock = Clock()
    value = CookieSigner(b"another-secret-abcdefghijkl", "app", clock=clock).sign("b1", TTL)
    assert CookieSigner(SECRET, "app", clock=clock).verify(value) is None


def test_two_signers_with_the_same_secret_and_pool_agree() -> None:
    """Nodes of a cluster share the secret: a cookie from one node is honoured by another."""
    value = CookieSigner(SECRET, "app", clock=Clock()).sign("b1", TTL)
    verified = CookieSigner(SECRET, "app", clock=Clock()).verify(value)
    assert verified is not None
    assert verified[0] == "b1"


# ---- StickyPolicy: reading the session, writing the cookie ----


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"Cookie", b"lw=abc")], "abc"),
        ([(b"Cookie", b"a=1; lw=abc; b=2")], "abc"),
        ([(b"Cookie", b"a=1;lw=abc;b=2")], "abc"),
        ([(b"Cookie", b"   lw=abc   ;  b=2")], "abc"),
        ([(b"cookie", b"a=1"), (b"COOKIE", b"b=2; lw=xyz")], "xyz"),
        ([(b"Cookie", b"lwx=1; xlw=2; lw2=3"), (b"Cookie", b"lw=right")], "right"),
        ([(b"Cookie", b"lwx=1; xlw=2; lw2=3")], None),
        ([(b"Cookie", b"a=1; b=2")], None),
        ([(b"Host", b"example.test"), (b"X-Other", b"lw=abc")], None),
        ([(b"lw", b"abc")], None),
        ([], None),
    ],
)
def test_cookie_mode_finds_its_cookie_among_others(
    headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    assert cookie_policy().session_of(headers) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"X-Session", b"alice")], "alice"),
        ([(b"x-session", b"alice")], "alice"),
        ([(b"X-SESSION", b"  alice  ")], "alice"),
        ([(b"Host", b"h"), (b"X-Session", b"bob"), (b"X-Session", b"carol")], "bob"),
        ([(b"X-Session", b"")], None),
        ([(b"X-Sessions", b"alice")], None),
        ([(b"Cookie", b"X-Session=alice")], None),
        ([], None),
    ],
)
def test_header_mode_reads_the_header_case_insensitively(
    headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    policy = StickyPolicy("app", TTL, SECRET, header="X-Session")
    assert policy.session_of(headers) == expected


def test_header_mode_finds_a_header_the_proxy_rewrites() -> None:
    """Host and the forwarding headers are parsed into the lower-cased `special` list."""
    policy = StickyPolicy("app", TTL, SECRET, header="Host")
    assert policy.session_of([(b"Accept", b"*/*")], [(b"host", b"shop.test")]) == "shop.test"
    assert policy.session_of([], []) is None


def test_set_cookie_line_has_the_promised_attributes() -> None:
    line = cookie_policy().set_cookie_line("v.1.s", secure=False)
    assert line == b"Set-Cookie: lw=v.1.s; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax\r\n"


def test_set_cookie_line_over_tls_is_secure() -> None:
    line = cookie_policy().set_cookie_line("v.1.s", secure=True)
    assert line == (
        b"Set-Cookie: lw=v.1.s; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax; Secure\r\n"
    )


def test_set_cookie_max_age_follows_the_ttl() -> None:
    policy = StickyPolicy("app", 90.0, SECRET, cookie="sid")
    assert policy.set_cookie_line("x", secure=False).startswith(b"Set-Cookie: sid=x; Max-Age=90;")


# ---- MemorySessionTable ----


def test_a_session_is_remembered_within_its_ttl() -> None:
    clock = Clock()
    table = MemorySessionTable(ttl=10, clock=clock)
    table.put("alice", "b1")
    clock.now += 9.9
    assert table.get("alice") == "b1"
    assert table.get("bob") is None


def test_an_untouched_session_expires() -> None:
    clock = Clock()
    table = MemorySessionTable(ttl=10, clock=clock)
    table.put("alice", "b1")
    clock.now += 10
    assert table.get("alice") is None


def test_each_read_slides_the_expiry() -> None:
    clock = Clock()
    table = MemorySessionTable(ttl=10, clock=clock)
    table.put("alice", "b1")
    for _ in range(5):  # 40 s in all, never 10 s without a read
        clock.now += 8
        assert table.get("alice") == "b1"
    clock.now += 10
    assert table.get("alice") is None


def test_put_replaces_the_backend_and_restarts_the_ttl() -> None:
    clock = Clock()
    table = MemorySessionTable(ttl=10, clock=clock)
    table.put("alice", "b1")
    clock.now += 8
    table.put("alice", "b2")
    clock.now += 8
    assert table.get("alice") == "b2"


def test_the_table_forgets_the_least_recently_used_beyond_its_limit() -> None:
    table = MemorySessionTable(ttl=100, limit=3, clock=Clock())
    for key in ("a", "b", "c"):
        table.put(key, f"backend-{key}")
    assert table.get("a") == "backend-a"  # a is now the most recently used
    table.put("d", "backend-d")
    assert table.get("b") is None
    assert [table.get(key) for key in ("a", "c", "d")] == ["backend-a", "backend-c", "backend-d"]


def test_the_table_stays_bounded() -> None:
    table = MemorySessionTable(ttl=100, limit=50, clock=Clock())
    for index in range(1000):
        table.put(f"s{index}", "b0")
    assert sum(table.get(f"s{index}") is not None for index in range(1000)) == 50
    assert table.get("s999") == "b0"


# ---- Sticky wrapper: cookies ----


def test_a_new_session_gets_a_cookie_naming_the_picked_backend() -> None:
    backends = [make_backend(0), make_backend(1)]
    sticky, inner = sticky_over(backends)
    ctx = PickContext("192.0.2.1")
    picked = sticky.pick(ctx)
    assert isinstance(picked, Backend)
    assert inner.picks == 1
    assert cookie_names(ctx.new_session) == picked.name


def test_a_valid_cookie_goes_to_its_backend_without_asking_the_inner_strategy() -> None:
    backends = [make_backend(0), make_backend(1), make_backend(2)]
    sticky, inner = sticky_over(backends)
    cookie = cookie_for("b1")
    for _ in range(10):
        ctx = PickContext("192.0.2.1", cookie)
        assert sticky.pick(ctx) is backends[1]
        assert ctx.new_session is None  # a fresh cookie needs no renewal
    assert inner.picks == 0


def test_an_ageing_cookie_is_renewed_for_the_same_backend() -> None:
    backends = [make_backend(0), make_backend(1)]
    sticky, _ = sticky_over(backends)
    old = CookieSigner(SECRET, "app", clock=lambda: time.time() - TTL * 0.75).sign("b1", TTL)
    ctx = PickContext("192.0.2.1", old)
    assert sticky.pick(ctx) is backends[1]
    assert cookie_names(ctx.new_session) == "b1"
    verified = CookieSigner(SECRET, "app").verify(ctx.new_session or "")
    assert verified is not None
    assert verified[1] > TTL * 0.9


@pytest.mark.parametrize(
    "cookie",
    [
        flip(cookie_for("b1"), -3),
        cookie_for("b1", pool="other"),
        cookie_for("b1", secret=b"another-secret-abcdefghijkl"),
        "garbage",
        "",
    ],
    ids=["tampered", "other-pool", "other-secret", "garbage", "empty"],
)
def test_an_invalid_cookie_counts_as_no_cookie(cookie: str) -> None:
    backends = [make_backend(0), make_backend(1)]
    sticky, inner = sticky_over(backends)
    ctx = PickContext("192.0.2.1", cookie)
    picked = sticky.pick(ctx)
    assert inner.picks == 1
    assert isinstance(picked, Backend)
    assert cookie_names(ctx.new_session) == picked.name


def test_a_cookie_naming_a_removed_backend_is_repicked() -> None:
    sticky, inner = sticky_over([make_backend(0), make_backend(1)])
    sticky.on_hosts_changed([make_backend(0)])
    ctx = PickContext("192.0.2.1", cookie_for("b1"))
    picked = sticky.pick(ctx)
    assert isinstance(picked, Backend)
    assert picked.name == "b0"
    assert cookie_names(ctx.new_session) == "b0"
    assert inner.picks == 1


def unavailable_b1(reason: str) -> Backend:
    if reason == "maintenance":
        return make_backend(1, state="maintenance")
    backend = make_backend(1, max_connections=1 if reason == "at-cap" else 0)
    if reason == "unhealthy":
        backend.load.healthy = False
    else:
        backend.load.in_flight = 1
    return backend


@pytest.mark.parametrize("reason", ["maintenance", "unhealthy", "at-cap"])
def test_a_cookie_naming_a_backend_that_cannot_serve_is_repicked(reason: str) -> None:
    backends = [make_backend(0), unavailable_b1(reason), make_backend(2)]
    sticky, _ = sticky_over(backends)
    ctx = PickContext("192.0.2.1", cookie_for("b1"))
    picked = sticky.pick(ctx)
    assert isinstance(picked, Backend)
    assert picked.name in {"b0", "b2"}
    assert cookie_names(ctx.new_session) == picked.name


def test_a_cookie_naming_an_avoided_backend_is_repicked() -> None:
    """A retry must not go back to the backend that just failed, session or not."""
    backends = [make_backend(0), make_backend(1)]
    sticky, _ = sticky_over(backends)
    ctx = PickContext("192.0.2.1", cookie_for("b1"))
    assert sticky.pick(ctx, avoid=[backends[1]]) is backends[0]


def test_a_draining_backend_keeps_its_sessions_but_gets_no_new_ones() -> None:
    state: BackendState = "draining"
    backends = [make_backend(0), make_backend(1, state=state), make_backend(2)]
    sticky, _ = sticky_over(backends)
    pinned = PickContext("192.0.2.1", cookie_for("b1"))
    assert sticky.pick(pinned) is backends[1]
    for index in range(20):
        ctx = PickContext(f"192.0.2.{index}")
        picked = sticky.pick(ctx)
        assert isinstance(picked, Backend)
        assert picked.name != "b1"
        assert cookie_names(ctx.new_session) != "b1"


def test_no_backend_hands_out_no_cookie() -> None:
    sticky, _ = sticky_over([make_backend(0, weight=0)])
    ctx = PickContext("192.0.2.1")
    assert sticky.pick(ctx) == NONE_AVAILABLE
    assert ctx.new_session is None
    empty, _ = sticky_over([])
    assert empty.pick(PickContext("192.0.2.1")) == NO_BACKENDS


def test_the_wrapper_passes_load_events_and_awareness_through() -> None:
    backends = [make_backend(0)]
    inner = Rotating()
    inner.load_aware = True
    sticky = Sticky(inner, cookie_policy())
    sticky.on_hosts_changed(backends)
    assert sticky.load_aware is True
    assert inner.backends == backends
    sticky.on_acquire(backends[0])
    sticky.on_release(backends[0])
    assert inner.acquired == [backends[0]]
    assert inner.released == [backends[0]]


# ---- Sticky wrapper: header sessions ----


def header_sticky(
    backends: Sequence[Backend], sessions: SessionTable | None = None
) -> tuple[Sticky, Rotating]:
    policy = StickyPolicy("app", TTL, SECRET, header="X-Session")
    return sticky_over(backends, policy, sessions)


def test_a_header_session_stays_on_its_first_backend() -> None:
    backends = [make_backend(0), make_backend(1), make_backend(2)]
    sticky, _ = header_sticky(backends)
    first: dict[str, Backend | NoBackend] = {}
    for session in ("alice", "bob", "carol"):
        first[session] = sticky.pick(PickContext("192.0.2.1", session))
    assert len({id(backend) for backend in first.values()}) == 3  # new sessions spread
    for _ in range(5):
        for session, backend in first.items():
            ctx = PickContext("192.0.2.9", session)
            assert sticky.pick(ctx) is backend
            assert ctx.new_session is None  # header sessions never set a cookie


def test_a_request_without_the_header_is_not_remembered() -> None:
    backends = [make_backend(0), make_backend(1)]
    table = MemorySessionTable(TTL)
    sticky, inner = header_sticky(backends, table)
    for _ in range(4):
        assert isinstance(sticky.pick(PickContext("192.0.2.1")), Backend)
    assert inner.picks == 4


def test_a_header_session_on_a_backend_in_maintenance_moves_and_stays_moved() -> None:
    backends = [make_backend(0), make_backend(1)]
    sticky, _ = header_sticky(backends)
    original = sticky.pick(PickContext("192.0.2.1", "alice"))
    assert isinstance(original, Backend)
    index = backends.index(original)
    replaced = list(backends)
    replaced[index] = make_backend(index, state="maintenance")
    sticky.on_hosts_changed(replaced)
    moved = sticky.pick(PickContext("192.0.2.1", "alice"))
    assert isinstance(moved, Backend)
    assert moved.name != original.name
    for _ in range(3):
        assert sticky.pick(PickContext("192.0.2.1", "alice")) is moved


class DictTable:
    """A session store other than the memory table, as the cluster store will be."""

    consistent_placement = False
    shared = False

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.ttl = 60.0

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, backend: str) -> None:
        self.entries[key] = backend


def test_header_sessions_live_in_the_given_table() -> None:
    backends = [make_backend(0), make_backend(1)]
    table = DictTable()
    table.entries["alice"] = "b1"  # written by another node
    sticky, inner = header_sticky(backends, table)
    assert sticky.pick(PickContext("192.0.2.1", "alice")) is backends[1]
    assert inner.picks == 0
    picked = sticky.pick(PickContext("192.0.2.1", "bob"))
    assert isinstance(picked, Backend)
    assert table.entries["bob"] == picked.name
