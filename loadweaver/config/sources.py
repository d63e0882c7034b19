"""Which layer each configured value came from, for `config show` and `GET /api/v1/config`.

A value is named by its dotted path (`pools.app.algorithm`); a list is one value (`listeners`).
Paths absent from the map hold their built-in defaults.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

DEFAULT = "default"
ENVIRONMENT = "environment"
DOTENV = ".env"
API = "api"


def leaf_paths(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from leaf_paths(value, f"{path}.")
        else:
            yield path


def value_sources(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """`layers` lowest precedence first: each later layer's values replace the earlier ones'."""
    sources: dict[str, str] = {}
    for name, data in layers:
        for path in leaf_paths(data):
            sources[path] = name
    return dict(sorted(sources.items()))


def with_owner(sources: Mapping[str, str], prefix: str, owner: str) -> dict[str, str]:
    """Every value under `prefix` replaced by one entry: `prefix` came from `owner`."""
    kept = {
        path: source
        for path, source in sources.items()
        if path != prefix and not path.startswith(f"{prefix}.")
    }
    kept[prefix] = owner
    return dict(sorted(kept.items()))
