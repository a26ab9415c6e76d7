"""Grants of every kind, sans-IO: their state (active, expiring soon, expired, locked),
lifetimes within grants.max_lifetime, what changed and expired between two looks, and one
view of each for `proxyd grants`."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import netaddr

from proxy.core.digest import UserSecrets
from proxy.core.policy import TrustedSource

DAY = 86400.0
EXPIRING_WITHIN = 14 * DAY  # seconds: what "expiring" means by default
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


def expired_between(
    expiries: Iterable[tuple[str, float | None]], since: float, now: float
) -> list[str]:
    """The names whose expiry fell in (since, now]: each expiry is noticed once, by the
    look that first sees it passed."""
    return [name for name, expires in expiries if expires is not None and since < expires <= now]


def trusted_changes(
    before: Iterable[TrustedSource], after: Iterable[TrustedSource]
) -> list[tuple[str, TrustedSource]]:
    """What changed between two configs' trusted sources, by name: add, remove, renew (a
    new expiry) or change (a new cidr, owner or reason), in name order."""
    old = {source.name: source for source in before}
    new = {source.name: source for source in after}
    changes: list[tuple[str, TrustedSource]] = []
    for name in sorted(old.keys() | new.keys()):
        was, now = old.get(name), new.get(name)
        if was is None and now is not None:
            changes.append(("add", now))
        elif now is None and was is not None:
            changes.append(("remove", was))
        elif was is not None and now is not None and was != now:
            same_but_expiry = dataclasses.replace(was, expires=now.expires) == now
            changes.append(("renew" if same_but_expiry else "change", now))
    return changes


def format_trusted(sources: Iterable[TrustedSource]) -> bytes:
    """The trusted sources the proxy last saw (to tell, at the next start, what changed
    in the config while it was down)."""
    rows = [
        {
            "name": s.name,
            "cidr": str(s.network),
            "owner": s.owner,
            "reason": s.reason,
            "expires": s.expires,
        }
        for s in sources
    ]
    return json.dumps(rows, indent=1).encode()


def parse_trusted(data: bytes) -> tuple[TrustedSource, ...]:
    """ValueError when `data` is not what format_trusted wrote."""
    try:
        rows = json.loads(data)
        return tuple(
            TrustedSource(
                str(row["name"]),
                netaddr.IPNetwork(str(row["cidr"])),
                str(row["owner"]),
                str(row["reason"]),
                float(row["expires"]),
            )
            for row in rows
        )
    except (
        UnicodeDecodeError,
        json.JSONDecodeError,
        RecursionError,
        TypeError,
        KeyError,
        ValueError,
        netaddr.AddrFormatError,
    ) as e:
        raise ValueError(f"not a list of trusted sources: {e!r}") from None


@dataclass(frozen=True)
class GrantView:
    """One grant of any kind, as `proxyd grants` shows it."""

    kind: str  # user, jump, trusted_source
    name: str
    state: str  # STATES
    owner: str
    reason: str
    expires: float | None
    last_use: float | None  # None: not used since last use is kept, or not known (jump)
    detail: tuple[tuple[str, str], ...] = ()  # groups, cidr, profile, key

    def expiring_within(self, now: float, within: float) -> bool:
        return self.expires is not None and now < self.expires <= now + within


def user_view(user: UserSecrets, last_use: float | None, now: float, within: float) -> GrantView:
    return GrantView(
        "user",
        user.name,
        state_of(user.expires, user.locked, now, within),
        user.owner,
        user.note,
        user.expires,
        last_use,
        (("groups", ",".join(user.groups)),) if user.groups else (),
    )


def trusted_view(
    source: TrustedSource, last_use: float | None, now: float, within: float
) -> GrantView:
    return GrantView(
        "trusted_source",
        source.name,
        state_of(source.expires, False, now, within),
        source.owner,
        source.reason,
        source.expires,
        last_use,
        (("cidr", str(source.network)),),
    )


_UNITS = {"h": 3600.0, "d": DAY, "w": 7 * DAY}


def parse_duration(text: str) -> float:
    """`14d`, `36h`, `2w` or a number of days, in seconds; ValueError else."""
    match = re.fullmatch(r"([0-9]{1,5})([hdw]?)", text.strip())
    if match is None:
        raise ValueError(f"not a duration like 14d, 36h or 2w: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or "d"]
