"""What the API changed, as a store keeps it: whole pools and the route list, each with an owner.

An API change to a pool stores the pool's full definition together with a fingerprint of what the
config file said about that pool at that moment. While the file still says the same, the stored
definition wins; once the file's definition changes, the file takes the pool back.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def fingerprint(value: object) -> str:
    """A stable digest of a JSON-able value; None (absent from the file) has one too."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Override:
    """One API-owned part: a pool's definition (None: deleted) or the route list."""

    definition: Any
    file_fingerprint: str  # the file's definition of the same part when the API took it over

    def to_json(self) -> dict[str, Any]:
        return {"definition": self.definition, "file_fingerprint": self.file_fingerprint}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Override":
        return cls(definition=data["definition"], file_fingerprint=str(data["file_fingerprint"]))


DYNAMIC_SECTIONS = ("pools", "routes", "rate_limits")  # what the cluster shares


@dataclass(frozen=True)
class StoredConfig:
    """The cluster's dynamic config: the leader's file layer (`base`) and the API's overrides.

    `version` rises with every write, whoever makes it; nodes report the version they applied.
    """

    version: int = 0
    pools: Mapping[str, Override] = field(default_factory=dict)
    routes: Override | None = None
    rate_limits: Override | None = None
    base: Mapping[str, Any] | None = None  # pools, routes, rate_limits as the leader's file says

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "version": self.version,
            "pools": {name: override.to_json() for name, override in self.pools.items()},
            "routes": self.routes.to_json() if self.routes is not None else None,
            "rate_limits": self.rate_limits.to_json() if self.rate_limits is not None else None,
            "base": dict(self.base) if self.base is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StoredConfig":
        """Raises ValueError (or KeyError/TypeError) on a record this version cannot read."""
        if data.get("format") != 1:
            raise ValueError(f"unknown state format {data.get('format')!r} (expected 1)")
        routes, rate_limits = data.get("routes"), data.get("rate_limits")
        base = data.get("base")
        return cls(
            version=int(data["version"]),
            pools={name: Override.from_json(item) for name, item in data["pools"].items()},
            routes=Override.from_json(routes) if routes is not None else None,
            rate_limits=Override.from_json(rate_limits) if rate_limits is not None else None,
            base=dict(base) if base is not None else None,
        )
