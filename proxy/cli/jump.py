"""`proxyd jump …` (root, on the jump host) and `proxyd jump-gate` (sshd's forced command)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shutil
import socket
import subprocess
import sys
import syslog
import time
import traceback
from pathlib import Path
from typing import Any

from proxy.core import config
from proxy.core.addresses import parse_target
from proxy.core.audit import iso_instant
from proxy.core.errors import BadDestination, ProxydError
from proxy.core.jump import (
    PROFILES,
    Account,
    JumpError,
    Step,
    authorized_keys_line,
    check_expiry,
    check_name,
    parse_gate_command,
    permit_open,
    plan_add,
    plan_remove,
    plan_renew,
    plan_sweep,
    sshd_config_block,
)
from proxy.core.sshkeys import BadKey, parse_key_file
from proxy.core.users import BadUserInput, check_note, check_owner
from proxy.effects.accounts import (
    AccountExecutor,
    StateStore,
    is_managed,
    is_unmanaged,
    publish_grants,
)
from proxy.effects.audit import operator
from proxy.effects.resolver import ResolveError, addresses_now
from proxy.effects.stdio import relay_stdio

CONNECT_TIMEOUT = 10


def add_parser(sub: Any) -> None:
    p = sub.add_parser("jump", help="manage ssh jump-host accounts (root)")
    p.add_argument("--config", type=Path, default=config.DEFAULT_CONFIG)
    jump = p.add_subparsers(dest="jump_command", required=True, metavar="ACTION")

    q = jump.add_parser("add", help="create an account for one partner key")
    q.add_argument("name")
    q.add_argument("--key", required=True, help="public key file, or - for stdin")
    q.add_argument("--expires", required=True, metavar="DATE", help="first day refused")
    q.add_argument("--profile", choices=PROFILES, default="tunnel")
    q.add_argument("--note", "--reason", dest="note", default="", help="why (project, ticket)")
    q.add_argument("--owner", help="the partner, organisation or person (default: NAME)")
    plan_arguments(q)
    q.set_defaults(func=run_add)

    q = jump.add_parser("list", help="list managed accounts")
    q.set_defaults(func=run_list)
    q = jump.add_parser("show", help="one account in detail")
    q.add_argument("name")
    q.set_defaults(func=run_show)
    q = jump.add_parser("renew", help="set a new expiry date")
    q.add_argument("name")
    q.add_argument("--expires", required=True, metavar="DATE")
    q.add_argument("--note", "--reason", dest="note", help="a new reason; default: keep it")
    plan_arguments(q)
    q.set_defaults(func=run_renew)
    q = jump.add_parser("remove", help="end sessions and delete an account")
    q.add_argument("name")
    plan_arguments(q)
    q.set_defaults(func=run_remove)
    q = jump.add_parser("sweep", help="remove expired accounts (run by the systemd timer)")
    plan_arguments(q)
    q.set_defaults(func=run_sweep)
    q = jump.add_parser("sshd-config", help="print the sshd_config block to install")
    q.set_defaults(func=run_sshd_config)

    g = sub.add_parser("jump-gate", help="sshd forced command for tunnel accounts (internal)")
    g.add_argument("--config", type=Path, default=config.DEFAULT_CONFIG)
    g.set_defaults(func=run_gate)


def plan_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    q.add_argument("--verbose", action="store_true", help="print each step as it runs")


def gate_command(cfg: config.Config) -> str:
    """What sshd runs for tunnel accounts; it is quoted into authorized_keys."""
    executable = cfg.jump.gate or Path(shutil.which("proxyd") or sys.argv[0]).resolve()
    command = f"{executable} jump-gate --config {cfg.source.resolve()}"
    if any(c in command for c in '"\\\n\t') or not Path(executable).is_absolute():
        raise JumpError(f"unusable path for the forced command: {command!r}")
    return command


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _execute(cfg: config.Config, steps: list[Step], args: argparse.Namespace) -> None:
    """Print the plan (--dry-run), or run it, printing each step as it runs (--verbose):
    the same lines either way, since a step carries all its executor uses."""
    if args.dry_run:
        for step in steps:
            print(step)
        return
    try:
        executor(cfg).run(steps, on_step=print if args.verbose else None)
    finally:
        _publish(cfg)


def _publish(cfg: config.Config) -> None:
    """After every change, whatever its outcome: the world-readable names and expiries
    the proxy's metrics read. Not written is said; the change itself stands."""
    try:
        publish_grants(cfg.jump, StateStore(cfg.jump.state_dir).all()[0])
    except OSError as e:
        print(f"proxyd: {cfg.jump.grants_file}: not written (metrics stale): {e}", file=sys.stderr)


def executor(cfg: config.Config) -> AccountExecutor:
    """Jump changes go to the one audit log (`audit_log`), unless `jump.audit_log` says."""
    return AccountExecutor(cfg.jump, cfg.jump.audit_log or cfg.audit_log)


def _managed(cfg: config.Config, name: str) -> Account:
    import pwd

    check_name(name, existing_unmanaged=False)  # also keeps `../x` out of the state folder
    account = StateStore(cfg.jump.state_dir).load(name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if (
        account is None
        or account.name != name  # a record must never point at another account
        or (entry is not None and not is_managed(entry, cfg.jump.group))
    ):
        raise JumpError(f"no managed jump account {name!r}")
    return account


def run_add(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    name = check_name(args.name, is_unmanaged(args.name, cfg.jump.group))
    if StateStore(cfg.jump.state_dir).load(name) is not None or not _absent(name):
        raise JumpError(f"account {name!r} exists (use `jump renew`)")
    expires = check_expiry(args.expires, time.time(), cfg.max_lifetime_days)
    try:
        note = check_note(args.note)
        owner = check_owner(args.owner, name)
        text = sys.stdin.read(65536) if args.key == "-" else Path(args.key).read_text()
        key = parse_key_file(text, cfg.jump.rsa_min_bits)
    except (OSError, UnicodeDecodeError) as e:
        raise JumpError(f"cannot read the key: {e}") from e
    except (BadKey, BadUserInput) as e:
        raise JumpError(str(e)) from e
    account = Account(
        name,
        args.profile,
        expires,
        note,
        key.fingerprint,
        key.line(),
        owner=owner,
        created_by=operator(),
        created_at=iso_instant(time.time()),
    )
    steps = plan_add(account, cfg.jump, gate_command(cfg))
    try:
        _execute(cfg, steps, args)
    except (JumpError, OSError) as e:
        # Half an account is worse than none: undo what was done, then report.
        if not args.dry_run:
            executor(cfg).run(plan_remove(account, "add-failed"))
        raise JumpError(f"add failed and was rolled back: {e}") from e
    if not args.dry_run:
        print(f"added {name} ({args.profile}, refused from {expires}, key {key.fingerprint})")
    return 0


def _absent(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False


def run_list(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    today = _today()
    print(f"{'NAME':<20} {'PROFILE':<8} {'EXPIRES':<11} {'KEY':<52} NOTE")
    accounts, unreadable = StateStore(cfg.jump.state_dir).all()
    for error in unreadable:
        print(f"proxyd: {error}", file=sys.stderr)
    for account in accounts:
        flags = [account.note] if account.note else []
        if account.owner and account.owner != account.name:
            flags.append(f"owner: {account.owner}")
        if account.expires <= today:
            flags.append("EXPIRED")
        if _absent(account.name):
            flags.append("NO UNIX ACCOUNT")
        print(
            f"{account.name:<20} {account.profile:<8} {account.expires!s:<11} "
            f"{account.fingerprint:<52} {'; '.join(flags)}"
        )
    return 1 if unreadable else 0


def run_show(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    account = _managed(cfg, args.name)
    for label, value in (
        ("name", account.name),
        ("profile", account.profile),
        ("expires", f"{account.expires} (refused from that day, UTC)"),
        ("owner", account.owner or "-"),
        ("reason", account.note or "-"),
        ("created", f"{account.created_at or '-'} by {account.created_by or '-'}"),
        ("key", account.fingerprint),
        ("authorized_keys", authorized_keys_line(account, gate_command(cfg)).strip()),
    ):
        print(f"{label + ':':<17}{value}")
    return 0


def run_renew(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    old = _managed(cfg, args.name)
    expires = check_expiry(args.expires, time.time(), cfg.max_lifetime_days)
    try:
        note = check_note(args.note) if args.note is not None else old.note
    except BadUserInput as e:
        raise JumpError(str(e)) from e
    account = dataclasses.replace(old, expires=expires, note=note)
    _execute(cfg, plan_renew(account, gate_command(cfg)), args)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    account = _managed(cfg, args.name)
    _execute(cfg, plan_remove(account), args)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    accounts, unreadable = StateStore(cfg.jump.state_dir).all()
    for error in unreadable:  # one broken state file stops no other account's sweep
        print(f"proxyd: sweep: {error}", file=sys.stderr)
    steps = plan_sweep(accounts, _today())
    swept, failed = [], []
    for name in dict.fromkeys(s.account for s in steps):  # one account failing stops no other
        try:
            _execute(cfg, [s for s in steps if s.account == name], args)
        except (JumpError, OSError, subprocess.SubprocessError) as e:
            print(f"proxyd: sweep: {name}: {e}", file=sys.stderr)
            failed.append(name)
        else:
            swept.append(name)
    print(f"swept {len(swept)} expired account(s){': ' + ', '.join(swept) if swept else ''}")
    return 1 if failed or unreadable else 0


def run_sshd_config(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    entries = permit_open(cfg.policy, cfg.jump.ports, cfg.jump.permit_open_limit)
    sys.stdout.write(sshd_config_block(cfg.jump.group, entries, cfg.jump.keys_dir))
    return 0


def run_gate(args: argparse.Namespace) -> int:
    """`nc HOST PORT` for a tunnel account: checked by the policy, then relayed. Any
    failure is one line to the partner, never a traceback, and nothing else is run.

    Fail closed: the check and the connection run inside one boundary, so an error nobody
    expected (a bug, an odd file) refuses too; its traceback goes to syslog, not to the
    partner."""
    try:
        sock = _checked_connection(args.config, os.environ.get("SSH_ORIGINAL_COMMAND"))
    except (ProxydError, JumpError, BadDestination, ResolveError, OSError) as e:
        print(f"proxyd: refused: {e}", file=sys.stderr)
        return 1
    except Exception:
        _log_internal_error()
        print("proxyd: refused: internal error", file=sys.stderr)
        return 1
    relay_stdio(sock)
    return 0


def _checked_connection(config_path: Path, command: str | None) -> socket.socket:
    """A connection to the one address the policy allows for `command`, or an error."""
    cfg = config.load(config_path)
    host, port = parse_gate_command(command)
    if port not in cfg.jump.ports:
        raise JumpError(f"port {port} is not allowed (allowed: {cfg.jump.ports})")
    addresses = addresses_now(parse_target(host, port), cfg.hosts_file, cfg.dns_timeout)
    denied = [a for a in addresses if not cfg.policy.open_to_anyone(a, port)]
    if denied or not addresses:
        raise JumpError(f"{host}:{port} is outside the allowed zones")
    sock = socket.create_connection((str(addresses[0]), port), timeout=CONNECT_TIMEOUT)
    sock.settimeout(None)
    return sock


def _log_internal_error() -> None:
    """The traceback, one syslog line per line, for the operator (auth facility, as sshd)."""
    syslog.openlog("proxyd-jump-gate", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    for line in traceback.format_exc().splitlines():
        syslog.syslog(syslog.LOG_ERR, line)
