"""`proxyd grants`: every grant of every kind (proxy users, jump accounts, trusted
sources) with its state, owner, reason, expiry and last use, as a table or as JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from proxy.core import config
from proxy.core.grants import (
    EXPIRING_WITHIN,
    GrantView,
    parse_duration,
    trusted_view,
    user_view,
)
from proxy.core.jump import account_view
from proxy.core.lastuse import Uses
from proxy.effects.accounts import StateStore
from proxy.effects.lastusefile import LastUseFile
from proxy.effects.userfile import read_users


def add_parser(sub: Any) -> None:
    p = sub.add_parser("grants", help="list every grant: users, jump accounts, trusted sources")
    p.add_argument("--config", type=Path, default=config.DEFAULT_CONFIG)
    p.add_argument(
        "--expiring",
        metavar="DURATION",
        type=_duration,
        help="only grants that expire within DURATION (14d, 36h, 2w); also what 'expiring' means",
    )
    p.add_argument("--json", action="store_true", help="one JSON list (dates in ISO 8601, UTC)")
    p.set_defaults(func=run)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    now, within = time.time(), args.expiring or EXPIRING_WITHIN
    problems: list[str] = []
    uses = _last_uses(cfg, problems)
    grants = [
        user_view(user, uses.get(("user", user.name)), now, within)
        for user in read_users(cfg.auth.users_file).values()
    ]
    grants += [account_view(a, now, within) for a in _jump_accounts(cfg, problems)]
    grants += [
        trusted_view(source, uses.get(("trusted_source", source.name)), now, within)
        for source in cfg.trusted_sources
    ]
    if args.expiring is not None:
        grants = [g for g in grants if g.expiring_within(now, within)]
    grants.sort(key=lambda g: (g.kind, g.name))
    if args.json:
        print(json.dumps([_as_json(g) for g in grants], indent=1))
    else:
        _print_table(grants)
    for problem in problems:
        print(f"proxyd: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _last_uses(cfg: config.Config, problems: list[str]) -> Uses:
    if cfg.last_use_file is None:
        return {}
    try:
        return LastUseFile(cfg.last_use_file).read()
    except (OSError, ValueError) as e:
        problems.append(f"last use not shown: {e}")
        return {}


def _jump_accounts(cfg: config.Config, problems: list[str]) -> list[Any]:
    """The jump accounts on record; root's, so another user is told to ask root."""
    folder = cfg.jump.state_dir
    # glob() would see an unreadable folder as an empty one: ask first.
    if folder.exists() and not os.access(folder, os.R_OK | os.X_OK):
        problems.append(f"jump accounts not shown: {folder} is root's (run as root)")
        return []
    accounts, unreadable = StateStore(folder).all()
    problems.extend(str(e) for e in unreadable)
    return accounts


def _date(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).date().isoformat()


def _instant(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")


def _as_json(grant: GrantView) -> dict[str, Any]:
    return {
        "kind": grant.kind,
        "name": grant.name,
        "state": grant.state,
        "owner": grant.owner,
        "reason": grant.reason,
        "expires": _date(grant.expires)
        if grant.kind != "trusted_source"
        else _instant(grant.expires),
        "last_use": _instant(grant.last_use),
        **dict(grant.detail),
    }


def _print_table(grants: list[GrantView]) -> None:
    print(f"{'KIND':<15} {'NAME':<24} {'STATE':<9} {'EXPIRES':<11} {'LAST USE':<17} OWNER / REASON")
    for g in grants:
        last = _instant(g.last_use)
        shown = last[:16].replace("T", " ") if last else "-"
        about = " / ".join(part for part in (g.owner, g.reason) if part) or "-"
        print(
            f"{g.kind:<15} {g.name:<24} {g.state:<9} {_date(g.expires) or 'never':<11} "
            f"{shown:<17} {about}"
        )
