"""Attacks from the accounts themselves and from odd spellings: other ways to write the
denied address, IPv6 entries in PermitOpen, a shell account tampering with its own
~/.ssh, names that walk out of the state folder, processes left behind after logout."""

from __future__ import annotations

import datetime
import json
import pwd
import re
import stat
from pathlib import Path

import pytest
from jumpkit import (
    DENIED_HOST,
    JumpHost,
    SpeakFirst,
    days_ahead,
    live_processes,
    port_of,
    refused_lines,
    run,
    user_exists,
    wait_until,
)

# --------------------------------------------------------------------------- address spellings


DENIED_SPELLINGS = [
    "127.3",
    "127.0.3",
    "2130706435",
    "0x7f000003",
    "0177.0.0.3",
    "127.000.000.003",
    "::ffff:127.0.0.3",
    "[::ffff:127.0.0.3]",
    "::ffff:7f00:3",
    "evil.test.",
    "EVIL.TEST",
]


@pytest.mark.parametrize("spelling", DENIED_SPELLINGS)
def test_gate_refuses_every_spelling_of_the_denied_address(jump: JumpHost, spelling: str) -> None:
    name, key = jump.add("alice")
    jump.start_sshd()
    config = jump.client_config(key)
    proc = jump.on_proxy(config, name, f"nc {spelling} {port_of(jump.targets.denied)}")
    assert proc.returncode == 1, (spelling, proc.stdout)
    assert proc.stdout == "" and len(refused_lines(proc.stderr)) == 1, proc.stderr
    host = f"[{spelling}]" if ":" in spelling and not spelling.startswith("[") else spelling
    w = jump.on_proxy(config, name, options=("-W", f"{host}:{port_of(jump.targets.denied)}"))
    assert "administratively prohibited" in w.stderr, (spelling, w.stderr)
    assert jump.targets.hits() == 0


@pytest.mark.parametrize("spelling", ["127.2", "2130706434", "::ffff:127.0.0.2", "TARGET.TEST"])
def test_gate_canonicalises_spellings_of_the_allowed_address(jump: JumpHost, spelling: str) -> None:
    name, key = jump.add("alice")
    jump.start_sshd()
    proc = jump.on_proxy(jump.client_config(key), name, f"nc {spelling} {jump.targets.port}")
    assert proc.stdout.startswith("SSH-2.0-OpenSSH"), (spelling, proc.stderr)


def test_ipv6_zone_entries_work_in_permitopen_and_the_gate(jump: JumpHost) -> None:
    server = SpeakFirst("::1", 0)
    try:
        port = int(server.server_address[1])
        jump.config["zones"]["testzone"].append("::1/128")
        jump.config["rules"][0]["ports"].append(port)
        jump.config["jump"]["ports"].append(port)
        jump.write_config()
        assert f"[::1]:{port}" in jump.sshd_block()
        name, key = jump.add("alice")
        jump.start_sshd()
        config = jump.client_config(key)
        w = jump.on_proxy(config, name, options=("-W", f"[::1]:{port}"))
        assert w.stdout.startswith("SSH-2.0-proxyd-jump"), w.stderr
        nc = jump.on_proxy(config, name, f"nc ::1 {port}")
        assert nc.stdout.startswith("SSH-2.0-proxyd-jump"), nc.stderr
        assert server.hits == 2
    finally:
        server.stop()


# --------------------------------------------------------------------------- shell accounts


def _shell_account(jump: JumpHost) -> tuple[str, Path]:
    name, key = jump.add("shelly", profile="shell")
    jump.start_sshd()
    return name, key


def test_shell_account_cannot_change_its_own_authorized_keys(jump: JumpHost) -> None:
    name, key = _shell_account(jump)
    extra = Path(f"{jump.key('friend')}.pub").read_text()
    proc = jump.on_proxy(
        jump.client_config(key), name, f"echo '{extra.strip()}' >> ~/.ssh/authorized_keys"
    )
    assert proc.returncode != 0
    assert jump.authorized_keys(name).read_text().count("\n") == 1


def test_renew_does_not_follow_a_planted_ssh_symlink(jump: JumpHost) -> None:
    name, key = _shell_account(jump)
    victim = jump.directory / "victim"  # stands for /etc: root's, 0755
    victim.mkdir(mode=0o755)
    (victim / "keep").write_text("root's file\n")
    proc = jump.on_proxy(jump.client_config(key), name, f"rm -rf ~/.ssh && ln -s {victim} ~/.ssh")
    assert proc.returncode == 0, proc.stderr
    renew = jump.proxyd(
        "renew", name, "--expires", (days_ahead(30) + datetime.timedelta(days=1)).isoformat()
    )
    # Whatever renew answers, root's directory must stay root's and unchanged.
    assert victim.stat().st_uid == 0, f"renew chowned {victim} to {name} ({renew.stderr})"
    assert sorted(p.name for p in victim.iterdir()) == ["keep"]


def test_remove_ends_processes_left_behind_by_a_shell_account(jump: JumpHost) -> None:
    """A shell account starts orphans that outlive its session, some forking in a loop."""
    name, key = _shell_account(jump)
    uid = pwd.getpwnam(name).pw_uid
    spawner = "while :; do (sleep 60 &) ; sleep 0.01; done"
    proc = jump.on_proxy(
        jump.client_config(key),
        name,
        f"nohup setsid sh -c '{spawner}' >/dev/null 2>&1 < /dev/null & "
        "nohup setsid sleep 600 >/dev/null 2>&1 < /dev/null & echo started",
    )
    assert proc.stdout.strip() == "started", proc.stderr
    wait_until(lambda: len(live_processes(uid)) >= 3, 10, "the orphans to run")
    removed = jump.proxyd("remove", name)
    assert removed.returncode == 0, removed.stderr
    assert not user_exists(name)
    wait_until(lambda: live_processes(uid) == [], 5, "every process of the account to end")


# --------------------------------------------------------------------------- names that walk


def _planted_record(jump: JumpHost) -> str:
    """An unmanaged account (the victim) and a state-like .json naming it, outside the
    state folder (as a shell account could leave one in its home)."""
    victim = jump.name("victim")
    assert run(["useradd", "--no-create-home", "--", victim]).returncode == 0
    jump.state_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "name": victim,
        "profile": "tunnel",
        "expires": days_ahead(30).isoformat(),
        "note": "",
        "fingerprint": "SHA256:x",
        "key": "ssh-ed25519 AAAA",
    }
    (jump.directory / "planted.json").write_text(json.dumps(record))
    return victim


def test_remove_refuses_a_name_outside_the_state_folder(jump: JumpHost) -> None:
    victim = _planted_record(jump)
    proc = jump.proxyd("remove", "../planted")
    assert user_exists(victim), f"remove ../planted deleted {victim} (rc {proc.returncode})"
    assert proc.returncode == 1


def test_show_and_renew_refuse_a_name_outside_the_state_folder(jump: JumpHost) -> None:
    _planted_record(jump)
    for action in (
        ["show", "../planted"],
        ["renew", "../planted", "--expires", days_ahead(30).isoformat()],
    ):
        proc = jump.proxyd(*action)
        assert proc.returncode == 1, (action, proc.stdout)


def test_state_name_mismatch_is_not_trusted(jump: JumpHost) -> None:
    """A state file whose recorded name differs from its file name (hand-edited, or a
    restore gone wrong) must not make `remove NAME` act on another account."""
    name, _ = jump.add("alice")
    victim = jump.name("victim")
    assert run(["useradd", "--no-create-home", "--", victim]).returncode == 0
    path = jump.state_dir / f"{name}.json"
    record = json.loads(path.read_text())
    record["name"] = victim
    path.write_text(json.dumps(record))
    jump.proxyd("remove", name)
    assert user_exists(victim), "remove acted on the name inside the file"


# --------------------------------------------------------------------------- homes


def test_home_is_not_writable_by_others(jump: JumpHost) -> None:
    name, _ = jump.add("alice")
    home = jump.home_base / name
    mode = stat.S_IMODE(home.stat().st_mode)
    assert mode & 0o022 == 0, oct(mode)
    assert home.stat().st_uid == pwd.getpwnam(name).pw_uid


def test_key_comment_cannot_smuggle_options_into_the_line(jump: JumpHost) -> None:
    """A comment that looks like options stays a comment: sshd sees one key, our options."""
    good = Path(f"{jump.key('alice')}.pub").read_text().split()
    sneaky = jump.directory / "sneaky.pub"
    sneaky.write_text(f'{good[0]} {good[1]} x",command="/bin/sh",permitopen="*:*\n')
    name = jump.name("alice")
    proc = jump.proxyd("add", name, "--key", str(sneaky), "--expires", days_ahead(30).isoformat())
    if proc.returncode != 0:
        assert proc.returncode == 1 and not user_exists(name)
        return
    line = jump.authorized_keys(name).read_text()
    options = line.split(f" {good[0]} ")[0]
    assert options.count("command=") == 1 and "permitopen" not in options
    jump.start_sshd()
    via = jump.via_jump(
        jump.client_config(jump.key("alice")),
        name,
        DENIED_HOST,
        port_of(jump.targets.denied),
        "true",
    )
    assert via.returncode == 255 and jump.targets.hits() == 0


def test_sshd_config_block_is_the_last_thing_in_sshd_config(jump: JumpHost) -> None:
    """The block starts with Match: it must be appended, and its lines are sshd keywords
    `sshd -t` accepts (checked when the jump sshd starts)."""
    block = jump.sshd_block()
    lines = [
        line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == f"Match Group {jump.group}"
    keywords = {line.split()[0] for line in lines[1:]}
    assert {"PermitOpen", "AllowTcpForwarding", "PermitListen", "X11Forwarding"} <= keywords
    assert re.search(r"AllowAgentForwarding\s+no", block)
    jump.start_sshd()
    config = (jump.directory / "jump_sshd_config").read_text()
    assert config.rstrip().endswith(block.rstrip())
