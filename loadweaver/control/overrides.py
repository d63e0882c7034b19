"""How file config and API changes compose.

The file (with its environment layers) is the base. The API owns whole parts of the dynamic
config: single pools and the route list. An API-owned part replaces the file's version of it for as
long as the file's version stays what it was when the API took the part over; when an operator
edits that part of the file, a reload or restart gives it back to the file. Editing other parts of
the file leaves the API's changes alone.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from loadweaver.cluster.state import Override, StoredConfig, fingerprint
from loadweaver.config.models import Pool, Route
from loadweaver.config.sources import API, with_owner


@dataclass(frozen=True)
class Composition:
    data: dict[str, Any]  # the effective config, as data to validate
    api_pools: frozenset[str]  # pools whose definition (or deletion) came from the API
    api_routes: bool
    stored: StoredConfig  # the overrides still in force: those the file took back are gone
    reclaimed: tuple[str, ...]  # parts the file took back, for the log

    def sources(self, file_sources: Mapping[str, str]) -> dict[str, str]:
        sources = dict(file_sources)
        for name in sorted(self.api_pools):
            sources = with_owner(sources, f"pools.{name}", API)
        if self.api_routes:
            sources = with_owner(sources, "routes", API)
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
    routes = stored.routes
    if routes is not None and routes.file_fingerprint != fingerprint(data.get("routes")):
        reclaimed.append("routes")
        routes = None
    if routes is not None:
        data["routes"] = routes.definition
    return Composition(
        data=data,
        api_pools=frozenset(kept),
        api_routes=routes is not None,
        stored=StoredConfig(version=stored.version, pools=kept, routes=routes),
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
    routes = stored.routes
    new_routes = after.get("routes")
    if not _same_routes(new_routes, before.get("routes")):
        file_routes = file_data.get("routes")
        same_as_file = _same_routes(new_routes, file_routes)
        routes = None if same_as_file else Override(new_routes, fingerprint(file_routes))
    return StoredConfig(version=stored.version, pools=pools, routes=routes)


def _same_pool(one: Any, other: Any) -> bool:
    """Equal in meaning: `weight: 1` written out is the same as the default left unset."""
    same: bool = _normal(Pool, one) == _normal(Pool, other)
    return same


def _same_routes(one: Any, other: Any) -> bool:
    return [_normal(Route, route) for route in one or []] == [
        _normal(Route, route) for route in other or []
    ]


def _normal(model: type[BaseModel], value: Any) -> Any:
    if value is None:
        return None
    try:
        return model.model_validate(value).model_dump(mode="json")
    except ValidationError:
        return value  # invalid either way: the config validation that follows reports it
