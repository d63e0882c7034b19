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
from loadweaver.cluster.store import StoreError
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
    file_config: Config
    stored: StoredConfig
    version: int


Edit = Callable[[dict[str, Any]], None]


class ConfigEditor:
    def __init__(
        self,
        state: Callable[[], EditState],
        apply: Callable[[StoredConfig], Awaitable[Snapshot]],
        lock: asyncio.Lock,
    ) -> None:
        """`apply` must be called with `lock` held; the lock also covers the read before it."""
        self._state = state
        self._apply = apply
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
        self, pools: dict[str, Any], routes: list[Any], if_match: int | None = None
    ) -> Snapshot:
        """Replaces every pool and route, as `PUT /api/v1/config` does."""
        return await self.change(_replacement(pools, routes), if_match)

    def preview_dynamic(self, pools: dict[str, Any], routes: list[Any]) -> Config:
        """The config `replace_dynamic` would produce, validated but not applied."""
        state = self._state()
        before, after = _edited(state, _replacement(pools, routes))
        return _validated(state, before, after)

    async def change(self, edit: Edit, if_match: int | None = None) -> Snapshot:
        """Read, edit, validate and apply as one step: concurrent changes cannot interleave."""
        async with self._lock:
            state = self._state()
            if if_match is not None and if_match != state.version:
                raise EditError(
                    412,
                    f"the config is at version {state.version}, not {if_match}: "
                    "read it again and retry",
                )
            before, after = _edited(state, edit)
            _validated(state, before, after)
            stored = record_changes(_file_data(state), state.stored, before, after)
            try:
                return await self._apply(stored)
            except ConfigError as error:
                raise EditError(422, "the change was rejected", error.problems) from None
            except NodeStartError as error:
                raise EditError(422, str(error)) from None
            except StoreError as error:
                raise EditError(500, f"the change is live but was not saved: {error}") from None


def _replacement(pools: dict[str, Any], routes: list[Any]) -> Edit:
    def replace(data: dict[str, Any]) -> None:
        try:
            data["pools"] = restore_secrets(pools, data["pools"])
        except RedactionError as error:
            raise EditError(422, "the change was rejected", [str(error)]) from None
        data["routes"] = list(routes)

    return replace


def _file_data(state: EditState) -> dict[str, Any]:
    return state.file_config.model_dump(mode="json", exclude_unset=True)


def _edited(state: EditState, edit: Edit) -> tuple[dict[str, Any], dict[str, Any]]:
    # Only what was set: defaults are re-derived, not frozen into the edited config.
    before = state.effective.model_dump(mode="json", exclude_unset=True)
    before.setdefault("pools", {})
    after = state.effective.model_dump(mode="json", exclude_unset=True)
    after.setdefault("pools", {})
    edit(after)
    return before, after


def _validated(state: EditState, before: dict[str, Any], after: dict[str, Any]) -> Config:
    """Checks the edit by composing it exactly as the node will, so errors name the right paths."""
    stored = record_changes(_file_data(state), state.stored, before, after)
    try:
        return validate_config(compose(_file_data(state), stored).data, "change")
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
