"""Carries out jump-account steps on this host: useradd, usermod, chage, userdel, pkill,
and the files in the account's home. Every program gets a list of arguments, never a shell.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import json
import pwd
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from proxy.core.audit import grant_record
from proxy.core.config import JumpConfig
from proxy.core.jump import MARKER, Account, JumpError, Step, authorized_keys_line
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
    key fingerprint), one JSON file per account, 0600."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def save(self, account: Account) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = asdict(account) | {"expires": account.expires.isoformat()}
        atomic_write(self.path(account.name), json.dumps(record, indent=1).encode())

    def load(self, name: str) -> Account | None:
        try:
            record = json.loads(self.path(name).read_text())
            record["expires"] = datetime.date.fromisoformat(record["expires"])
            return Account(**record)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise JumpError(f"{self.path(name)}: unreadable state: {e!r}") from e

    def all(self) -> list[Account]:
        if not self.directory.exists():
            return []
        accounts = []
        for path in sorted(self.directory.glob("*.json")):
            account = self.load(path.stem)
            if account is not None:
                accounts.append(account)
        return accounts

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()


class AccountExecutor:
    """Runs a plan. `account` carries the data the steps refer to by name."""

    def __init__(self, config: JumpConfig, gate_command: str, audit_log: Path) -> None:
        self.config = config
        self.gate_command = gate_command
        self.state = StateStore(config.state_dir)
        self.audit_log = AuditLog(audit_log)

    ACTIONS = frozenset(
        {
            "audit",
            "create_user",
            "delete_keys",
            "delete_state",
            "delete_user",
            "ensure_group",
            "kill_sessions",
            "lock_account",
            "lock_password",
            "set_expiry",
            "write_keys",
            "write_state",
        }
    )

    def run(self, steps: list[Step], account: Account | None) -> None:
        """Run every step in order. An action outside ACTIONS is a JumpError before any
        step runs. Without `account` (remove, sweep), the account's state is read first,
        so the audit line still names its key and expiry once the state is deleted."""
        # (a plan may hold several accounts' steps: sweep's does, one account after another)
        unknown = sorted({s.action for s in steps} - self.ACTIONS)
        if unknown:
            raise JumpError(f"a plan holds unknown step(s): {', '.join(unknown)}")
        known: dict[str, Account | None] = {}
        if account is None:
            for name in dict.fromkeys(step.account for step in steps):
                with contextlib.suppress(JumpError):  # a broken state file: removed anyway
                    known[name] = self.state.load(name)
        for step in steps:
            action: Callable[[Step, Account | None], None] = getattr(self, step.action)
            action(step, account or known.get(step.account))

    # one method per step action -----------------------------------------------------------

    def ensure_group(self, step: Step, account: Account | None) -> None:
        try:
            grp.getgrnam(self.config.group)
        except KeyError:
            _run("groupadd", "--system", self.config.group)

    def create_user(self, step: Step, account: Account | None) -> None:
        assert account is not None
        home = self.config.home_base / account.name
        self.config.home_base.mkdir(parents=True, exist_ok=True)
        _run(
            "useradd",
            "--create-home",
            "--home-dir",
            str(home),
            "--shell",
            ACCOUNT_SHELL,
            "--groups",
            self.config.group,
            "--expiredate",
            account.expires.isoformat(),
            "--comment",
            MARKER,
            "--",
            account.name,
        )

    def lock_password(self, step: Step, account: Account | None) -> None:
        # '*': no password matches. Not usermod --lock's '!', which sshd without PAM reads
        # as a locked account and refuses even for a valid key.
        _run("usermod", "--password", "*", "--", step.account)

    def write_keys(self, step: Step, account: Account | None) -> None:
        # Root-owned file in a root-owned folder: the partner can't edit or replace it,
        # and nothing here follows a path the partner controls.
        assert account is not None
        keys_dir = self.config.keys_dir
        keys_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        line = authorized_keys_line(account, self.gate_command).encode()
        atomic_write(keys_dir / account.name, line, mode=0o644)

    def delete_keys(self, step: Step, account: Account | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.config.keys_dir / step.account).unlink()

    def write_state(self, step: Step, account: Account | None) -> None:
        assert account is not None
        self.state.save(account)

    def set_expiry(self, step: Step, account: Account | None) -> None:
        assert account is not None
        _run("chage", "--expiredate", account.expires.isoformat(), "--", account.name)

    def lock_account(self, step: Step, account: Account | None) -> None:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(step.account)
            _run("usermod", "--lock", "--expiredate", "1", "--", step.account)

    def kill_sessions(self, step: Step, account: Account | None) -> None:
        # pkill exits 1 when nothing matched: not an error here. Twice, to catch a session
        # that was forking while we looked.
        for _ in range(2):
            subprocess.run(["pkill", "-KILL", "-u", step.account], capture_output=True, timeout=30)
            time.sleep(0.1)

    def delete_user(self, step: Step, account: Account | None) -> None:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(step.account)
            _run("userdel", "--remove", "--", step.account)

    def delete_state(self, step: Step, account: Account | None) -> None:
        self.state.delete(step.account)

    def audit(self, step: Step, account: Account | None) -> None:
        known = account or self.state.load(step.account)
        record = grant_record(
            "jump",
            step.detail,
            step.account,
            operator(),
            time.time(),
            fingerprint=known.fingerprint if known else None,
            expires=known.expires.isoformat() if known else None,
            reason=known.note if known else None,
        )
        self.audit_log.write(record)
