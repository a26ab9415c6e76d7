"""Carries out jump-account steps on this host: useradd, usermod, chage, userdel, pkill,
and the files in the account's home. Every program gets a list of arguments, never a shell.
"""

from __future__ import annotations

import contextlib
import grp
import json
import pwd
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from proxy.core.audit import grant_record
from proxy.core.config import JumpConfig
from proxy.core.jump import (
    ACTIONS,
    DESTRUCTIVE,
    MARKER,
    Account,
    JumpError,
    Step,
    account_from_record,
    format_grants,
    parse_grants,
)
from proxy.effects.audit import AuditLog, operator
from proxy.effects.files import atomic_write

ACCOUNT_SHELL = "/bin/sh"  # sshd runs the forced command through the login shell


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise JumpError(f"{argv[0]} failed: {result.stderr.strip() or result.returncode}")


def is_unmanaged(name: str, group: str) -> bool:
    """An existing account that proxyd did not create: never touched."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    return not is_managed(entry, group)


def is_managed(entry: pwd.struct_passwd, group: str) -> bool:
    try:
        members = grp.getgrnam(group).gr_mem
    except KeyError:
        return False
    return entry.pw_gecos == MARKER and entry.pw_name in members


class StateStore:
    """proxyd's record of each managed account (what the OS does not keep: note, profile,
    owner, key fingerprint), one JSON file per account, 0600."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def save(self, record: dict[str, str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path(record["name"]), json.dumps(record, indent=1).encode())

    def load(self, name: str) -> Account | None:
        try:
            return account_from_record(json.loads(self.path(name).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise JumpError(f"{self.path(name)}: unreadable state: {e}") from e

    def all(self) -> tuple[list[Account], list[JumpError]]:
        """Every account on record, and one error per state file that cannot be read:
        one broken file hides no other account."""
        if not self.directory.exists():
            return [], []
        accounts, errors = [], []
        for path in sorted(self.directory.glob("*.json")):
            try:
                account = self.load(path.stem)
            except JumpError as e:
                errors.append(e)
                continue
            if account is not None:
                accounts.append(account)
        return accounts, errors

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()


def publish_grants(config: JumpConfig, accounts: list[Account]) -> None:
    """The names and expiries, world-readable, for the proxy's metrics (core/jump.py)."""
    config.grants_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config.grants_file, format_grants(accounts), mode=0o644)


def read_grants(path: Path) -> dict[str, float]:
    """What publish_grants wrote; {} when there is none or it cannot be read (a metric
    left out, never a failed scrape)."""
    try:
        return parse_grants(path.read_bytes())
    except (OSError, ValueError):
        return {}


class AccountExecutor:
    """Runs a plan: each step with the values it carries, nothing else (so a dry run's
    printout is exactly what runs)."""

    def __init__(self, config: JumpConfig, audit_log: Path) -> None:
        self.config = config
        self.state = StateStore(config.state_dir)
        self.audit_log = AuditLog(audit_log)

    def run(self, steps: list[Step], on_step: Callable[[Step], None] | None = None) -> None:
        """Run every step in order; `on_step` hears of each before it runs. An action
        outside ACTIONS is a JumpError before any step runs."""
        unknown = sorted({s.action for s in steps} - ACTIONS)
        if unknown:
            raise JumpError(f"a plan holds unknown step(s): {', '.join(unknown)}")
        for step in steps:
            if on_step is not None:
                on_step(step)
            if step.action in DESTRUCTIVE:
                self.check_managed(step.account)
            action: Callable[[Step], None] = getattr(self, step.action)
            action(step)

    def check_managed(self, name: str) -> None:
        """Checked again right before a step takes an account away: a name that became
        someone else's account since the plan was made is never touched."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return  # gone already: nothing to lock, end or delete
        if not is_managed(entry, self.config.group):
            raise JumpError(f"refused: {name!r} is not an account proxyd manages")

    # one method per step action -----------------------------------------------------------

    def ensure_group(self, step: Step) -> None:
        try:
            grp.getgrnam(step.arg("group"))
        except KeyError:
            _run("groupadd", "--system", step.arg("group"))

    def create_user(self, step: Step) -> None:
        home = Path(step.arg("home"))
        home.parent.mkdir(parents=True, exist_ok=True)
        _run(
            "useradd",
            "--create-home",
            "--home-dir",
            str(home),
            "--shell",
            ACCOUNT_SHELL,
            "--groups",
            step.arg("group"),
            "--expiredate",
            step.arg("expires"),
            "--comment",
            MARKER,
            "--",
            step.account,
        )

    def lock_password(self, step: Step) -> None:
        # '*': no password matches. Not usermod --lock's '!', which sshd without PAM reads
        # as a locked account and refuses even for a valid key.
        _run("usermod", "--password", "*", "--", step.account)

    def write_keys(self, step: Step) -> None:
        # Root-owned file in a root-owned folder: the partner can't edit or replace it,
        # and nothing here follows a path the partner controls.
        keys_dir = self.config.keys_dir
        keys_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(keys_dir / step.account, (step.arg("line") + "\n").encode(), mode=0o644)

    def delete_keys(self, step: Step) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.config.keys_dir / step.account).unlink()

    def write_state(self, step: Step) -> None:
        self.state.save(dict(step.args))

    def set_expiry(self, step: Step) -> None:
        _run("chage", "--expiredate", step.arg("expires"), "--", step.account)

    def lock_account(self, step: Step) -> None:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(step.account)
            _run("usermod", "--lock", "--expiredate", "1", "--", step.account)

    def kill_sessions(self, step: Step) -> None:
        # pkill exits 1 when nothing matched: not an error here. Twice, to catch a session
        # that was forking while we looked.
        for _ in range(2):
            subprocess.run(["pkill", "-KILL", "-u", step.account], capture_output=True, timeout=30)
            time.sleep(0.1)

    def delete_user(self, step: Step) -> None:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(step.account)
            _run("userdel", "--remove", "--", step.account)

    def delete_state(self, step: Step) -> None:
        self.state.delete(step.account)

    def audit(self, step: Step) -> None:
        facts = dict(step.args)
        action = facts.pop("action")
        self.audit_log.write(
            grant_record("jump", action, step.account, operator(), time.time(), **facts)
        )
