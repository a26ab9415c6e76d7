"""Token buckets for failed authentications, per source address and per user name. Sans-IO.

Each failure takes a token; a key with no token left is throttled until the bucket refills
at `per_minute`. Only failures cost tokens, so a client that logs in right is never slowed.
Memory is bounded: at `max_keys` the least recently failed key is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketSpec:
    burst: int  # failures allowed in a row
    per_minute: float  # failures forgiven per minute


class FailureThrottle:
    def __init__(self, spec: BucketSpec, max_keys: int = 100_000) -> None:
        self.spec = spec
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t)

    def _tokens(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(self.spec.burst), now))
        refill = (now - then) * self.spec.per_minute / 60
        return min(float(self.spec.burst), tokens + max(0.0, refill))

    def throttled(self, key: str, now: float) -> bool:
        return key in self._buckets and self._tokens(key, now) < 1

    def failed(self, key: str, now: float) -> None:
        tokens = max(0.0, self._tokens(key, now) - 1)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
