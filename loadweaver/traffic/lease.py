"""How a node leases tokens from a cluster-wide bucket: batch sizes, pacing, capacity and credit.

The numbers, for a policy of `r` tokens per second and `burst`:

* Batch. A node asks for enough tokens to cover its observed demand for `horizon` seconds:
  `ceil(demand * horizon)`, between 1 and `batch_cap`. `horizon` is LEASE_HORIZON (0.25 s), or
  shorter at high rates, `MAX_BATCH / r` (0.1 s at r = 1000), so that the nodes' batches
  together fit in the shared bucket while the key is below its limit; but never below
  MIN_HORIZON (0.05 s), or at very high limits a node's batch would shrink to one token and
  every request would cost a call. So a busy node calls a few times per second per key (about
  `1 / horizon`, 10/s at r = 1000), and one call serves up to MAX_BATCH requests.
* Capacity. The shared bucket holds `max(burst, batch_cap)` where `batch_cap = min(MAX_BATCH,
  ceil(r * LEASE_HORIZON))`. With only `burst` (often 1) a bucket polled a few times a second
  would overflow and lose most of its refill, and could never fill a batch. The price: the
  instantaneous cluster-wide burst is up to `batch_cap` (100 requests, 0.1 s of traffic, at
  r = 1000; a quarter second of traffic below r = 400) even when `burst` is smaller. The
  long-run rate is exact: whatever the batches, no more than `capacity + r * t` tokens leave
  the bucket in `t` seconds.
* Pacing. When the shared bucket cannot fill a request (the key is at its limit), the node
  waits `PACE * min(horizon, capacity / r)` (or until the bucket's next token, if later)
  before asking again, instead of polling an empty bucket. Tokens accumulate meanwhile (at
  most `PACE * capacity`, so none overflow), and the next call brings back a batch. With N
  nodes saturating a key, the store sees about N calls per `PACE * capacity` admitted requests
  (3 per 80 at r = 1000).
* Credit. A node out of tokens for a key may still admit while the shared bucket, as last
  reported and refilled since, should hold tokens beyond what the node already owes: it runs
  into debt, up to `credit = min(burst, CREDIT_MAX)`, and repays it from the next grant (the
  refill asks for the debt on top of the batch; a key dropped as idle repays its debt then).
  A new key starts with the bucket assumed full, so its first requests, and a burst above the
  observed rate, are not refused while a lease is on its way. A debt only delays later
  admissions: at most `credit` tokens per node are outstanding, so the cluster over-admits by
  at most `N * credit` at any instant, and in the long run only by debts the store was down
  to collect.
"""

import math
from dataclasses import dataclass

from loadweaver.config.models import RateLimitPolicy

LEASE_HORIZON = 0.25  # seconds of a node's demand one batch covers, at low and moderate rates
MIN_HORIZON = 0.05  # ... and at least this long at any rate
MAX_BATCH = 100  # tokens per call at most: bounds what an idle node can strand
PACE = 0.8  # of a horizon between calls when the shared bucket is dry; < 1 so it cannot overflow
CREDIT_MAX = 8  # tokens a node may admit on credit before its lease arrives
LOW_WATER_FRACTION = 4  # refill when a quarter of the batch is left: covers the round trip
IDLE_TTL_MARGIN = 10.0  # seconds the shared bucket outlives the time it needs to refill fully


@dataclass(frozen=True, slots=True)
class LeasePlan:
    rate: float  # tokens per second, cluster-wide
    burst: int
    horizon: float
    batch_cap: int
    capacity: int
    credit: int

    @classmethod
    def for_policy(cls, policy: RateLimitPolicy) -> "LeasePlan":
        rate = policy.per_second
        burst = max(1, policy.burst)
        batch_cap = max(1, min(MAX_BATCH, math.ceil(rate * LEASE_HORIZON)))
        return cls(
            rate=rate,
            burst=burst,
            horizon=min(LEASE_HORIZON, max(MIN_HORIZON, MAX_BATCH / rate)),
            batch_cap=batch_cap,
            capacity=max(burst, batch_cap),
            credit=min(burst, CREDIT_MAX),
        )

    def batch(self, demand: float) -> int:
        """Tokens to hold for a node that sees `demand` requests per second."""
        return max(1, min(self.batch_cap, math.ceil(demand * self.horizon)))

    @staticmethod
    def low_water(batch: int) -> int:
        """Refill once the stock is down to this."""
        return batch // LOW_WATER_FRACTION

    @property
    def dry_pause(self) -> float:
        """Seconds to wait after the shared bucket could not fill a request."""
        return PACE * min(self.horizon, self.capacity / self.rate)

    @property
    def idle_ttl(self) -> float:
        """How long the shared bucket outlives its last call. Longer than a refill from empty,
        so its expiry (which resets it to full) never hands out tokens it would not have had."""
        return self.capacity / self.rate + IDLE_TTL_MARGIN
