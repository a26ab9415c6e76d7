"""When each grant was last used, sans-IO: which grants a finished request used, and the
last-use file's format (JSON, `{"user": {"alice": 1733380000.0}, "trusted_source": …}`).

A proxy user is used by a request it authenticated that was allowed; a trusted source by
an allowed request from one of its addresses while it is in force. Jump accounts are not
here: sshd records no login for a session without a terminal (`ssh -J`, `-W`, the nc
gate), so proxyd cannot tell when one was last used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import netaddr

from proxy.core.accesslog import AccessRecord
from proxy.core.policy import TrustedSource

KINDS = ("user", "trusted_source")
Uses = dict[tuple[str, str], float]  # (kind, name) -> when, seconds since the epoch


def uses_of(record: AccessRecord, allowed: bool, trusted: Iterable[TrustedSource]) -> Uses:
    if not allowed:
        return {}
    uses: Uses = {}
    if record.auth == "ok" and record.user:
        uses["user", record.user] = record.time
    try:
        client = netaddr.IPAddress(record.client)
    except (netaddr.AddrFormatError, ValueError):
        return uses
    for source in trusted:
        if source.covers(client, record.time):
            uses["trusted_source", source.name] = record.time
    return uses


def merge(*all_uses: Mapping[tuple[str, str], float]) -> Uses:
    """The latest use of each grant across several records of it (workers, a file)."""
    merged: Uses = {}
    for uses in all_uses:
        merge_into(merged, uses)
    return merged


def merge_into(target: Uses, uses: Mapping[tuple[str, str], float]) -> None:
    for key, when in uses.items():
        target[key] = max(when, target.get(key, when))


def format_uses(uses: Mapping[tuple[str, str], float]) -> bytes:
    by_kind: dict[str, dict[str, float]] = {}
    for (kind, name), when in sorted(uses.items()):
        by_kind.setdefault(kind, {})[name] = when
    return json.dumps(by_kind, indent=1).encode()


def parse_uses(data: bytes) -> Uses:
    """ValueError when `data` is not a last-use file; unknown kinds are left out (a newer
    proxyd may know more), and a name or time of the wrong type is an error."""
    try:
        by_kind = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(by_kind, dict):
        raise ValueError("not a JSON object")
    uses: Uses = {}
    for kind in KINDS:
        names = by_kind.get(kind, {})
        if not isinstance(names, dict):
            raise ValueError(f"{kind}: not a JSON object")
        for name, when in names.items():
            if isinstance(when, bool) or not isinstance(when, int | float):
                raise ValueError(f"{kind} {name!r}: not a time")
            if not math.isfinite(when):
                raise ValueError(f"{kind} {name!r}: not a time")
            uses[kind, name] = float(when)
    return uses
