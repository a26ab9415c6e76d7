"""The state of a grant, sans-IO: active, expiring (soon), expired or locked."""

from __future__ import annotations

EXPIRING_WITHIN = 14 * 86400.0  # seconds: what "expiring" means by default
STATES = ("active", "expiring", "expired", "locked")


def state_of(
    expires: float | None, locked: bool, now: float, within: float = EXPIRING_WITHIN
) -> str:
    if locked:
        return "locked"
    if expires is not None and now >= expires:
        return "expired"
    if expires is not None and expires - now <= within:
        return "expiring"
    return "active"
