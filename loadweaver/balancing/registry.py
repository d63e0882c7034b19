"""Maps a pool's `algorithm:` to its Strategy, wrapped for backups and stickiness as configured."""

from collections.abc import Callable, Sequence
from types import MappingProxyType

from loadweaver.balancing.base import Backend, Strategy
from loadweaver.balancing.ip_hash import IpHash
from loadweaver.balancing.least_conn import LeastConn
from loadweaver.balancing.random_choice import PowerOfTwo, RandomChoice
from loadweaver.balancing.round_robin import RoundRobin
from loadweaver.balancing.sticky import SessionTable, Sticky, StickyPolicy
from loadweaver.balancing.tiers import WithBackups

StrategyFactory = Callable[[Sequence[Backend]], Strategy]

STRATEGIES: MappingProxyType[str, StrategyFactory] = MappingProxyType(
    {
        "round_robin": RoundRobin,
        "least_conn": LeastConn,
        "ip_hash": IpHash,
        "random": RandomChoice,
        "p2c": PowerOfTwo,
    }
)


def create_strategy(
    algorithm: str,
    backends: Sequence[Backend],
    sticky: StickyPolicy | None = None,
    sessions: SessionTable | None = None,
) -> Strategy:
    """The pool's strategy; pools without backups or stickiness get the bare algorithm."""
    make = STRATEGIES[algorithm]
    strategy: Strategy
    if any(backend.backup for backend in backends):
        strategy = WithBackups(backends, make)
    else:
        strategy = make(backends)
    if sticky is not None:
        strategy = Sticky(strategy, sticky, sessions, backends)
    return strategy
