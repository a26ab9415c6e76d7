"""Audit records of grant changes, sans-IO: one JSON object per change, no secrets.

Every kind of grant (a proxy user, a jump account, a trusted source) writes the same
shape, after the-bastion's `acl` lines: when, who ran it, what kind, what was done to
which name, then the grant's own facts (owner, reason, expiry, groups, key fingerprint).
Passwords, hashes and keys themselves never appear.
"""

from __future__ import annotations

import datetime

from proxy.core.digest import UserSecrets
from proxy.core.policy import TrustedSource
from proxy.core.users import format_date


def grant_record(
    kind: str, action: str, name: str, operator: str, when: float, **details: str | None
) -> dict[str, str]:
    """`details` that are None are left out (a fact this change does not know)."""
    record = {
        "time": iso_instant(when),
        "operator": operator,
        "kind": kind,
        "action": action,
        "name": name,
    }
    record.update({key: value for key, value in details.items() if value is not None})
    return record


def user_record(
    action: str, name: str, user: UserSecrets | None, operator: str, when: float
) -> dict[str, str]:
    """A proxy user's change; `user` as it is after the change (None once removed)."""
    if user is None:
        return grant_record("user", action, name, operator, when)
    return grant_record(
        "user",
        action,
        name,
        operator,
        when,
        reason=user.note or None,
        expires=format_date(user.expires) if user.expires is not None else "never",
        groups=",".join(user.groups) or None,
        locked="true" if user.locked else None,
        owner=user.owner or None,
        created_by=user.created_by or None,
        created_at=iso_instant(user.created_at) if user.created_at is not None else None,
    )


def iso_instant(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")


def trusted_record(
    action: str, source: TrustedSource, operator: str, when: float, via: str
) -> dict[str, str]:
    """A trusted source's change, noticed by the proxy (`via`: the config at start, a
    reload, or the clock for an expiry): the config file is edited by hand, so who edited
    it is not known; `operator` is the proxy's own user."""
    return grant_record(
        "trusted_source",
        action,
        source.name,
        operator,
        when,
        cidr=str(source.network),
        owner=source.owner,
        reason=source.reason,
        expires=iso_instant(source.expires),
        via=via,
    )
