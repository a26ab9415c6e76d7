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


DAY = 86400.0


def checked_expiry(expires: float | None, reason: str, now: float, max_days: int) -> float | None:
    """The expiry a new or renewed grant may have under `grants.max_lifetime`; ValueError
    saying why not. `expires` None is a grant without expiry: it needs a reason."""
    if expires is None:
        if not reason.strip():
            raise ValueError(
                "a grant without expiry (--no-expiry, never) needs a reason (--reason)"
            )
        return None
    if expires <= now:
        raise ValueError("the expiry date has passed already")
    # A date is the first day refused: a grant may run through the day max_days from now.
    if expires > now + (max_days + 1) * DAY:
        raise ValueError(
            f"the expiry is more than grants.max_lifetime ({max_days} days) away: "
            "grant for less time, renew later"
        )
    return expires
