"""A node's numbers at one instant, as alert rules read them: cumulative counters and gauges.

A node samples one every alert interval and shares the latest with the cluster in its heartbeat,
so the leader can take increases over a window for every node, the same way Prometheus' rate()
reads counters, restarts included.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadweaver.observability.request_tally import STATUS_CLASSES


@dataclass(frozen=True)
class PoolNumbers:
    """One pool's cumulative counters; the pool "" holds responses no route matched."""

    responses: tuple[int, ...] = (0,) * STATUS_CLASSES  # by status // 100
    buckets: tuple[int, ...] = ()  # durations, not cumulative, the last past every bound
    upstream_errors: int = 0

    def plus(self, other: "PoolNumbers") -> "PoolNumbers":
        return PoolNumbers(
            _added(self.responses, other.responses),
            _added(self.buckets, other.buckets),
            self.upstream_errors + other.upstream_errors,
        )


@dataclass(frozen=True)
class Observation:
    time: float  # wall-clock seconds
    bounds: tuple[float, ...] = ()  # the duration buckets' upper bounds
    pools: Mapping[str, PoolNumbers] = field(default_factory=dict)
    rate_limited: int = 0
    reload_failures: int = 0
    connections: int = 0  # a gauge: open client connections now
    backends_down: tuple[tuple[str, str], ...] = ()  # gauges: (pool, backend) now down
    panic_pools: tuple[str, ...] = ()
    store_up: bool = True

    def to_record(self) -> dict[str, Any]:
        """Compact, for the heartbeat record."""
        return {
            "t": round(self.time, 3),
            "b": list(self.bounds),
            "p": {
                name: [list(pool.responses), list(pool.buckets), pool.upstream_errors]
                for name, pool in self.pools.items()
            },
            "rl": self.rate_limited,
            "rf": self.reload_failures,
            "c": self.connections,
            "bd": [list(pair) for pair in self.backends_down],
            "pp": list(self.panic_pools),
            "su": self.store_up,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Observation":
        """Raises ValueError on a record that is not one (it came from another node)."""
        try:
            pools = {
                str(name): PoolNumbers(_ints(numbers[0]), _ints(numbers[1]), int(numbers[2]))
                for name, numbers in dict(record["p"]).items()
            }
            return cls(
                time=float(record["t"]),
                bounds=tuple(float(bound) for bound in record["b"]),
                pools=pools,
                rate_limited=int(record["rl"]),
                reload_failures=int(record["rf"]),
                connections=int(record["c"]),
                backends_down=tuple((str(pool), str(name)) for pool, name in record["bd"]),
                panic_pools=tuple(str(pool) for pool in record["pp"]),
                store_up=bool(record["su"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"not an observation record: {error}") from None


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(value) for value in values)


def _added(left: tuple[int, ...], right: tuple[int, ...]) -> tuple[int, ...]:
    if len(left) < len(right):
        left, right = right, left
    return tuple(a + (right[index] if index < len(right) else 0) for index, a in enumerate(left))
