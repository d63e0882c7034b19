"""The cluster store on Redis: every call is short, bounded and behind a circuit breaker.

A failed call raises StoreError at once; callers keep serving from what they have. The config
record is one msgpack value in a hash next to its version; writes are compare-and-set in Lua and
announce the new version on pub/sub, which readers treat as a hint (see control/sync.py).
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loadweaver.cluster import scripts
from loadweaver.cluster.breaker import CircuitBreaker
from loadweaver.cluster.codec import CodecError, decode, encode
from loadweaver.cluster.connection import Timeouts, connect
from loadweaver.cluster.keys import KeySchema
from loadweaver.cluster.state import StoredConfig
from loadweaver.cluster.store import FencedOutError, Grant, Lease, StoreError, VersionConflictError
from loadweaver.config.addresses import without_password

T = TypeVar("T")


class RedisStore:
    kind = "redis"
    watch_path: Path | None = None

    def __init__(
        self,
        url: str,
        cluster: str,
        timeouts: Timeouts,
        on_availability: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self._url = url
        self._keys = KeySchema(cluster)
        self._client = connect(url, timeouts)
        self._listener = connect(url, Timeouts(command=0, connect=timeouts.connect))
        self.breaker = CircuitBreaker(on_availability)
        register = self._client.register_script
        self._save = register(scripts.SAVE_CONFIG)
        self._heartbeat = register(scripts.HEARTBEAT)
        self._members = register(scripts.MEMBERS)
        self._acquire = register(scripts.ACQUIRE_LEASE)
        self._renew = register(scripts.RENEW_LEASE)
        self._release = register(scripts.RELEASE_LEASE)
        self._take = register(scripts.TAKE_TOKENS)
        self._save_verdict = register(scripts.SAVE_VERDICT)
        self._report_ejection = register(scripts.REPORT_EJECTION)
        self._ejections = register(scripts.EJECTIONS)

    @property
    def description(self) -> str:
        return f"redis {without_password(self._url)} (cluster {self._keys.cluster!r})"

    @property
    def up(self) -> bool:
        return self.breaker.up

    async def _call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allows():
            raise StoreError(f"the cluster store is down ({self.description}); {what} skipped")
        try:
            result = await operation()
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as error:
            reason = f"{type(error).__name__}: {error}"
            self.breaker.failed(reason)
            raise StoreError(f"the cluster store is unreachable ({what}: {reason})") from None
        except RedisError as error:  # an answer, though an error: the store itself is up
            self.breaker.succeeded()
            raise StoreError(f"the cluster store refused {what}: {error}") from None
        self.breaker.succeeded()
        return result

    # ---- the dynamic config ----

    async def load(self) -> StoredConfig:
        keys = self._keys
        version, record = await self._call(
            "reading the config", lambda: self._client.hmget(keys.config, ["version", "record"])
        )
        if record is None:
            return StoredConfig(version=int(version or 0))
        try:
            data = decode(_as_bytes(record))
            return StoredConfig.from_json({**data, "version": int(version or 0)})
        except (CodecError, ValueError, KeyError, TypeError) as error:
            message = f"the cluster config in {self.description} is unreadable: {error}"
            raise StoreError(message) from None

    async def save(
        self,
        state: StoredConfig,
        expected_version: int,
        fence: Lease | None = None,
        min_version: int = 0,
    ) -> int:
        keys = self._keys
        record = encode({k: v for k, v in state.to_json().items() if k != "version"})
        fence_value = f"{fence.node_id}:{fence.token}" if fence else ""
        outcome, version = await self._call(
            "writing the config",
            lambda: self._save(
                keys=[keys.config, keys.lease],
                args=[expected_version, fence_value, record, keys.events, min_version],
            ),
        )
        if outcome == -1:
            raise FencedOutError(f"lease {fence_value} is no longer the leader's")
        if outcome == 0:
            raise VersionConflictError(expected_version, int(version))
        return int(version)

    async def changes(self) -> AsyncIterator[int]:
        """The current version, then versions from pub/sub until the connection drops, which
        raises StoreError."""
        pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys.events)
            # Writes made before the subscription took effect were announced to nobody: start
            # with the version as it is now, read after subscribing, so none can fall between.
            yield (await self.load()).version
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield int(message["data"])
        except (RedisError, OSError) as error:
            raise StoreError(f"lost the change feed: {type(error).__name__}: {error}") from None
        finally:
            with contextlib.suppress(RedisError, OSError):  # the connection may be gone already
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # ---- membership and leadership ----

    async def heartbeat(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        keys = self._keys
        await self._call(
            "heartbeat",
            lambda: self._heartbeat(
                keys=[keys.members, keys.member_expiries],
                args=[node_id, encode(record), _milliseconds(ttl)],
            ),
        )

    async def leave(self, node_id: str) -> None:
        keys = self._keys

        async def remove() -> None:
            await self._client.hdel(keys.members, node_id)
            await self._client.hdel(keys.member_expiries, node_id)

        await self._call("leaving", remove)

    async def members(self) -> list[dict[str, Any]]:
        keys = self._keys
        raw = await self._call(
            "listing members", lambda: self._members(keys=[keys.members, keys.member_expiries])
        )
        records = []
        for item in raw:
            try:
                records.append(decode(_as_bytes(item)))
            except CodecError:
                continue  # a member of another release: it lists itself its own way
        return records

    async def acquire_lease(self, node_id: str, ttl: float) -> Lease | None:
        keys = self._keys
        token = await self._call(
            "acquiring the lease",
            lambda: self._acquire(
                keys=[keys.lease, keys.fence], args=[node_id, _milliseconds(ttl)]
            ),
        )
        return Lease(node_id, int(token)) if token else None

    async def renew_lease(self, lease: Lease, ttl: float) -> bool:
        keys = self._keys
        value = f"{lease.node_id}:{lease.token}"
        renewed = await self._call(
            "renewing the lease",
            lambda: self._renew(keys=[keys.lease], args=[value, _milliseconds(ttl)]),
        )
        return bool(renewed)

    async def release_lease(self, lease: Lease) -> None:
        value = f"{lease.node_id}:{lease.token}"
        await self._call(
            "releasing the lease", lambda: self._release(keys=[self._keys.lease], args=[value])
        )

    async def current_lease(self) -> Lease | None:
        raw = await self._call("reading the lease", lambda: self._client.get(self._keys.lease))
        if not raw:
            return None
        node_id, _, token = _as_bytes(raw).decode().rpartition(":")
        return Lease(node_id, int(token)) if token.isdigit() else None

    # ---- health verdicts ----

    async def save_verdict(
        self, key: str, verdict: dict[str, Any], fence: Lease | None = None
    ) -> None:
        keys = self._keys
        fence_value = f"{fence.node_id}:{fence.token}" if fence else ""
        saved = await self._call(
            "recording a verdict",
            lambda: self._save_verdict(
                keys=[keys.verdicts, keys.lease],
                args=[key, encode(verdict), fence_value, keys.verdict_events],
            ),
        )
        if not saved:
            raise FencedOutError(f"lease {fence_value} is no longer the leader's")

    async def load_verdicts(self) -> dict[str, dict[str, Any]]:
        raw = await self._call(
            "reading verdicts", lambda: self._client.hgetall(self._keys.verdicts)
        )
        verdicts = {}
        for field, record in raw.items():
            try:
                verdicts[_as_bytes(field).decode()] = decode(_as_bytes(record))
            except CodecError:
                continue  # written by another release: its own nodes read it
        return verdicts

    async def verdict_changes(self) -> AsyncIterator[None]:
        pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys.verdict_events)
            yield None  # subscribed: whatever changed before now, the caller reads itself
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield None
        except (RedisError, OSError) as error:
            raise StoreError(f"lost the verdict feed: {type(error).__name__}: {error}") from None
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def report_ejection(self, node_id: str, key: str, ttl: float) -> None:
        name = self._keys.ejections
        await self._call(
            "reporting an ejection",
            lambda: self._report_ejection(
                keys=[name], args=[f"{key}|{node_id}", _milliseconds(ttl)]
            ),
        )

    async def ejection_reports(self) -> dict[str, set[str]]:
        name = self._keys.ejections
        fields = await self._call("reading ejections", lambda: self._ejections(keys=[name]))
        reports: dict[str, set[str]] = {}
        for field in fields:
            key, _, node_id = _as_bytes(field).decode().rpartition("|")
            reports.setdefault(key, set()).add(node_id)
        return reports

    # ---- sticky sessions ----

    async def session_get(self, pool: str, key: str, ttl: float) -> str | None:
        name = self._keys.session(pool, key)
        raw = await self._call(
            "reading a session", lambda: self._client.getex(name, px=_milliseconds(ttl))
        )
        return _as_bytes(raw).decode() if raw else None

    async def session_set(self, pool: str, key: str, backend: str, ttl: float) -> None:
        name = self._keys.session(pool, key)
        await self._call(
            "pinning a session", lambda: self._client.set(name, backend, px=_milliseconds(ttl))
        )

    # ---- rate limits ----

    async def take_tokens(
        self, bucket: str, rate: float, capacity: float, want: int, idle_ttl: float
    ) -> Grant:
        name = self._keys.bucket(bucket)
        granted, left, wait = await self._call(
            "taking tokens",
            lambda: self._take(keys=[name], args=[rate, capacity, want, _milliseconds(idle_ttl)]),
        )
        return Grant(int(granted), int(left) / 1000, int(wait) / 1000)

    async def ping(self) -> None:
        await self._call("ping", self._client.ping)

    async def close(self) -> None:
        for client in (self._client, self._listener):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))  # Redis refuses an expiry of 0
