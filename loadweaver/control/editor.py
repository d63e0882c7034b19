"""The internal API for changing the dynamic config at runtime; the admin API and CLI call it.

Every change edits the effective config as data, records the parts it touched as API overrides,
and hands them to the node, which composes, validates and swaps in a new snapshot. A change is
all-or-nothing: a request in flight keeps the snapshot it started with, and a removed backend's
idle connections close while its in-flight requests finish.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loadweaver.cluster.state import StoredConfig
from loadweaver.cluster.store import StoreError, VersionConflictError
from loadweaver.config.loader import ConfigError, validate_config
from loadweaver.config.models import Config
from loadweaver.control.errors import NodeStartError
from loadweaver.control.overrides import compose, record_changes
from loadweaver.control.redaction import RedactionError, restore_secrets
from loadweaver.control.snapshot import Snapshot

BACKEND_FIELDS = frozenset({"weight", "state", "backup", "max_connections", "slow_start"})


class EditError(Exception):
    """A change was refused; `status` is what an HTTP API should answer (404, 409, 412, 422)."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []

    def __str__(self) -> str:
        return "; ".join([self.message, *self.problems]) if self.problems else self.message


@dataclass(frozen=True)
class EditState:
    """What a change starts from."""

    effective: Config
    base_data: dict[str, Any]  # the file layer the API's overrides compose over
    stored: StoredConfig
    version: int  # the cluster config version `stored` has


Edit = Callable[[dict[str, Any]], None]


ATTEMPTS = 3  # a write that loses a race re-reads the cluster config and tries again


class ConfigEditor:
    def __init__(
        self,
        state: Callable[[], EditState],
        commit: Callable[[StoredConfig, int], Awaitable[Snapshot]],
        resync: Callable[[], Awaitable[object]],
        lock: asyncio.Lock,
    ) -> None:
        """`commit(stored, expected_version)` writes to the store and applies; it must be called
        with `lock` held, which also covers the read before it. `resync` catches up with the
        store after another node won a race."""
        self._state = state
        self._commit = commit
        self._resync = resync
        self._lock = lock

    async def add_backend(
        self, pool: str, backend: dict[str, Any], if_match: int | None = None
    ) -> Snapshot:
        """Adds `backend` (the YAML shape: name, url, weight...) to `pool`."""

        def add(data: dict[str, Any]) -> None:
            backends = _backends(data, pool)
            name = backend.get("name")
            if any(existing["name"] == name for existing in backends):
                raise EditError(409, f"pool {pool!r} already has a backend named {name!r}")
            backends.append(dict(backend))

        return await self.change(add, if_match)

    async def remove_backend(self, pool: str, name: str, if_match: int | None = None) -> Snapshot:
        def remove(data: dict[str, Any]) -> None:
            backends = _backends(data, pool)
            _find(backends, pool, name)
            data["pools"][pool]["backends"] = [b for b in backends if b["name"] != name]

        return await self.change(remove, if_match)

    async def update_backend(
        self, pool: str, name: str, if_match: int | None = None, **changes: Any
    ) -> Snapshot:
        """Changes weight, state, backup, max_connections or slow_start of one backend."""
        unknown = set(changes) - BACKEND_FIELDS
        if unknown:
            raise EditError(422, f"cannot change {', '.join(sorted(unknown))} of a backend")

        def update(data: dict[str, Any]) -> None:
            _find(_backends(data, pool), pool, name).update(changes)

        return await self.change(update, if_match)

    async def set_weight(
        self, pool: str, name: str, weight: int, if_match: int | None = None
    ) -> Snapshot:
        return await self.update_backend(pool, name, if_match, weight=weight)

    async def drain(self, pool: str, name: str, if_match: int | None = None) -> Snapshot:
        """No new requests or sessions; requests in flight and pinned sessions may finish."""
        return await self.update_backend(pool, name, if_match, state="draining")

    async def replace_dynamic(
        self,
        pools: dict[str, Any],
        routes: list[Any],
        rate_limits: dict[str, Any] | None = None,
        if_match: int | None = None,
    ) -> Snapshot:
        """Replaces every pool and route (and the rate limits, when given): PUT /api/v1/config."""
        return await self.change(_replacement(pools, routes, rate_limits), if_match)

    def preview_dynamic(
        self, pools: dict[str, Any], routes: list[Any], rate_limits: dict[str, Any] | None = None
    ) -> Config:
        """The config `replace_dynamic` would produce, validated but not applied."""
        state = self._state()
        before, after = _edited(state, _replacement(pools, routes, rate_limits))
        return _validated(state, before, after)[0]

    async def change(self, edit: Edit, if_match: int | None = None) -> Snapshot:
        """Read, edit, validate, write and apply as one step; a lost race is retried."""
        for _ in range(ATTEMPTS):
            async with self._lock:
                state = self._state()
                if if_match is not None and if_match != state.version:
                    raise _stale(state.version, if_match)
                before, after = _edited(state, edit)
                _, stored = _validated(state, before, after)
                try:
                    return await self._commit(stored, state.version)
                except VersionConflictError as error:
                    if error.found < state.version:
                        raise EditError(
                            503,
                            "the cluster store has lost its config (was it restarted without "
                            "persistence?); the leader is restoring it: retry in a few seconds",
                        ) from None
                    if if_match is not None:
                        raise _stale(error.found, if_match) from None
                except ConfigError as error:
                    raise EditError(422, "the change was rejected", error.problems) from None
                except NodeStartError as error:
                    raise EditError(422, str(error)) from None
                except StoreError as error:
                    raise EditError(503, f"the change was not made: {error}") from None
            await self._resync()  # another node wrote first: catch up, then edit again
        raise EditError(409, "the cluster config kept changing under this change; retry it")


def _stale(version: int, if_match: int) -> EditError:
    return EditError(
        412, f"the config is at version {version}, not {if_match}: read it again and retry"
    )


def _replacement(
    pools: dict[str, Any], routes: list[Any], rate_limits: dict[str, Any] | None
) -> Edit:
    def replace(data: dict[str, Any]) -> None:
        try:
            data["pools"] = restore_secrets(pools, data["pools"])
        except RedactionError as error:
            raise EditError(422, "the change was rejected", [str(error)]) from None
        data["routes"] = list(routes)
        if rate_limits is not None:
            data["rate_limits"] = dict(rate_limits)

    return replace


def _edited(state: EditState, edit: Edit) -> tuple[dict[str, Any], dict[str, Any]]:
    # Only what was set: defaults are re-derived, not frozen into the edited config.
    before = state.effective.model_dump(mode="json", exclude_unset=True)
    before.setdefault("pools", {})
    after = state.effective.model_dump(mode="json", exclude_unset=True)
    after.setdefault("pools", {})
    edit(after)
    return before, after


def _validated(
    state: EditState, before: dict[str, Any], after: dict[str, Any]
) -> tuple[Config, StoredConfig]:
    """Checks the edit by composing it exactly as the node will, so errors name the right paths;
    the config it makes, and the overrides that record it."""
    stored = record_changes(state.base_data, state.stored, before, after)
    try:
        return validate_config(compose(state.base_data, stored).data, "change"), stored
    except ConfigError as error:
        raise EditError(422, "the change was rejected", error.problems) from None


def _backends(data: dict[str, Any], pool: str) -> list[dict[str, Any]]:
    if pool not in data["pools"]:
        known = ", ".join(sorted(data["pools"])) or "none"
        raise EditError(404, f"no pool named {pool!r} (pools: {known})")
    backends: list[dict[str, Any]] = data["pools"][pool].setdefault("backends", [])
    return backends


def _find(backends: list[dict[str, Any]], pool: str, name: str) -> dict[str, Any]:
    for backend in backends:
        if backend["name"] == name:
            return backend
    raise EditError(404, f"pool {pool!r} has no backend named {name!r}")
