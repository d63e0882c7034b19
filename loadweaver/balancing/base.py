"""The Strategy interface, after HAProxy's `struct lb_ops` and Envoy's `chooseHost`."""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from loadweaver.config.addresses import UpstreamAddress

if TYPE_CHECKING:
    from loadweaver.pool.pool import UpstreamPool


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    """One backend as a snapshot sees it; identity, not value, makes two backends equal."""

    name: str
    pool_name: str
    address: UpstreamAddress
    weight: int
    connections: "UpstreamPool"

    def __repr__(self) -> str:
        return f"Backend({self.pool_name}/{self.name} {self.address.authority})"


@dataclass(frozen=True, slots=True)
class NoBackend:
    """Why a pick found nothing; the proxy answers 503 with this reason."""

    reason: str


@dataclass(slots=True)
class PickContext:
    client_ip: str


class Strategy(Protocol):
    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        """A backend for this request, skipping those in `avoid` (the ones a retry failed on)."""

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        """The pool's backend set or weights changed."""

    def on_acquire(self, backend: Backend) -> None:
        """A request started on `backend`."""

    def on_release(self, backend: Backend) -> None:
        """A request on `backend` finished."""
