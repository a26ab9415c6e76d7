"""Jump accounts as grants (issue 17): lifetimes within grants.max_lifetime, owner and
creator on record, plans as the source of truth, and sweeps that survive a broken record.
Real useradd/userdel/chage, as root, like the rest of tests/jump."""

from __future__ import annotations

import datetime
import json
import os
import pwd
import re
import stat

import pytest
from jumpkit import JumpHost, days_ahead, run, shadow_password, sweep_at, user_exists

from proxy.core.config import JumpConfig
from proxy.core.jump import Account, JumpError, plan_remove
from proxy.core.users import parse_date
from proxy.effects.accounts import AccountExecutor, read_grants


def _operator() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("LOGNAME") or pwd.getpwuid(0).pw_name


def _steps(stdout: str) -> list[str]:
    """A plan's lines, with the one value that differs between two runs (when) masked."""
    return [
        re.sub(r"created_at=\S+", "created_at=*", line)
        for line in stdout.splitlines()
        if not line.startswith(("added ", "swept "))
    ]


def test_a_dry_run_prints_exactly_the_steps_a_run_runs(jump: JumpHost) -> None:
    name, key = jump.name("plan"), jump.key("plan")
    add = ["add", name, "--key", f"{key}.pub", "--expires", days_ahead(30).isoformat()]
    dry = jump.proxyd(*add, "--owner", "ACME", "--dry-run")
    real = jump.proxyd(*add, "--owner", "ACME", "--verbose")
    assert dry.returncode == 0 and real.returncode == 0, (dry.stderr, real.stderr)
    assert _steps(dry.stdout) == _steps(real.stdout) and len(_steps(dry.stdout)) == 6
    renew = ["renew", name, "--expires", days_ahead(40).isoformat()]
    dry, real = jump.proxyd(*renew, "--dry-run"), jump.proxyd(*renew, "--verbose")
    assert dry.returncode == real.returncode == 0
    assert _steps(dry.stdout) == _steps(real.stdout) and len(_steps(dry.stdout)) == 4
    dry, real = jump.proxyd("remove", name, "--dry-run"), jump.proxyd("remove", name, "--verbose")
    assert dry.returncode == real.returncode == 0
    assert _steps(dry.stdout) == _steps(real.stdout) and len(_steps(dry.stdout)) == 6
    assert not user_exists(name)


@pytest.mark.parametrize("action", ["add", "renew"])
def test_expiry_must_lie_within_max_lifetime(jump: JumpHost, action: str) -> None:
    name, key = jump.name("long"), jump.key("long")
    if action == "renew":
        jump.add("long", key)
    too_far = days_ahead(92).isoformat()  # 90 days by default: the 91st day is the last
    args = ["--key", f"{key}.pub"] if action == "add" else []
    proc = jump.proxyd(action, name, *args, "--expires", too_far)
    assert proc.returncode == 1
    assert "more than grants.max_lifetime (90 days)" in proc.stderr
    assert (action == "renew") == user_exists(name)
    jump.config["grants"] = {"max_lifetime": 7}
    jump.write_config()
    proc = jump.proxyd(action, name, *args, "--expires", days_ahead(10).isoformat())
    assert proc.returncode == 1 and "(7 days)" in proc.stderr
    assert jump.proxyd(action, name, *args, "--expires", days_ahead(5).isoformat()).returncode == 0


def test_every_grant_records_owner_reason_and_who_made_it_when(jump: JumpHost) -> None:
    name, key = jump.name("own"), jump.key("own")
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    proc = jump.proxyd(
        *("add", name, "--key", f"{key}.pub", "--expires", days_ahead(30).isoformat()),
        *("--owner", "ACME GmbH", "--reason", "ticket 42"),
    )
    assert proc.returncode == 0, proc.stderr
    shown = jump.proxyd("show", name).stdout
    assert "ACME GmbH" in shown and "ticket 42" in shown and _operator() in shown
    assert "owner: ACME GmbH" in jump.proxyd("list").stdout
    assert jump.proxyd("remove", name).returncode == 0
    added, removed = jump.audit()[-2:]
    for record in (added, removed):
        assert record["owner"] == "ACME GmbH" and record["reason"] == "ticket 42"
        assert record["created_by"] == _operator()
        assert datetime.datetime.fromisoformat(record["created_at"]) >= before
    assert (added["action"], removed["action"]) == ("add", "remove")
    # Without --owner the grant is the person's own.
    other, _ = jump.add("self")
    assert jump.audit()[-1]["owner"] == other


def test_one_broken_state_file_does_not_stop_the_sweep(jump: JumpHost) -> None:
    broken, _ = jump.add("broken", expires=days_ahead(1))
    expired, _ = jump.add("expired", expires=days_ahead(1))
    (jump.state_dir / f"{broken}.json").write_text('{"name": "' + broken)
    proc = sweep_at(jump, days_ahead(1))
    assert proc.returncode == 1
    assert f"{broken}.json: unreadable state" in proc.stderr
    assert not user_exists(expired) and expired in proc.stdout
    listed = jump.proxyd("list")
    assert listed.returncode == 1 and "unreadable state" in listed.stderr


def test_destructive_steps_recheck_that_proxyd_manages_the_account(jump: JumpHost) -> None:
    """A plan made for a managed account, run after the name became someone else's: the
    executor refuses at the first step that would take the account away."""
    victim = jump.name("victim")
    assert run(["useradd", "--no-create-home", "--", victim]).returncode == 0
    shadow_before = shadow_password(victim)
    account = Account(victim, "tunnel", days_ahead(3), "", "SHA256:x", "ssh-ed25519 AAAA")
    executor = AccountExecutor(
        JumpConfig(group=jump.group, state_dir=jump.state_dir, keys_dir=jump.keys_dir),
        jump.audit_log,
    )
    with pytest.raises(JumpError, match="not an account proxyd manages"):
        executor.run(plan_remove(account))
    assert user_exists(victim)
    assert shadow_password(victim) == shadow_before  # not locked either


def test_names_and_expiries_are_published_for_the_proxys_metrics(jump: JumpHost) -> None:
    """The proxy cannot read root's state: `proxyd jump` publishes what its metrics need,
    world-readable, and nothing else (no key, reason or owner)."""
    published = jump.directory / "jump-grants.json"
    name, _ = jump.add("pub", expires=days_ahead(20))
    assert json.loads(published.read_text()) == {name: days_ahead(20).isoformat()}
    assert stat.S_IMODE(published.stat().st_mode) == 0o644
    assert jump.proxyd("renew", name, "--expires", days_ahead(25).isoformat()).returncode == 0
    assert read_grants(published) == {name: parse_date(days_ahead(25).isoformat())}
    assert "jump test" not in published.read_text()  # the reason stays in root's state
    assert jump.proxyd("remove", name, "--dry-run").returncode == 0
    assert name in json.loads(published.read_text())  # a dry run changes nothing
    assert jump.proxyd("remove", name).returncode == 0
    assert json.loads(published.read_text()) == {}
