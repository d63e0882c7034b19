"""Maps a pool's `algorithm:` to its Strategy."""

from collections.abc import Callable, Sequence

from loadweaver.balancing.base import Backend, Strategy
from loadweaver.balancing.round_robin import RoundRobin

STRATEGIES: dict[str, Callable[[Sequence[Backend]], Strategy]] = {
    "round_robin": RoundRobin,
}


def create_strategy(algorithm: str, backends: Sequence[Backend]) -> Strategy:
    return STRATEGIES[algorithm](backends)
