"""Maps a pool's `algorithm:` to its Strategy."""

from collections.abc import Callable, Sequence
from types import MappingProxyType

from loadweaver.balancing.base import Backend, Strategy
from loadweaver.balancing.round_robin import RoundRobin

STRATEGIES: MappingProxyType[str, Callable[[Sequence[Backend]], Strategy]] = MappingProxyType(
    {"round_robin": RoundRobin}
)


def create_strategy(algorithm: str, backends: Sequence[Backend]) -> Strategy:
    return STRATEGIES[algorithm](backends)
