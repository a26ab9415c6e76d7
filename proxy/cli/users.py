"""`proxyd users …`: the Digest users file, edited under a lock and written atomically 0600."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from passlib.apache import HtdigestFile

from proxy.core import config
from proxy.core.audit import user_record
from proxy.core.digest import UserSecrets
from proxy.core.errors import ConfigError
from proxy.core.grants import checked_expiry
from proxy.core.users import (
    MAX_PASSWORD,
    BadUserInput,
    check_note,
    check_owner,
    check_password,
    check_username,
    format_date,
    format_htdigest,
    make_user,
    parse_date,
)
from proxy.effects.audit import AuditLog, operator
from proxy.effects.files import atomic_write
from proxy.effects.userfile import edit_users, read_users

GENERATED_PASSWORD_BYTES = 18  # 24 characters of base64url


def add_parser(sub: Any) -> None:
    p = sub.add_parser("users", help="manage Digest users")
    p.add_argument("--config", type=Path, default=config.DEFAULT_CONFIG)
    users = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    for action, func, helptext in (
        ("add", run_add, "add a user"),
        ("passwd", run_passwd, "set a user's password"),
    ):
        q = users.add_parser(action, help=helptext)
        q.add_argument("name")
        source = q.add_mutually_exclusive_group()
        source.add_argument("--password-stdin", action="store_true", help="read it from stdin")
        source.add_argument("--generate", action="store_true", help="generate and print one")
        if action == "add":
            add_lifetime_arguments(q)
            q.add_argument(
                "--group",
                action="append",
                default=[],
                metavar="GROUP",
                help="a group the user is in (declared in the config's groups:); repeatable",
            )
        q.set_defaults(func=func)

    q = users.add_parser("renew", help="set a user's expiry date")
    q.add_argument("name")
    q.add_argument("--owner", help="a new owner; default: keep it")
    q.add_argument("--expires", metavar="DATE", required=True, help="YYYY-MM-DD, or 'never'")
    q.add_argument(
        "--note", "--reason", dest="note", help="the reason (needed with 'never'); default: keep"
    )
    q.set_defaults(func=run_renew)

    q = users.add_parser("groups", help="set the groups a user is in (none: no group)")
    q.add_argument("name")
    q.add_argument("group", nargs="*", help="groups declared in the config's groups:")
    q.set_defaults(func=run_groups)

    q = users.add_parser("remove", help="remove a user")
    q.add_argument("name")
    q.set_defaults(func=run_remove)

    q = users.add_parser("list", help="list users")
    q.set_defaults(func=run_list)

    q = users.add_parser("export", help="write the users as an htdigest file (MD5)")
    q.add_argument("--format", choices=["htdigest"], default="htdigest")
    q.add_argument("--output", type=Path, help="file to write (mode 0600); default stdout")
    q.set_defaults(func=run_export)

    q = users.add_parser("import", help="import an Apache htdigest file")
    q.add_argument("file", type=Path)
    q.add_argument("--replace", action="store_true", help="overwrite users that exist")
    add_lifetime_arguments(q)
    q.set_defaults(func=run_import)


def add_lifetime_arguments(q: argparse.ArgumentParser) -> None:
    """Every grant is for a time (within grants.max_lifetime) or says why not."""
    lifetime = q.add_mutually_exclusive_group(required=True)
    lifetime.add_argument("--expires", metavar="DATE", help="first day refused (YYYY-MM-DD)")
    lifetime.add_argument(
        "--no-expiry", action="store_true", help="no expiry date (needs --reason)"
    )
    q.add_argument(
        "--note", "--reason", dest="note", default="", help="why (partner, project, ticket)"
    )
    q.add_argument("--owner", help="the partner, organisation or person (default: the user)")


def lifetime(cfg: config.Config, expires: str | None, note: str) -> float | None:
    """The expiry of a grant, checked against grants.max_lifetime (None: no expiry)."""
    moment = parse_date(expires) if expires is not None and expires != "never" else None
    try:
        return checked_expiry(moment, note, time.time(), cfg.max_lifetime_days)
    except ValueError as e:
        raise BadUserInput(str(e)) from None


def read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated). Never from the command line, where `ps` would show it."""
    if args.generate:
        return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES), True
    if args.password_stdin:
        # All of stdin: a second line is an error (a stray newline), never silently dropped.
        data = sys.stdin.read(MAX_PASSWORD + 3)
        return check_password(data.removesuffix("\n").removesuffix("\r")), False
    if not sys.stdin.isatty():
        raise BadUserInput("no password: use --password-stdin or --generate")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise BadUserInput("the passwords differ")
    return check_password(first), False


def _set_password(args: argparse.Namespace, must_exist: bool) -> int:
    cfg = config.load(args.config)
    name = check_username(args.name)

    def precheck(users: dict[str, UserSecrets]) -> None:
        if must_exist and name not in users:
            raise BadUserInput(f"no such user: {name}")
        if not must_exist and name in users:
            raise BadUserInput(f"user exists: {name} (use `users passwd`)")

    note = check_note(getattr(args, "note", ""))
    expires = lifetime(cfg, args.expires, note) if not must_exist else None
    groups = check_groups(cfg, getattr(args, "group", []))
    # Check before asking for a password, then again under the lock.
    precheck(read_users(cfg.auth.users_file))
    password, generated = read_password(args)

    owner = check_owner(getattr(args, "owner", None), name)

    def change(users: dict[str, UserSecrets]) -> None:
        precheck(users)
        fresh = make_user(name, cfg.realm, password, expires, note)
        old = users.get(name)
        if old is not None:  # passwd keeps the grant as it is, but not a lock
            users[name] = dataclasses.replace(old, realm=fresh.realm, ha1=fresh.ha1, locked=False)
        else:
            users[name] = made_now(dataclasses.replace(fresh, groups=groups, owner=owner))

    change_users(cfg, change, "passwd" if must_exist else "add", [name])
    if generated:
        print(password)
    print(f"{'password set for' if must_exist else 'added'} {name}", file=sys.stderr)
    return 0


def made_now(user: UserSecrets) -> UserSecrets:
    """A new grant records who made it and when."""
    return dataclasses.replace(user, created_by=operator(), created_at=time.time())


def run_add(args: argparse.Namespace) -> int:
    return _set_password(args, must_exist=False)


def run_passwd(args: argparse.Namespace) -> int:
    return _set_password(args, must_exist=True)


def run_remove(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    name = check_username(args.name)

    def change(users: dict[str, UserSecrets]) -> None:
        if users.pop(name, None) is None:
            raise BadUserInput(f"no such user: {name}")

    change_users(cfg, change, "remove", [name])
    print(f"removed {name}", file=sys.stderr)
    return 0


def change_users(
    cfg: config.Config,
    change: Callable[[dict[str, UserSecrets]], None],
    action: str,
    names: list[str],
) -> None:
    """Edit the users file, then write one audit line per user changed (no secrets). A
    change that could not be audited is done, and said so: exit status 1."""
    users = edit_users(cfg.auth.users_file, change)
    log = AuditLog(cfg.audit_log)
    try:
        for name in names:
            log.write(user_record(action, name, users.get(name), operator(), time.time()))
    except OSError as e:
        raise ConfigError([f"{cfg.audit_log}: the change is made but not audited: {e}"]) from e


def check_groups(cfg: config.Config, groups: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(groups) - set(cfg.groups))
    if unknown:
        declared = ", ".join(sorted(cfg.groups)) or "none"
        raise BadUserInput(
            f"unknown group(s) {', '.join(unknown)}: declare them in the config's groups: "
            f"(declared: {declared})"
        )
    return tuple(sorted(set(groups)))


def run_groups(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    name = check_username(args.name)
    groups = check_groups(cfg, args.group)

    def change(users: dict[str, UserSecrets]) -> None:
        user = users.get(name)
        if user is None:
            raise BadUserInput(f"no such user: {name}")
        users[name] = dataclasses.replace(user, groups=groups)

    change_users(cfg, change, "groups", [name])
    print(f"{name}: groups {', '.join(groups) or 'none'}", file=sys.stderr)
    return 0


def run_renew(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    name = check_username(args.name)
    note = check_note(args.note) if args.note is not None else None
    current = read_users(cfg.auth.users_file).get(name)
    reason = note if note is not None else (current.note if current is not None else "")
    expires = lifetime(cfg, args.expires, reason)

    def change(users: dict[str, UserSecrets]) -> None:
        user = users.get(name)
        if user is None:
            raise BadUserInput(f"no such user: {name}")
        users[name] = dataclasses.replace(
            user, expires=expires, note=reason, owner=check_owner(args.owner, user.owner)
        )

    change_users(cfg, change, "renew", [name])
    until = "never expires" if expires is None else f"refused from {args.expires}"
    print(f"renewed {name}: {until}", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    users = read_users(cfg.auth.users_file)
    now = time.time()
    print(f"{'NAME':<24} {'ALGORITHMS':<14} {'EXPIRES':<11} NOTE")
    for user in sorted(users.values(), key=lambda u: u.name):
        algorithms = ",".join(a for a in ("MD5", "SHA-256") if a in user.ha1)
        expires = "-" if user.expires is None else format_date(user.expires)
        notes = [user.note] if user.note else []
        if user.owner and user.owner != user.name:
            notes.append(f"owner: {user.owner}")
        if user.groups:
            notes.append(f"groups: {', '.join(user.groups)}")
        if user.expires is not None and user.expires <= now:
            notes.append("EXPIRED")
        if user.locked:
            notes.append("LOCKED (password sent in clear) until the password is set again")
        if "SHA-256" not in user.ha1:
            notes.append("MD5 only until the password is set again")
        if user.realm != cfg.realm:
            notes.append(f"realm {user.realm!r} differs from {cfg.realm!r}: cannot log in")
        print(f"{user.name:<24} {algorithms:<14} {expires:<11} {'; '.join(notes)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    now = time.time()
    users = read_users(cfg.auth.users_file).values()
    live = [u for u in users if u.realm == cfg.realm and (u.expires is None or u.expires > now)]
    if len(live) < len(users):
        print(f"left out {len(users) - len(live)} expired or other-realm user(s)", file=sys.stderr)
    text = format_htdigest(live)
    if args.output is None:
        sys.stdout.write(text)
    else:
        atomic_write(args.output, text.encode("utf-8"))
    return 0


def run_import(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    note = check_note(args.note)
    expires = lifetime(cfg, args.expires, note)
    try:
        htdigest = HtdigestFile(str(args.file), default_realm=cfg.realm)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError([f"{args.file}: cannot read htdigest file: {e}"]) from e
    imported: list[UserSecrets] = []
    for realm in htdigest.realms():
        for name in htdigest.users(realm):
            if realm != cfg.realm:
                print(f"skipped {name}: realm {realm!r} is not {cfg.realm!r}", file=sys.stderr)
                continue
            check_username(name)
            ha1 = htdigest.get_hash(name, realm)
            # libpass returns str, passlib bytes; either way it must be 32 hex digits.
            text = ha1.decode("ascii", "replace") if isinstance(ha1, bytes) else str(ha1)
            if not re.fullmatch(r"[0-9a-fA-F]{32}", text):
                raise ConfigError([f"{args.file}: user {name!r}: malformed MD5 hash"])
            user = UserSecrets(name, realm, {"MD5": text.lower()}, expires, note)
            imported.append(
                made_now(dataclasses.replace(user, owner=check_owner(args.owner, name)))
            )
    added: list[str] = []

    def change(users: dict[str, UserSecrets]) -> None:
        for user in imported:
            if user.name in users and not args.replace:
                print(f"skipped {user.name}: exists (use --replace)", file=sys.stderr)
                continue
            users[user.name] = user
            added.append(user.name)

    change_users(cfg, change, "import", added)
    print(f"imported {len(added)} user(s) (MD5 only until their password is set again)")
    return 0
