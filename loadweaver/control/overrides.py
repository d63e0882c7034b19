"""How file config and API changes compose.

The file layer is the base: the node's own file, or in a cluster the leader's file as published in
the store. The API owns whole parts of the dynamic config: single pools, the route list and the
rate-limit policies. An API-owned part replaces the base's version of it for as long as the base's
version stays what it was when the API took the part over; when an operator edits that part of the
file, a reload or restart gives it back to the file. Editing other parts leaves the API's alone.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import TypeAdapter, ValidationError

from loadweaver.cluster.state import Override, StoredConfig, fingerprint
from loadweaver.config.models import Pool, RateLimitPolicy, Route
from loadweaver.config.sources import API, with_owner

WHOLE_PARTS = ("routes", "rate_limits")  # owned as a whole, unlike pools, which go one by one


@dataclass(frozen=True)
class Composition:
    data: dict[str, Any]  # the effective config, as data to validate
    api_pools: frozenset[str]  # pools whose definition (or deletion) came from the API
    api_parts: frozenset[str]  # whole parts (routes, rate_limits) that came from the API
    stored: StoredConfig  # the overrides still in force: those the file took back are gone
    reclaimed: tuple[str, ...]  # parts the file took back, for the log

    @property
    def api_routes(self) -> bool:
        return "routes" in self.api_parts

    @property
    def has_overrides(self) -> bool:
        return bool(self.api_pools or self.api_parts)

    def sources(self, file_sources: Mapping[str, str]) -> dict[str, str]:
        sources = dict(file_sources)
        for name in sorted(self.api_pools):
            sources = with_owner(sources, f"pools.{name}", API)
        for part in sorted(self.api_parts):
            sources = with_owner(sources, part, API)
        return sources


def compose(file_data: Mapping[str, Any], stored: StoredConfig) -> Composition:
    data = dict(file_data)
    pools = dict(data.get("pools") or {})
    kept: dict[str, Override] = {}
    reclaimed: list[str] = []
    for name, override in stored.pools.items():
        if override.file_fingerprint != fingerprint(pools.get(name)):
            reclaimed.append(f"pools.{name}")
            continue
        kept[name] = override
        if override.definition is None:
            pools.pop(name, None)
        else:
            pools[name] = override.definition
    data["pools"] = pools
    wholes: dict[str, Override | None] = {}
    for part in WHOLE_PARTS:
        whole: Override | None = getattr(stored, part)
        if whole is not None and whole.file_fingerprint != fingerprint(data.get(part)):
            reclaimed.append(part)
            whole = None
        if whole is not None:
            data[part] = whole.definition
        wholes[part] = whole
    return Composition(
        data=data,
        api_pools=frozenset(kept),
        api_parts=frozenset(part for part, whole in wholes.items() if whole is not None),
        stored=replace(
            stored, pools=kept, routes=wholes["routes"], rate_limits=wholes["rate_limits"]
        ),
        reclaimed=tuple(reclaimed),
    )


def record_changes(
    file_data: Mapping[str, Any],
    stored: StoredConfig,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> StoredConfig:
    """The overrides once the effective data changed from `before` to `after` through the API.

    A part that ends up the same as the file's version of it goes back to the file.
    """
    file_pools = file_data.get("pools") or {}
    pools = dict(stored.pools)
    old_pools, new_pools = before.get("pools") or {}, after.get("pools") or {}
    for name in old_pools.keys() | new_pools.keys():
        definition = new_pools.get(name)
        if _same_pool(definition, old_pools.get(name)):
            continue
        if _same_pool(definition, file_pools.get(name)):
            pools.pop(name, None)
        else:
            pools[name] = Override(definition, fingerprint(file_pools.get(name)))
    wholes: dict[str, Override | None] = {}
    for part in WHOLE_PARTS:
        wholes[part] = getattr(stored, part)
        new = after.get(part)
        if not _same_part(part, new, before.get(part)):
            in_file = file_data.get(part)
            same_as_file = _same_part(part, new, in_file)
            wholes[part] = None if same_as_file else Override(new, fingerprint(in_file))
    return replace(stored, pools=pools, routes=wholes["routes"], rate_limits=wholes["rate_limits"])


def _same_pool(one: Any, other: Any) -> bool:
    """Equal in meaning: `weight: 1` written out is the same as the default left unset."""
    same: bool = _normal(_POOL, one) == _normal(_POOL, other)
    return same


def _same_part(part: str, one: Any, other: Any) -> bool:
    adapter = _ROUTES if part == "routes" else _RATE_LIMITS
    empty: Any = [] if part == "routes" else {}
    same: bool = _normal(adapter, one or empty) == _normal(adapter, other or empty)
    return same


_POOL = TypeAdapter(Pool)
_ROUTES = TypeAdapter(list[Route])
_RATE_LIMITS = TypeAdapter(dict[str, RateLimitPolicy])


def _normal(adapter: TypeAdapter[Any], value: Any) -> Any:
    if value is None:
        return None
    try:
        return adapter.dump_python(adapter.validate_python(value), mode="json")
    except ValidationError:
        return value  # invalid either way: the config validation that follows reports it
