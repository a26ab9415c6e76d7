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


# Only these failures can be a password guess: the response (or, inside TLS, the Basic
# password) was checked against a secret (or would have been, for a name that does not
# exist), or a captured header was replayed. Basic on plain text (never verified), a
# malformed header, a stale or forged nonce, a wrong realm or uri
# reveal nothing, so they cost no tokens: a misconfigured client behind a shared NAT
# address must not lock its colleagues out.
GUESSES = frozenset({"bad_response", "bad_password", "unknown_user", "replay"})


@dataclass(frozen=True)
class ThrottleLimits:
    per_source: BucketSpec  # every guess from one address, whatever the user name
    per_user: BucketSpec  # guesses at one user name from one address
    per_user_total: BucketSpec  # guesses at one user name from everywhere: a high ceiling


class LoginThrottle:
    """The three buckets a guess costs a token from.

    A user's own bucket is per source address, so a stranger guessing at `alice` from
    elsewhere exhausts only their own; the per-user total is a much higher ceiling
    against a guesser spread over many addresses.
    """

    def __init__(self, limits: ThrottleLimits) -> None:
        self.per_source = FailureThrottle(limits.per_source)
        self.per_user = FailureThrottle(limits.per_user)
        self.per_user_total = FailureThrottle(limits.per_user_total)

    def update(self, limits: ThrottleLimits) -> None:
        """A reload changes the limits; what was counted stays."""
        self.per_source.spec = limits.per_source
        self.per_user.spec = limits.per_user
        self.per_user_total.spec = limits.per_user_total

    def throttled(self, source: str, user: str | None, now: float) -> bool:
        if self.per_source.throttled(source, now):
            return True
        if user is None:
            return False
        return self.per_user.throttled(_user_at(user, source), now) or (
            self.per_user_total.throttled(user, now)
        )

    def failed(self, source: str, user: str | None, reason: str, now: float) -> None:
        if reason not in GUESSES:
            return
        self.per_source.failed(source, now)
        if user is not None:
            self.per_user.failed(_user_at(user, source), now)
            self.per_user_total.failed(user, now)


def _user_at(user: str, source: str) -> str:
    return f"{user}\0{source}"  # NUL: never part of a user name or an address
