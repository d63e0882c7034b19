"""The pieces behind API changes, without a node: every ClusterStore against one conformance
suite, how file config and API overrides compose, the admin token rules, secret redaction, and the
latency percentiles of the per-backend stats."""

import errno
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadweaver.admin.auth import AdminTokenError, check_exposure, resolve_token, token_matches
from loadweaver.cluster.memory import STATE_FILE_NAME, MemoryStore
from loadweaver.cluster.state import Override, StoredConfig, fingerprint
from loadweaver.cluster.store import ClusterStore, StoreError
from loadweaver.config.models import AdminConfig, StickyConfig
from loadweaver.control.overrides import compose, record_changes
from loadweaver.control.redaction import REDACTED, RedactionError, redact_config, restore_secrets
from loadweaver.observability.backend_stats import LATENCY_BOUNDS, BackendStats, percentile

# ---- every ClusterStore: one conformance suite ----


@dataclass(frozen=True)
class Implementation:
    """How to open a store of one kind on the storage under a directory."""

    name: str
    open: Callable[[Path], ClusterStore]  # a new store over the same storage each call
    persistent: bool  # a new store sees what an earlier one saved
    break_writes: Callable[[pytest.MonkeyPatch], None] | None  # makes the next save fail


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while the new record is written: fsync reports ENOSPC."""

    def fsync(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


IMPLEMENTATIONS = [
    Implementation("memory", lambda _: MemoryStore(), persistent=False, break_writes=None),
    Implementation(
        "memory-with-state-dir",
        lambda directory: MemoryStore(directory / "state"),
        persistent=True,
        break_writes=_fail_fsync,
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS, ids=[item.name for item in IMPLEMENTATIONS])
def implementation(request: pytest.FixtureRequest) -> Implementation:
    kind: Implementation = request.param
    return kind


def stored_record(version: int = 7) -> StoredConfig:
    """A record with every kind of override: a changed pool, a deleted one, and the routes."""
    return StoredConfig(
        version=version,
        pools={
            "app": Override({"backends": [{"name": "b1", "url": "http://10.0.0.1:80"}]}, "f1"),
            "gone": Override(None, fingerprint({"algorithm": "random"})),
        },
        routes=Override([{"name": "all", "pool": "app"}], fingerprint(None)),
    )


def files_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


async def test_a_store_with_nothing_saved_loads_an_empty_record(
    implementation: Implementation, tmp_path: Path
) -> None:
    record = await implementation.open(tmp_path).load()
    assert record == StoredConfig()
    assert (record.version, dict(record.pools), record.routes) == (0, {}, None)


async def test_a_saved_record_loads_back_unchanged(
    implementation: Implementation, tmp_path: Path
) -> None:
    store = implementation.open(tmp_path)
    await store.save(stored_record())
    assert await store.load() == stored_record()
    reopened = await implementation.open(tmp_path).load()
    assert reopened == (stored_record() if implementation.persistent else StoredConfig())


async def test_a_later_save_replaces_the_whole_record(
    implementation: Implementation, tmp_path: Path
) -> None:
    store = implementation.open(tmp_path)
    await store.save(stored_record())
    smaller = StoredConfig(version=9, pools={"other": Override({"algorithm": "p2c"}, "f2")})
    await store.save(smaller)
    assert await store.load() == smaller
    if implementation.persistent:
        assert await implementation.open(tmp_path).load() == smaller


async def test_a_save_leaves_no_temporary_file_behind(
    implementation: Implementation, tmp_path: Path
) -> None:
    store = implementation.open(tmp_path)
    for version in range(3):
        await store.save(stored_record(version))
    expected = ["state", f"state/{STATE_FILE_NAME}"] if implementation.persistent else []
    assert files_under(tmp_path) == expected


async def test_a_failed_save_raises_store_error_and_keeps_the_old_record(
    implementation: Implementation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if implementation.break_writes is None:
        pytest.skip(f"{implementation.name} writes nowhere, so a save cannot fail")
    store = implementation.open(tmp_path)
    await store.save(stored_record(1))
    with monkeypatch.context() as broken:
        implementation.break_writes(broken)
        with pytest.raises(StoreError) as caught:
            await store.save(stored_record(2))
    message = str(caught.value)
    assert "cannot write" in message
    assert "No space left on device" in message
    assert await store.load() == stored_record(1)
    assert await implementation.open(tmp_path).load() == stored_record(1)
    assert files_under(tmp_path) == ["state", f"state/{STATE_FILE_NAME}"]


def test_each_store_says_what_it_is(implementation: Implementation, tmp_path: Path) -> None:
    store = implementation.open(tmp_path)
    assert store.kind in ("memory", "redis")
    assert store.description.startswith(store.kind)


# ---- the state file of the memory store ----


async def test_a_state_dir_under_a_plain_file_fails_with_a_sentence_naming_the_path(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain").write_text("not a directory")
    store = MemoryStore(tmp_path / "plain" / "state")
    with pytest.raises(StoreError) as caught:
        await store.save(stored_record())
    assert str(caught.value) == (
        f"cannot write the state file {tmp_path}/plain/state/{STATE_FILE_NAME}: Not a directory"
    )
    with pytest.raises(StoreError, match=r"cannot read the state file .*: Not a directory"):
        await store.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
async def test_a_read_only_state_dir_fails_and_keeps_the_old_record(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    await store.save(stored_record(1))
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="Permission denied"):
            await store.save(stored_record(2))
    finally:
        tmp_path.chmod(0o700)
    assert await MemoryStore(tmp_path).load() == stored_record(1)
    assert files_under(tmp_path) == [STATE_FILE_NAME]


@pytest.mark.parametrize(
    "text",
    ["{torn", "[]", '{"format": 2, "version": 1, "pools": {}}', '{"format": 1, "pools": {}}'],
    ids=["torn", "not-an-object", "newer-format", "no-version"],
)
async def test_a_damaged_state_file_fails_to_load_with_advice(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE_NAME).write_text(text)
    with pytest.raises(StoreError) as caught:
        await MemoryStore(tmp_path).load()
    message = str(caught.value)
    assert f"the state file {tmp_path / STATE_FILE_NAME} is damaged" in message
    assert "move it away" in message


def test_the_description_names_the_state_file_or_says_nothing_persists(tmp_path: Path) -> None:
    assert str(tmp_path / STATE_FILE_NAME) in MemoryStore(tmp_path).description
    assert "not persisted" in MemoryStore().description


# ---- composing the file with API overrides ----

B0 = {"name": "b0", "url": "http://127.0.0.1:8001"}
B1 = {"name": "b1", "url": "http://127.0.0.1:8002"}
FILE: dict[str, Any] = {
    "listeners": [{"name": "web", "bind": "127.0.0.1:8000"}],
    "pools": {"app": {"backends": [B0]}, "other": {"algorithm": "random"}},
    "routes": [{"name": "default", "pool": "app"}],
}
API_APP = {"backends": [B0, B1]}


def edited(**pools: Any) -> dict[str, Any]:
    """FILE with some pools replaced (None: removed from the file)."""
    merged = {**FILE["pools"], **pools}
    return {**FILE, "pools": {name: pool for name, pool in merged.items() if pool is not None}}


def taken_over(name: str, definition: Any, file_data: dict[str, Any] = FILE) -> StoredConfig:
    """A record in which the API took pool `name` over from `file_data`."""
    file_pool = file_data["pools"].get(name)
    return StoredConfig(version=3, pools={name: Override(definition, fingerprint(file_pool))})


def test_with_no_overrides_the_file_is_the_config() -> None:
    composition = compose(FILE, StoredConfig())
    assert composition.data == FILE
    assert (composition.api_pools, composition.api_routes) == (frozenset(), False)
    assert composition.reclaimed == ()


def test_an_api_pool_replaces_the_file_pool_while_the_file_stays_the_same() -> None:
    composition = compose(FILE, taken_over("app", API_APP))
    assert composition.data["pools"] == {"app": API_APP, "other": FILE["pools"]["other"]}
    assert composition.data["listeners"] == FILE["listeners"]
    assert composition.api_pools == {"app"}
    assert composition.stored == taken_over("app", API_APP)
    assert FILE["pools"]["app"] == {"backends": [B0]}, "compose must not change its input"


def test_editing_the_pool_in_the_file_gives_it_back_to_the_file() -> None:
    changed = edited(app={"algorithm": "least_conn", "backends": [B0]})
    composition = compose(changed, taken_over("app", API_APP))
    assert composition.data["pools"]["app"] == changed["pools"]["app"]
    assert composition.api_pools == frozenset()
    assert composition.reclaimed == ("pools.app",)
    assert dict(composition.stored.pools) == {}
    assert composition.stored.version == 3


def test_editing_another_pool_in_the_file_keeps_the_api_pool() -> None:
    changed = edited(other={"algorithm": "p2c"})
    composition = compose(changed, taken_over("app", API_APP))
    assert composition.data["pools"] == {"app": API_APP, "other": {"algorithm": "p2c"}}
    assert composition.reclaimed == ()


def test_a_pool_deleted_through_the_api_stays_away_until_the_file_changes_it() -> None:
    deleted = taken_over("other", None)
    composition = compose(FILE, deleted)
    assert list(composition.data["pools"]) == ["app"]
    assert composition.api_pools == {"other"}

    composition = compose(edited(other={"algorithm": "p2c"}), deleted)
    assert composition.data["pools"]["other"] == {"algorithm": "p2c"}
    assert composition.reclaimed == ("pools.other",)


def test_a_pool_the_api_created_yields_once_the_file_defines_one_of_that_name() -> None:
    created = taken_over("blue", {"backends": [B1]})
    assert compose(FILE, created).data["pools"]["blue"] == {"backends": [B1]}
    composition = compose(edited(blue={"backends": [B0]}), created)
    assert composition.data["pools"]["blue"] == {"backends": [B0]}
    assert composition.reclaimed == ("pools.blue",)


def test_api_routes_replace_the_file_routes_until_the_file_changes_them() -> None:
    routes = [{"name": "other", "pool": "other"}]
    stored = StoredConfig(routes=Override(routes, fingerprint(FILE["routes"])))
    composition = compose(FILE, stored)
    assert (composition.data["routes"], composition.api_routes) == (routes, True)

    changed = {**FILE, "routes": [{"name": "renamed", "pool": "app"}]}
    composition = compose(changed, stored)
    assert composition.data["routes"] == changed["routes"]
    assert (composition.api_routes, composition.reclaimed) == (False, ("routes",))
    assert composition.stored.routes is None


def test_sources_name_the_api_for_every_part_it_owns() -> None:
    file_sources = {
        "listeners": "f.yaml",
        "pools.app.backends": "f.yaml",
        "pools.app.algorithm": "environment",
        "pools.other.algorithm": "f.yaml",
        "routes": "f.yaml",
    }
    stored = StoredConfig(
        pools=taken_over("app", API_APP).pools,
        routes=Override([], fingerprint(FILE["routes"])),
    )
    assert compose(FILE, stored).sources(file_sources) == {
        "listeners": "f.yaml",
        "pools.app": "api",
        "pools.other.algorithm": "f.yaml",
        "routes": "api",
    }


def test_a_changed_pool_is_recorded_with_the_file_fingerprint() -> None:
    after = edited(app=API_APP)
    stored = record_changes(FILE, StoredConfig(version=5), FILE, after)
    assert stored == StoredConfig(
        version=5, pools={"app": Override(API_APP, fingerprint(FILE["pools"]["app"]))}
    )
    assert compose(FILE, stored).data == after


def test_a_pool_changed_back_to_the_file_definition_drops_its_override() -> None:
    stored = taken_over("app", API_APP)
    after = record_changes(FILE, stored, edited(app=API_APP), FILE)
    assert dict(after.pools) == {}
    assert compose(FILE, after).data == FILE


def test_deleting_and_creating_pools_are_recorded() -> None:
    after = edited(other=None, blue={"backends": [B1]})
    stored = record_changes(FILE, StoredConfig(), FILE, after)
    assert dict(stored.pools) == {
        "other": Override(None, fingerprint(FILE["pools"]["other"])),
        "blue": Override({"backends": [B1]}, fingerprint(None)),
    }
    assert compose(FILE, stored).data == after


def test_unchanged_parts_keep_their_earlier_overrides() -> None:
    stored = taken_over("app", API_APP)
    before = edited(app=API_APP)
    after = edited(app=API_APP, other={"algorithm": "p2c"})
    recorded = record_changes(FILE, stored, before, after)
    assert set(recorded.pools) == {"app", "other"}
    assert recorded.pools["app"] == stored.pools["app"]
    assert recorded.routes is None


def test_route_changes_are_recorded_and_undone_like_pools() -> None:
    routes = [{"name": "other", "pool": "other"}]
    after = {**FILE, "routes": routes}
    stored = record_changes(FILE, StoredConfig(), FILE, after)
    assert stored.routes == Override(routes, fingerprint(FILE["routes"]))
    assert dict(stored.pools) == {}
    assert record_changes(FILE, stored, after, FILE).routes is None


def test_emptying_the_routes_when_the_file_has_none_needs_no_override() -> None:
    no_routes = {key: value for key, value in FILE.items() if key != "routes"}
    before = {**no_routes, "routes": [{"name": "r", "pool": "app"}]}
    stored = StoredConfig(routes=Override(before["routes"], fingerprint(None)))
    assert record_changes(no_routes, stored, before, {**no_routes, "routes": []}).routes is None


# ---- the admin token ----


def test_the_token_comes_from_the_environment_variable_trimmed() -> None:
    assert resolve_token(AdminConfig(), {"LOADWEAVER_ADMIN_TOKEN": "  s3cret \n"}) == "s3cret"
    custom = AdminConfig(token_env="MY_TOKEN")
    assert resolve_token(custom, {"MY_TOKEN": "mine", "LOADWEAVER_ADMIN_TOKEN": "x"}) == "mine"


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_no_token_when_the_variable_is_unset_or_blank(value: str | None, tmp_path: Path) -> None:
    environ = {} if value is None else {"LOADWEAVER_ADMIN_TOKEN": value}
    assert resolve_token(AdminConfig(), environ, dotenv=tmp_path / ".env") is None


def test_the_dotenv_file_gives_the_token_when_the_environment_does_not(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("OTHER=1\nLOADWEAVER_ADMIN_TOKEN=from-dotenv\n")
    assert resolve_token(AdminConfig(), {}, dotenv=dotenv) == "from-dotenv"
    environ = {"LOADWEAVER_ADMIN_TOKEN": "from-env"}
    assert resolve_token(AdminConfig(), environ, dotenv=dotenv) == "from-env"


def test_the_token_file_wins_and_its_first_line_is_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token  \nsecond line\n")
    admin = AdminConfig(token_file=str(token_file))
    assert resolve_token(admin, {"LOADWEAVER_ADMIN_TOKEN": "from-env"}) == "file-token"


@pytest.mark.parametrize("content", ["", "\n", "   \nthe token on line two\n"])
def test_an_empty_token_file_is_an_error(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(AdminTokenError) as caught:
        resolve_token(AdminConfig(token_file=str(token_file)), {})
    assert str(caught.value) == (
        f"admin.token_file: {token_file} is empty; put the token on its first line"
    )


@pytest.mark.parametrize("name", ["missing", "a-directory"])
def test_an_unreadable_token_file_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "a-directory":
        path.mkdir()
    with pytest.raises(AdminTokenError) as caught:
        resolve_token(AdminConfig(token_file=str(path)), {"LOADWEAVER_ADMIN_TOKEN": "ignored"})
    assert str(caught.value).startswith(f"admin.token_file: cannot read {path}: ")


def test_a_token_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff\xfe-binary\n")
    with pytest.raises(AdminTokenError, match=r"admin\.token_file"):
        resolve_token(AdminConfig(token_file=str(token_file)), {})


@pytest.mark.parametrize("bind", ["0.0.0.0:9090", "[::]:9090", "10.1.2.3:9090", "[2001:db8::1]:1"])
def test_an_open_api_may_not_be_offered_beyond_loopback(bind: str) -> None:
    admin = AdminConfig(bind=bind)
    with pytest.raises(AdminTokenError) as caught:
        check_exposure(admin, None)
    message = str(caught.value)
    assert bind in message
    assert "LOADWEAVER_ADMIN_TOKEN" in message
    assert "127.0.0.1" in message
    check_exposure(admin, "a-token")  # with a token, any address is fine


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:9090", "127.0.0.2:9090", "[::1]:9090", "localhost:9090"]
)
def test_an_open_api_may_listen_on_loopback(bind: str) -> None:
    check_exposure(AdminConfig(bind=bind), None)


@pytest.mark.parametrize(
    ("authorization", "matches"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Bearer S3CRET", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("s3cret", False),
        ("Basic s3cret", False),
        ("Token s3cret", False),
        ("Bearers3cret", False),
        (None, False),
    ],
)
def test_only_the_exact_bearer_token_matches(authorization: str | None, matches: bool) -> None:
    assert token_matches("s3cret", authorization) is matches


@pytest.mark.parametrize("authorization", [None, "", "Basic x", "Bearer anything"])
def test_without_a_configured_token_everything_matches(authorization: str | None) -> None:
    assert token_matches(None, authorization) is True


# ---- secret redaction ----

SECRET = "the-sticky-secret-0123"


def sticky_pools(secret: str | None = SECRET) -> dict[str, Any]:
    sticky: dict[str, Any] = {"cookie": "lw", "secret": secret}
    return {"app": {"sticky": sticky, "backends": [B0]}, "plain": {"backends": [B1]}}


def test_redaction_replaces_every_sticky_secret_and_nothing_else() -> None:
    data = {"node": {"id": "n1"}, "pools": sticky_pools()}
    redacted = redact_config(data)
    assert redacted["pools"]["app"]["sticky"] == {"cookie": "lw", "secret": REDACTED}
    assert redacted["pools"]["plain"] == data["pools"]["plain"]
    assert redacted["node"] == {"id": "n1"}
    assert SECRET not in repr(redacted)
    assert data["pools"]["app"]["sticky"]["secret"] == SECRET, "the input must not change"


@pytest.mark.parametrize(
    "data",
    [{}, {"pools": None}, {"pools": {}}, {"pools": sticky_pools(secret=None)}],
    ids=["no-pools-key", "null-pools", "no-pools", "no-secret"],
)
def test_redaction_leaves_configs_without_secrets_alone(data: dict[str, Any]) -> None:
    assert redact_config(data) == data


def test_the_marker_is_a_valid_secret_so_a_redacted_config_validates() -> None:
    assert StickyConfig(cookie="lw", secret=REDACTED).secret == REDACTED


def test_the_marker_sent_back_keeps_the_current_secret() -> None:
    sent = redact_config({"pools": sticky_pools()})["pools"]
    restored = restore_secrets(sent, sticky_pools())
    assert restored == sticky_pools()
    assert sent["app"]["sticky"]["secret"] == REDACTED, "the input must not change"


def test_a_new_secret_sent_replaces_the_current_one() -> None:
    sent = sticky_pools(secret="a-brand-new-secret-456")
    assert restore_secrets(sent, sticky_pools()) == sent


@pytest.mark.parametrize(
    "current",
    [sticky_pools(secret=None), {"plain": {}}],
    ids=["pool-without-secret", "pool-not-there"],
)
def test_the_marker_for_a_pool_without_a_secret_is_refused(current: dict[str, Any]) -> None:
    sent = {"app": {"sticky": {"cookie": "lw", "secret": REDACTED}}}
    with pytest.raises(RedactionError) as caught:
        restore_secrets(sent, current)
    assert str(caught.value).startswith("pools.app.sticky.secret: ")
    assert "send the secret itself" in str(caught.value)


# ---- per-backend latency percentiles ----


def test_latency_buckets_run_from_a_tenth_of_a_millisecond_to_a_minute_20_percent_apart() -> None:
    assert LATENCY_BOUNDS[0] == pytest.approx(0.0001)
    assert 60 <= LATENCY_BOUNDS[-1] < 72
    ratios = {round(high / low, 9) for low, high in itertools.pairwise(LATENCY_BOUNDS)}
    assert ratios == {1.2}


def buckets(**counts: int) -> list[int]:
    """Bucket counts: `at10=5` puts 5 requests in bucket 10; the last bucket is the overflow."""
    contents = [0] * (len(LATENCY_BOUNDS) + 1)
    for name, count in counts.items():
        contents[int(name.removeprefix("at"))] = count
    return contents


def test_percentiles_name_the_upper_bound_of_the_bucket_holding_the_rank() -> None:
    known = buckets(at10=50, at20=45, at30=5)
    assert percentile(known, 0.0) == LATENCY_BOUNDS[10]
    assert percentile(known, 0.5) == LATENCY_BOUNDS[10]
    assert percentile(known, 0.51) == LATENCY_BOUNDS[20]
    assert percentile(known, 0.95) == LATENCY_BOUNDS[20]
    assert percentile(known, 0.96) == LATENCY_BOUNDS[30]
    assert percentile(known, 0.99) == LATENCY_BOUNDS[30]
    assert percentile(known, 1.0) == LATENCY_BOUNDS[30]


def test_percentiles_of_nothing_are_none_and_overflow_reads_as_the_last_bound() -> None:
    assert percentile(buckets(), 0.5) is None
    assert percentile(buckets(at74=3), 0.99) == LATENCY_BOUNDS[-1]


def test_recorded_requests_land_in_buckets_that_bound_them() -> None:
    stats = BackendStats()
    for _ in range(90):
        stats.record(0.001, failed=False)
    for _ in range(10):
        stats.record(0.250, failed=True)
    stats.record(3600.0, failed=True)
    assert (stats.requests, stats.errors) == (101, 11)
    assert sum(stats.latency) == 0, "recording only queues: the sampler folds"
    stats.fold()
    assert (stats.requests, stats.errors, sum(stats.latency)) == (101, 11, 101)
    assert stats.latency[-1] == 1
    p50, p95 = percentile(stats.latency, 0.5), percentile(stats.latency, 0.95)
    assert p50 is not None
    assert 0.001 < p50 <= 0.001 * 1.2
    assert p95 is not None
    assert 0.250 < p95 <= 0.250 * 1.2
