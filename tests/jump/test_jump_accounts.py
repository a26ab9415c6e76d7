"""`proxyd jump add/list/show/renew/remove/sweep` on real Unix accounts, checked with the
system's own tools (pwd/grp, /etc/shadow, ssh-keygen) and with real ssh logins.

Hostile input must be refused by `add` with exit 1 and a clear message, with nothing
written: no user, no group, no home, no state file, no audit line.
"""

from __future__ import annotations

import base64
import datetime
import grp
import json
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest
from jumpkit import (
    PROXY_HOST,
    TARGET_HOST,
    JumpHost,
    days_ahead,
    epoch_day,
    files_in,
    fingerprint,
    group_exists,
    live_processes,
    read_line,
    run,
    shadow_expire_day,
    shadow_password,
    sweep_at,
    today_utc,
    user_exists,
    wait_until,
)


def _can_log_in(jump: JumpHost, name: str, key: Path) -> bool:
    proc = jump.via_jump(
        jump.client_config(key, f"c-{key.name}"), name, TARGET_HOST, jump.targets.port, "echo", "ok"
    )
    return proc.returncode == 0 and proc.stdout == "ok\n"


def _nothing_written(jump: JumpHost, name: str) -> None:
    assert not user_exists(name), f"user {name} was created"
    assert not (jump.home_base / name).exists(), "a home was created"
    written = list(jump.state_dir.glob("*")) if jump.state_dir.exists() else []
    assert written == [], f"state files were written: {written}"
    assert jump.audit() == [], "an audit line was written"


# --------------------------------------------------------------------------- add


def test_add_creates_a_locked_account_with_one_restricted_key(jump: JumpHost) -> None:
    key = jump.key("alice")
    name, _ = jump.add("alice", key, expires=days_ahead(30))
    entry = pwd.getpwnam(name)
    assert name in grp.getgrnam(jump.group).gr_mem
    assert entry.pw_dir == str(jump.home_base / name)
    assert shadow_password(name) == "*", "no password can match (and sshd without PAM still works)"
    assert shadow_expire_day(name) == epoch_day(days_ahead(30))
    home = Path(entry.pw_dir)
    assert home.stat().st_uid == entry.pw_uid
    assert not (home / ".ssh").exists()  # the key lives where the partner can't change it
    keys = jump.authorized_keys(name)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o644 and keys.stat().st_uid == 0
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o755 and keys.parent.stat().st_uid == 0
    line = keys.read_text()
    assert line.count("\n") == 1
    pub_type, pub_blob = Path(f"{key}.pub").read_text().split()[:2]
    assert line.startswith(
        f'restrict,port-forwarding,command="{jump.gate} jump-gate --config {jump.config_path}",'
        f'expiry-time="{days_ahead(30):%Y%m%d}'
    ), line
    assert f" {pub_type} {pub_blob}" in line
    # ssh-keygen reads the written file as one key with the same fingerprint.
    listed = run(["ssh-keygen", "-l", "-f", str(keys)])
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1
    assert listed.stdout.split()[1] == fingerprint(Path(f"{key}.pub"))


def test_add_key_from_stdin_and_shell_profile(jump: JumpHost) -> None:
    key = jump.key("bob", "ecdsa")
    name = jump.name("bob")
    proc = jump.proxyd(
        "add",
        name,
        "--key",
        "-",
        "--expires",
        days_ahead(30).isoformat(),
        "--profile",
        "shell",
        input=Path(f"{key}.pub").read_text(),
    )
    assert proc.returncode == 0, proc.stderr
    line = jump.authorized_keys(name).read_text()
    assert line.startswith("restrict,port-forwarding,pty,") and "command=" not in line


def test_dry_run_changes_nothing(jump: JumpHost) -> None:
    name = jump.name("dry")
    key = jump.key("dry")
    proc = jump.proxyd(
        "add", name, "--key", f"{key}.pub", "--expires", days_ahead(30).isoformat(), "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout
    _nothing_written(jump, name)
    assert not group_exists(jump.group)


@pytest.mark.parametrize(
    "key_type,bits", [("ed25519", None), ("ecdsa", 256), ("ecdsa", 521), ("rsa", 3072)]
)
def test_accepted_key_types_log_in(jump: JumpHost, key_type: str, bits: int | None) -> None:
    key = jump.key(f"k{key_type}{bits}", key_type, bits)
    name, _ = jump.add("ok", key)
    jump.start_sshd()
    assert _can_log_in(jump, name, key)


# --------------------------------------------------------------------------- hostile keys


def _hostile_key(jump: JumpHost, case: str) -> tuple[bytes, str]:
    """(key file content, a word the refusal must contain)"""
    good = Path(f"{jump.key('good')}.pub").read_text().strip()
    other = Path(f"{jump.key('other')}.pub").read_text().strip()
    kind, blob, _comment = good.split(" ", 2)
    if case == "dsa":
        result = run(["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(jump.keys / "dsa")])
        if result.returncode != 0:  # an OpenSSH built without DSA: a well-formed ssh-dss line
            return b"ssh-dss " + base64.b64encode(
                b"\0\0\0\x07ssh-dss" + b"\0" * 40
            ) + b" x\n", "DSA"
        return (jump.keys / "dsa.pub").read_bytes(), "DSA"
    if case == "rsa1024":
        return Path(f"{jump.key('rsa1024', 'rsa', 1024)}.pub").read_bytes(), "1024"
    if case == "rsa2048":
        return Path(f"{jump.key('rsa2048', 'rsa', 2048)}.pub").read_bytes(), "2048"
    return {
        "options-command": (f'command="/bin/sh" {good}\n'.encode(), "option"),
        "options-permitopen": (f'permitopen="*:*" {good}\n'.encode(), "option"),
        "options-restrict-only": (f"no-pty {good}\n".encode(), "option"),
        "options-environment": (f'environment="LD_PRELOAD=/tmp/x.so" {good}\n'.encode(), "option"),
        "two-keys": (f"{good}\n{other}\n".encode(), "one"),
        "comment-newline-key": (f'{kind} {blob} note\ncommand="id" {other}\n'.encode(), "one"),
        # (a CR reads as a line break in text mode: "one key" or "control" both say why)
        "comment-cr": (f"{kind} {blob} note\rcommand=x\n".encode(), "one|control"),
        "comment-escape": (f"{kind} {blob} note\x1b[2J\n".encode(), "comment"),
        "comment-tab": (f"{kind} {blob} a\tb\n".encode(), "comment"),
        "comment-nul": (f"{kind} {blob} a\0b\n".encode(), "control"),
        "comment-utf8": (f"{kind} {blob} caf\u00e9\n".encode(), "comment"),
        "garbage": (b"hello world\n", "key"),
        "empty": (b"", "one"),
        "binary": (b"\xff\xfe\x00\x01garbage", "key"),
        "truncated-blob": (f"{kind} {blob[:30]}\n".encode(), "key"),
        "not-base64": (f"{kind} !!!notbase64!!!\n".encode(), "base64"),
        "type-mismatch": (f"ssh-rsa {blob}\n".encode(), "ssh-ed25519"),
        "certificate": (f"ssh-ed25519-cert-v01@openssh.com {blob}\n".encode(), "type"),
        "private-key": ((jump.key("good")).read_bytes(), "key"),
        "type-only": (f"{kind}\n".encode(), "key"),
    }[case]


HOSTILE_KEYS = [
    "dsa",
    "rsa1024",
    "rsa2048",
    "options-command",
    "options-permitopen",
    "options-restrict-only",
    "options-environment",
    "two-keys",
    "comment-newline-key",
    "comment-cr",
    "comment-escape",
    "comment-tab",
    "comment-nul",
    "comment-utf8",
    "garbage",
    "empty",
    "binary",
    "truncated-blob",
    "not-base64",
    "type-mismatch",
    "certificate",
    "private-key",
    "type-only",
]


@pytest.mark.parametrize("case", HOSTILE_KEYS)
def test_hostile_key_refused_nothing_written(jump: JumpHost, case: str) -> None:
    content, word = _hostile_key(jump, case)
    path = jump.directory / f"hostile-{case}.pub"
    path.write_bytes(content)
    name = jump.name("mallory")
    proc = jump.proxyd("add", name, "--key", str(path), "--expires", days_ahead(30).isoformat())
    assert proc.returncode == 1, (case, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("proxyd: error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert any(w in proc.stderr.lower() for w in word.lower().split("|")), proc.stderr
    _nothing_written(jump, name)
    # The same through stdin.
    piped = jump.proxyd(
        "add", name, "--key", "-", "--expires", days_ahead(30).isoformat(), input=content
    )
    assert piped.returncode == 1, piped.stderr
    _nothing_written(jump, name)


# --------------------------------------------------------------------------- hostile names


@pytest.mark.parametrize(
    "name",
    [
        "root",
        "daemon",
        "sshd",
        "nobody",
        "-x",
        "--help",
        "a" * 40,
        "Alice",
        "a/b",
        "../x",
        "a",
        "",
        "x y",
        "ab\n",
        "al:ce",
        "ålice",
        "1abc",
        "abc$",
        "a" * 32,
    ],
)
def test_hostile_name_refused(jump: JumpHost, name: str) -> None:
    key = jump.key("good")
    before = Path("/etc/passwd").read_text()
    # --dry-run as a safety net: a broken check must neither touch a system account nor
    # create an account outside the test prefix. Only names useradd itself would refuse
    # are also tried for real.
    useradd_refuses = any(c in name for c in "/: \n") or name == ""
    for extra in (["--dry-run"], []) if useradd_refuses else (["--dry-run"],):
        proc = jump.proxyd(
            "add",
            "--key",
            f"{key}.pub",
            "--expires",
            days_ahead(30).isoformat(),
            *extra,
            "--",
            name,
        )
        assert proc.returncode in (1, 2), (name, proc.stdout, proc.stderr)  # 2: argparse
        assert proc.stderr.strip(), "a message says why"
        assert "Traceback" not in proc.stderr
    assert Path("/etc/passwd").read_text() == before
    assert jump.audit() == [] and not files_in(jump.state_dir)


def test_longest_valid_name_is_accepted(jump: JumpHost) -> None:
    name = jump.name("a" * (31 - len(jump.prefix)))
    assert len(name) == 31
    proc = jump.proxyd(
        "add", name, "--key", f"{jump.key('good')}.pub", "--expires", days_ahead(30).isoformat()
    )
    assert proc.returncode == 0, proc.stderr


def test_every_existing_system_account_is_refused(jump: JumpHost) -> None:
    key = jump.key("good")
    names = [e.pw_name for e in pwd.getpwall() if re.fullmatch(r"[a-z][a-z0-9-]{1,30}", e.pw_name)]
    assert "root" in names
    for name in names:
        proc = jump.proxyd(
            "add", name, "--key", f"{key}.pub", "--expires", days_ahead(30).isoformat(), "--dry-run"
        )
        assert proc.returncode == 1, (name, proc.stdout)
        assert name in proc.stderr


def test_existing_unmanaged_user_is_refused_and_untouched(jump: JumpHost) -> None:
    name = jump.name("local")
    assert run(["useradd", "--no-create-home", "--comment", "someone", "--", name]).returncode == 0
    before = pwd.getpwnam(name)
    key = jump.key("good")
    proc = jump.proxyd("add", name, "--key", f"{key}.pub", "--expires", days_ahead(30).isoformat())
    assert proc.returncode == 1 and "not manage" in proc.stderr, proc.stderr
    for action in (
        ["remove", name],
        ["renew", name, "--expires", days_ahead(30).isoformat()],
        ["show", name],
    ):
        other = jump.proxyd(*action)
        assert other.returncode == 1, (action, other.stdout)
    assert pwd.getpwnam(name) == before
    assert jump.audit() == []


def test_existing_group_name_is_refused_cleanly(jump: JumpHost) -> None:
    """A name that is an existing group (not a user): useradd would fail; no half account."""
    name = jump.name("grp")
    assert run(["groupadd", "--", name]).returncode == 0
    proc = jump.proxyd(
        "add", name, "--key", f"{jump.key('good')}.pub", "--expires", days_ahead(30).isoformat()
    )
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    assert not user_exists(name) and not (jump.home_base / name).exists()
    assert not files_in(jump.state_dir)


def test_add_twice_is_refused(jump: JumpHost) -> None:
    name, key = jump.add("alice")
    again = jump.proxyd("add", name, "--key", f"{key}.pub", "--expires", days_ahead(30).isoformat())
    assert again.returncode == 1 and "exists" in again.stderr


@pytest.mark.parametrize(
    "expires", ["yesterday", "2001-01-01", "today", "2027-02-30", "31.12.2027", ""]
)
def test_bad_expiry_refused(jump: JumpHost, expires: str) -> None:
    if expires == "yesterday":
        expires = (today_utc() - datetime.timedelta(days=1)).isoformat()
    elif expires == "today":
        expires = today_utc().isoformat()
    name = jump.name("alice")
    proc = jump.proxyd("add", name, "--key", f"{jump.key('good')}.pub", "--expires", expires)
    assert proc.returncode == 1 and proc.stderr.startswith("proxyd: error:"), proc.stderr
    _nothing_written(jump, name)


# --------------------------------------------------------------------------- list/show/renew


def test_list_and_show(jump: JumpHost) -> None:
    name, key = jump.add("alice")
    listed = jump.proxyd("list")
    assert listed.returncode == 0 and name in listed.stdout
    assert fingerprint(Path(f"{key}.pub")) in listed.stdout
    shown = jump.proxyd("show", name)
    assert shown.returncode == 0
    assert days_ahead(30).isoformat() in shown.stdout and "tunnel" in shown.stdout
    assert jump.authorized_keys(name).read_text().strip() in shown.stdout
    assert jump.proxyd("show", jump.name("nobody")).returncode == 1


def test_renew_moves_both_expiries(jump: JumpHost) -> None:
    name, key = jump.add("alice", expires=days_ahead(1))
    later = today_utc() + datetime.timedelta(days=90)
    proc = jump.proxyd("renew", name, "--expires", later.isoformat())
    assert proc.returncode == 0, proc.stderr
    assert shadow_expire_day(name) == epoch_day(later)
    assert f'expiry-time="{later:%Y%m%d}' in jump.authorized_keys(name).read_text()
    past = jump.proxyd("renew", name, "--expires", "2001-01-01")
    assert past.returncode == 1 and shadow_expire_day(name) == epoch_day(later)
    jump.start_sshd()
    assert _can_log_in(jump, name, key)


# --------------------------------------------------------------------------- refused logins


def test_expired_account_refused(jump: JumpHost) -> None:
    """The account's own expiry (chage -E, as time passing would leave it)."""
    name, key = jump.add("alice", expires=days_ahead(1))
    jump.start_sshd()
    assert _can_log_in(jump, name, key)
    assert run(["chage", "-E", today_utc().isoformat(), name]).returncode == 0
    assert not _can_log_in(jump, name, key), "an account expiring today is refused today"
    log = jump.sshd.log()
    assert "expired" in log or "PAM account configuration" in log, log[-2000:]
    assert run(["chage", "-E", days_ahead(1).isoformat(), name]).returncode == 0
    assert _can_log_in(jump, name, key)


def test_expired_key_refused_even_if_the_account_is_valid(jump: JumpHost) -> None:
    """The second layer: the key's expiry-time, in exactly the format proxyd writes, with
    a past date. (A successful login with the written line proves sshd parses it.)"""
    name, key = jump.add("alice", expires=days_ahead(30))
    jump.start_sshd()
    assert _can_log_in(jump, name, key)
    path = jump.authorized_keys(name)
    line = path.read_text()
    past = line.replace(f'expiry-time="{days_ahead(30):%Y%m%d}', 'expiry-time="20010101', 1)
    assert past != line
    path.write_text(past)
    assert not _can_log_in(jump, name, key)
    path.write_text(line)
    assert _can_log_in(jump, name, key), "the same line with the future date works again"


def test_wrong_key_refused(jump: JumpHost) -> None:
    name, _key = jump.add("alice")
    jump.start_sshd()
    assert not _can_log_in(jump, name, jump.key("stranger"))
    via_nc = jump.via_proxycommand(
        jump.client_config(jump.key("stranger"), "stranger"),
        name,
        TARGET_HOST,
        jump.targets.port,
        "echo",
        "ok",
    )
    assert via_nc.returncode != 0 and "Permission denied" in via_nc.stderr


def test_removed_account_refused_and_gone(jump: JumpHost) -> None:
    name, key = jump.add("alice")
    jump.start_sshd()
    assert _can_log_in(jump, name, key)
    proc = jump.proxyd("remove", name)
    assert proc.returncode == 0, proc.stderr
    assert not user_exists(name)
    assert not (jump.home_base / name).exists()
    assert not files_in(jump.state_dir)
    assert not _can_log_in(jump, name, key)
    assert jump.proxyd("remove", name).returncode == 1


def test_remove_ends_a_running_session(jump: JumpHost) -> None:
    name, key = jump.add("alice")
    jump.start_sshd()
    session = _held_session(jump, name, key)
    uid = pwd.getpwnam(name).pw_uid
    assert jump.proxyd("remove", name).returncode == 0
    wait_until(lambda: session.poll() is not None, 20, "the ssh session to end")
    assert live_processes(uid) == [], "no process of the account remains"


def _held_session(jump: JumpHost, name: str, key: Path) -> subprocess.Popen[bytes]:
    """`ssh USER@proxy nc TARGET PORT`, held open (it has read the target's banner)."""
    session = jump.popen_ssh(
        jump.client_config(key, f"held-{name}"),
        "-p",
        str(jump.port),
        f"{name}@{PROXY_HOST}",
        f"nc {TARGET_HOST} {jump.targets.port}",
    )
    assert read_line(session.stdout, 20).startswith(b"SSH-2.0-OpenSSH")
    assert session.poll() is None
    return session


# --------------------------------------------------------------------------- sweep


def test_sweep_removes_expired_accounts_and_ends_their_sessions(jump: JumpHost) -> None:
    expiring, key = jump.add("old", expires=days_ahead(1))
    staying, other = jump.add("new", expires=days_ahead(30))
    jump.start_sshd()
    session = _held_session(jump, expiring, key)
    uid = pwd.getpwnam(expiring).pw_uid
    today = sweep_at(jump, today_utc())
    assert today.returncode == 0, today.stderr
    assert user_exists(expiring) and session.poll() is None, "nothing expired yet"
    later = sweep_at(jump, days_ahead(1))
    assert later.returncode == 0, later.stderr
    assert expiring in later.stdout and staying not in later.stdout
    wait_until(lambda: session.poll() is not None, 20, "the expired account's session to end")
    assert not user_exists(expiring) and not (jump.home_base / expiring).exists()
    assert live_processes(uid) == []
    assert user_exists(staying) and _can_log_in(jump, staying, other)
    assert not _can_log_in(jump, expiring, key)
    actions = [(r["action"], r["name"]) for r in jump.audit()]
    assert ("sweep", expiring) in actions and ("sweep", staying) not in actions
    # The sweep's line names the key and the expiry, though the state is gone by then.
    (swept,) = [r for r in jump.audit() if r["action"] == "sweep"]
    assert swept["kind"] == "jump" and swept["fingerprint"].startswith("SHA256:")
    assert swept["expires"]


def test_sweep_dry_run_changes_nothing(jump: JumpHost) -> None:
    name, _ = jump.add("old", expires=days_ahead(1))
    lines_before = len(jump.audit())
    proc = sweep_at(jump, days_ahead(1) + datetime.timedelta(days=1), "--dry-run")
    assert proc.returncode == 0 and name in proc.stdout, proc.stderr
    assert user_exists(name) and (jump.home_base / name).exists()
    assert len(jump.audit()) == lines_before


# --------------------------------------------------------------------------- audit


def test_audit_log_one_json_line_per_change(jump: JumpHost) -> None:
    key = jump.key("alice")
    name, _ = jump.add("alice", key, expires=days_ahead(30))
    later = days_ahead(30) + datetime.timedelta(days=10)
    assert jump.proxyd("renew", name, "--expires", later.isoformat()).returncode == 0
    assert jump.proxyd("list").returncode == 0  # not a change: no line
    assert jump.proxyd("show", name).returncode == 0
    assert jump.proxyd("remove", name).returncode == 0
    records = jump.audit()
    assert [r["action"] for r in records] == ["add", "renew", "remove"]
    fp = fingerprint(Path(f"{key}.pub"))
    operator = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    for record, expires in zip(records, [days_ahead(30), later, later], strict=True):
        assert record["name"] == name and record["kind"] == "jump"
        assert record["operator"] == operator
        assert record["fingerprint"] == fp
        assert record["expires"] == expires.isoformat()
        stamp = datetime.datetime.fromisoformat(record["time"])
        assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 300
    assert stat.S_IMODE(jump.audit_log.stat().st_mode) & 0o077 == 0
    for line in jump.audit_log.read_text().splitlines():
        json.loads(line)


def test_state_file_is_private(jump: JumpHost) -> None:
    name, _ = jump.add("alice")
    files = [p for p in files_in(jump.state_dir) if p.is_file()]
    assert len(files) == 1 and name in files[0].name
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(jump.state_dir.stat().st_mode) & 0o077 == 0


# --------------------------------------------------------------------------- config knobs


def test_rsa_floor_is_configurable_down_to_2048_only(jump: JumpHost) -> None:
    key = jump.key("rsa2048", "rsa", 2048)
    jump.config["jump"]["rsa_min_bits"] = 2048
    jump.write_config()
    name, _ = jump.add("rsa", key)
    assert user_exists(name)
    jump.config["jump"]["rsa_min_bits"] = 1024
    jump.write_config()
    proc = jump.proxyd("list")
    assert proc.returncode != 0 and "rsa_min_bits" in proc.stderr, proc.stderr


@pytest.mark.parametrize("note", ["line\nbreak", "tab\there", "\x1b[31mred"])
def test_hostile_note_refused(jump: JumpHost, note: str) -> None:
    name = jump.name("alice")
    proc = jump.proxyd(
        "add",
        name,
        "--key",
        f"{jump.key('good')}.pub",
        "--expires",
        days_ahead(30).isoformat(),
        "--note",
        note,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("proxyd: error:"), proc.stderr
    _nothing_written(jump, name)
