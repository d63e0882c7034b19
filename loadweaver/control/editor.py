"""The internal API for changing backends at runtime; the admin API and CLI call it.

Every change builds a new validated Config and swaps it in as a snapshot, so a change is
all-or-nothing: a request in flight keeps the snapshot it started with, and a removed backend's
idle connections close while its in-flight requests finish.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from loadweaver.config.loader import ConfigError, build_config
from loadweaver.config.models import Config
from loadweaver.control.errors import NodeStartError
from loadweaver.control.snapshot import Snapshot


class EditError(Exception):
    """A change was refused; `status` is what an HTTP API should answer (404, 409, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BackendEditor:
    def __init__(
        self,
        current: Callable[[], Config],
        apply: Callable[[Config], Awaitable[Snapshot]],
        lock: asyncio.Lock,
    ) -> None:
        """`apply` must be called with `lock` held; the lock also covers the read before it."""
        self._current = current
        self._apply = apply
        self._lock = lock

    async def add_backend(self, pool: str, backend: dict[str, Any]) -> Snapshot:
        """Adds `backend` (the YAML shape: name, url, weight...) to `pool`."""

        def add(data: dict[str, Any]) -> None:
            backends = self._backends(data, pool)
            name = backend.get("name")
            if any(existing["name"] == name for existing in backends):
                raise EditError(409, f"pool {pool!r} already has a backend named {name!r}")
            backends.append(dict(backend))

        return await self._change(add)

    async def remove_backend(self, pool: str, name: str) -> Snapshot:
        def remove(data: dict[str, Any]) -> None:
            backends = self._backends(data, pool)
            self._find(backends, pool, name)
            data["pools"][pool]["backends"] = [b for b in backends if b["name"] != name]

        return await self._change(remove)

    async def update_backend(self, pool: str, name: str, **changes: Any) -> Snapshot:
        """Changes weight, state, backup, max_connections or slow_start of one backend."""

        def update(data: dict[str, Any]) -> None:
            self._find(self._backends(data, pool), pool, name).update(changes)

        return await self._change(update)

    async def set_weight(self, pool: str, name: str, weight: int) -> Snapshot:
        return await self.update_backend(pool, name, weight=weight)

    async def drain(self, pool: str, name: str) -> Snapshot:
        """No new requests or sessions; requests in flight and pinned sessions may finish."""
        return await self.update_backend(pool, name, state="draining")

    async def _change(self, edit: Callable[[dict[str, Any]], None]) -> Snapshot:
        """Read, edit, validate and apply as one step: concurrent changes cannot interleave."""
        async with self._lock:
            # Only what was set: defaults are re-derived, not frozen into the edited config.
            data = self._current().model_dump(mode="json", exclude_unset=True)
            data.setdefault("pools", {})
            edit(data)
            try:
                return await self._apply(build_config(data, "change"))
            except ConfigError as error:
                raise EditError(422, "; ".join(error.problems)) from None
            except NodeStartError as error:
                raise EditError(422, str(error)) from None

    def _backends(self, data: dict[str, Any], pool: str) -> list[dict[str, Any]]:
        if pool not in data["pools"]:
            known = ", ".join(sorted(data["pools"])) or "none"
            raise EditError(404, f"no pool named {pool!r} (pools: {known})")
        backends: list[dict[str, Any]] = data["pools"][pool].setdefault("backends", [])
        return backends

    def _find(self, backends: list[dict[str, Any]], pool: str, name: str) -> dict[str, Any]:
        for backend in backends:
            if backend["name"] == name:
                return backend
        raise EditError(404, f"pool {pool!r} has no backend named {name!r}")
