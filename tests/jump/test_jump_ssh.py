"""Real ssh through a real sshd configured with `proxyd jump sshd-config`: the guide's
`ProxyCommand ... nc %h %p` form (the forced command) and `-J` (direct-tcpip, PermitOpen).

Allowed: root@127.0.0.2 on the target port runs `echo ok` through the jump host.
Refused: 127.0.0.3 (outside every zone), a port the policy allows but jump.ports does
not, a port in jump.ports that no rule allows; the speak-first servers listening there
count connections, and the count must stay 0 (a refusal that still connected is a leak).
"""

from __future__ import annotations

import datetime
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time

import pytest
from jumpkit import (
    DENIED_HOST,
    PROXY_HOST,
    TARGET_HOST,
    JumpHost,
    client_env,
    free_port,
    port_of,
    read_line,
    refused_lines,
    run,
    today_utc,
    wait_until,
)

PROHIBITED = "administratively prohibited"


@pytest.fixture
def tunnel(jump: JumpHost) -> tuple[JumpHost, str, object]:
    name, key = jump.add("alice")
    jump.start_sshd()
    return jump, name, jump.client_config(key)


def _refused_destinations(jump: JumpHost) -> list[tuple[str, str, int]]:
    t = jump.targets
    return [
        ("outside the zones", DENIED_HOST, port_of(t.denied)),
        ("policy port, not in jump.ports", TARGET_HOST, port_of(t.offport)),
        ("jump.ports, in no rule", TARGET_HOST, port_of(t.jumponly)),
    ]


# --------------------------------------------------------------------------- allowed


def test_proxycommand_nc_form_reaches_allowed_target(tunnel) -> None:
    jump, name, config = tunnel
    proc = jump.via_proxycommand(config, name, TARGET_HOST, jump.targets.port, "echo", "ok")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert jump.targets.hits() == 0


def test_jump_form_reaches_allowed_target(tunnel) -> None:
    jump, name, config = tunnel
    proc = jump.via_jump(config, name, TARGET_HOST, jump.targets.port, "echo", "ok")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert jump.targets.hits() == 0


def test_proxycommand_by_name_resolves_with_the_configs_hosts_file(tunnel) -> None:
    """`nc target.test PORT`: the gate resolves with dns.hosts_file (127.0.0.2)."""
    jump, name, config = tunnel
    proc = jump.via_proxycommand(config, name, "target.test", jump.targets.port, "echo", "ok")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


def test_w_form_relays_the_target_banner(tunnel) -> None:
    """ssh -W (what -J runs) gives the raw byte stream of the allowed target."""
    jump, name, config = tunnel
    proc = jump.on_proxy(config, name, options=("-W", f"{TARGET_HOST}:{jump.targets.port}"))
    assert proc.stdout.startswith("SSH-2.0-OpenSSH"), (proc.stdout, proc.stderr)


def test_nc_form_relays_the_target_banner(tunnel) -> None:
    jump, name, config = tunnel
    proc = jump.on_proxy(config, name, f"nc {TARGET_HOST} {jump.targets.port}")
    assert proc.stdout.startswith("SSH-2.0-OpenSSH"), (proc.stdout, proc.stderr)


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("case", [0, 1, 2], ids=["outside-zones", "policy-port", "jump-port"])
def test_proxycommand_form_refuses(tunnel, case: int) -> None:
    jump, name, config = tunnel
    why, host, port = _refused_destinations(jump)[case]
    proc = jump.via_proxycommand(config, name, host, port, "echo", "ok")
    assert proc.returncode != 0, why
    assert "ok" not in proc.stdout
    assert len(refused_lines(proc.stderr)) == 1, proc.stderr
    assert jump.targets.hits() == 0, f"{why}: the gate connected before refusing"


@pytest.mark.parametrize("case", [0, 1, 2], ids=["outside-zones", "policy-port", "jump-port"])
def test_jump_form_refuses(tunnel, case: int) -> None:
    jump, name, config = tunnel
    why, host, port = _refused_destinations(jump)[case]
    proc = jump.via_jump(config, name, host, port, "echo", "ok")
    assert proc.returncode == 255, why
    assert "ok" not in proc.stdout
    assert PROHIBITED in proc.stderr, proc.stderr
    assert jump.sshd_denied(host, port)
    assert jump.targets.hits() == 0, f"{why}: sshd connected before refusing"


@pytest.mark.parametrize("host", ["evil.test", "mixed.test"])
def test_proxycommand_refuses_names_resolving_outside(tunnel, host: str) -> None:
    """mixed.test resolves to 127.0.0.2 and 127.0.0.3: every address must be allowed."""
    jump, name, config = tunnel
    proc = jump.on_proxy(config, name, f"nc {host} {port_of(jump.targets.denied)}")
    assert proc.returncode == 1
    assert len(refused_lines(proc.stderr)) == 1, proc.stderr
    assert jump.targets.hits() == 0


def test_w_form_refuses_names(tunnel) -> None:
    """PermitOpen compares the requested host as text, before any lookup: -W evil.test
    is refused, and so is the name of an allowed address (with -J partners give the IP;
    the nc form resolves names with the policy)."""
    jump, name, config = tunnel
    evil = jump.on_proxy(config, name, options=("-W", f"evil.test:{port_of(jump.targets.denied)}"))
    assert PROHIBITED in evil.stderr
    allowed_name = jump.on_proxy(config, name, options=("-W", f"target.test:{jump.targets.port}"))
    assert PROHIBITED in allowed_name.stderr
    assert jump.targets.hits() == 0


def test_local_forward_refused_outside_permitopen(tunnel) -> None:
    """ssh -L to a destination outside the zones: the forward opens locally, but the
    channel is refused and nothing reaches 127.0.0.3."""
    jump, name, config = tunnel
    local = free_port(PROXY_HOST)
    proc = jump.popen_ssh(
        config,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        f"{PROXY_HOST}:{local}:{DENIED_HOST}:{port_of(jump.targets.denied)}",
        "-p",
        str(jump.port),
        f"{name}@{PROXY_HOST}",
    )

    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            socket.create_connection((PROXY_HOST, local), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(listening, 15, "ssh -L to listen")
    with socket.create_connection((PROXY_HOST, local), timeout=5) as s:
        s.settimeout(10)
        assert s.recv(100) == b"", "the refused channel must just close"
    assert jump.targets.hits() == 0


# --------------------------------------------------------------------------- other doors


def test_remote_forwarding_refused(tunnel) -> None:
    jump, name, config = tunnel
    remote = free_port(PROXY_HOST)
    proc = jump.on_proxy(
        config,
        name,
        options=(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            f"{PROXY_HOST}:{remote}:{TARGET_HOST}:{jump.targets.port}",
        ),
    )
    assert proc.returncode == 255
    assert "remote port forwarding failed" in proc.stderr, proc.stderr
    assert not _listening(PROXY_HOST, remote)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _ssh_on_a_terminal(jump: JumpHost, config: object, *args: str) -> tuple[int, str, str]:
    """ssh with a real terminal as stdin/stdout (so -t asks for a pty); (rc, tty, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        jump.ssh_argv(config, *args),  # type: ignore[arg-type]
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=client_env(jump.client_home),
        start_new_session=True,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is gone
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    try:
        rc = proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.stderr is not None
    return rc, output.decode(errors="replace"), proc.stderr.read().decode(errors="replace")


def test_tunnel_has_no_pty_and_no_shell(tunnel) -> None:
    """ssh -t from a real terminal: sshd refuses the pty (key option `restrict`), and the
    OpenSSH client treats a refused, explicitly requested pty as fatal (exit 255), so the
    session ends without output; no shell ever starts."""
    jump, name, config = tunnel
    rc, tty, stderr = _ssh_on_a_terminal(
        jump, config, "-t", "-p", str(jump.port), f"{name}@{PROXY_HOST}"
    )
    assert "PTY allocation request failed" in stderr, stderr
    assert rc == 255, (tty, stderr)
    assert tty.strip() == "", "no prompt, no shell output"


def test_tunnel_pty_request_with_a_command_runs_nothing(tunnel) -> None:
    jump, name, config = tunnel
    marker = jump.markers / "pty"
    rc, tty, stderr = _ssh_on_a_terminal(
        jump, config, "-t", "-p", str(jump.port), f"{name}@{PROXY_HOST}", f"touch {marker}; id"
    )
    assert "PTY allocation request failed" in stderr
    assert rc != 0 and "uid=" not in tty, (tty, stderr)
    assert not marker.exists()


def test_tunnel_without_pty_and_without_command_is_refused(tunnel) -> None:
    jump, name, config = tunnel
    proc = jump.on_proxy(config, name, options=("-T",))
    assert proc.returncode == 1 and proc.stdout == ""
    lines = refused_lines(proc.stderr)
    assert len(lines) == 1 and "no command" in lines[0], proc.stderr


def test_tunnel_effective_sshd_settings(tunnel) -> None:
    """What sshd (-T -C) applies to the account: the Match Group block matched it."""
    jump, name, _config = tunnel
    s = jump.sshd_effective(name)
    assert s["allowtcpforwarding"] == ["local"]
    assert s["allowagentforwarding"] == ["no"]
    assert s["allowstreamlocalforwarding"] == ["no"]
    assert s["x11forwarding"] == ["no"]
    assert s["permittunnel"] == ["no"]
    assert s["permitlisten"] == ["none"]
    assert s["passwordauthentication"] == ["no"]
    assert s["authenticationmethods"] == ["publickey"]
    assert s["permitopen"] == [f"{TARGET_HOST}:{jump.targets.port}"]
    # An account outside the group does not get the block (sanity check of -T -C).
    other = jump.sshd_effective("root")
    assert other["permitopen"] != s["permitopen"]


def test_authorized_keys_line_restricts_everything(tunnel) -> None:
    jump, name, _config = tunnel
    line = jump.authorized_keys(name).read_text()
    assert line.count("\n") == 1 and line.endswith("\n")
    options = line.split(" ssh-ed25519 ")[0]
    assert options.startswith("restrict,")
    assert "port-forwarding" in options
    assert "pty" not in options.replace("restrict", "")
    assert "agent-forwarding" not in options and "x11-forwarding" not in options
    assert f'command="{jump.gate} jump-gate --config {jump.config_path}"' in options
    expiry = re.search(r'expiry-time="(\d{8})Z?"', options)
    assert expiry is not None, options


def test_agent_forwarding_not_available(jump: JumpHost) -> None:
    """Checked on a shell account (a tunnel account cannot run a command to look)."""
    name, key = jump.add("shelly", profile="shell")
    jump.start_sshd()
    config = jump.client_config(key)
    agent_sock = jump.directory / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(agent_sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(agent_sock.exists, 10, "ssh-agent socket")
        env = client_env(jump.client_home) | {"SSH_AUTH_SOCK": str(agent_sock)}
        assert run(["ssh-add", str(key)], env=env).returncode == 0
        proc = jump.on_proxy(config, name, 'echo "sock=[$SSH_AUTH_SOCK]"', options=("-A",), env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "sock=[]\n"
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(10)


# --------------------------------------------------------------------------- shell profile


def test_shell_profile_runs_commands_with_the_same_forwarding_limits(jump: JumpHost) -> None:
    name, key = jump.add("shelly", profile="shell")
    jump.start_sshd()
    config = jump.client_config(key)
    proc = jump.on_proxy(config, name, "echo ok; id -un")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ok\n{name}\n"
    pty = jump.on_proxy(config, name, "tty", options=("-tt",))
    assert pty.stdout.startswith("/dev/pts/"), (pty.stdout, pty.stderr)
    ok = jump.via_jump(config, name, TARGET_HOST, jump.targets.port, "echo", "ok")
    assert ok.returncode == 0 and ok.stdout == "ok\n", ok.stderr
    for _why, host, port in _refused_destinations(jump):
        refused = jump.via_jump(config, name, host, port, "echo", "ok")
        assert refused.returncode == 255 and PROHIBITED in refused.stderr
    remote = free_port(PROXY_HOST)
    r = jump.on_proxy(
        config,
        name,
        options=("-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{remote}:{TARGET_HOST}:22"),
    )
    assert r.returncode == 255 and "remote port forwarding failed" in r.stderr
    assert jump.targets.hits() == 0


# --------------------------------------------------------------------------- policy shapes


def test_rules_for_other_sources_do_not_open_anything(jump: JumpHost) -> None:
    """A rule from a specific source zone (not `any`) is not a partner rule: jump
    accounts must not inherit it, in PermitOpen or in the gate."""
    denied_port = port_of(jump.targets.denied)
    jump.config["zones"]["denied"] = [f"{DENIED_HOST}/32"]
    jump.config["rules"].insert(
        0,
        {
            "name": "internal-only",
            "from": ["internal"],
            "to": ["denied"],
            "ports": [denied_port],
            "auth": "none",
        },
    )
    jump.config["jump"]["ports"].append(denied_port)
    jump.write_config()
    name, key = jump.add("alice")
    jump.start_sshd()
    config = jump.client_config(key)
    assert f"{DENIED_HOST}:" not in jump.sshd_block()
    pc = jump.via_proxycommand(config, name, DENIED_HOST, denied_port, "true")
    assert pc.returncode != 0 and refused_lines(pc.stderr)
    j = jump.via_jump(config, name, DENIED_HOST, denied_port, "true")
    assert j.returncode == 255 and PROHIBITED in j.stderr
    assert jump.targets.hits() == 0


def test_large_zone_expands_into_a_permitopen_sshd_accepts(jump: JumpHost) -> None:
    """A /20 in the partner zone (4096 addresses, like the production pool) becomes 4097
    PermitOpen entries; sshd takes the line and honours its last entry."""
    jump.config["zones"]["testzone"].append("127.1.0.0/20")
    jump.write_config()
    block = jump.sshd_block()
    entries = re.search(r"PermitOpen (.*)", block)
    assert entries is not None
    assert len(entries.group(1).split()) == 4097
    name, key = jump.add("alice")
    jump.start_sshd()
    config = jump.client_config(key)
    assert len(jump.sshd_effective(name)["permitopen"][0].split()) == 4097
    ok = jump.via_jump(config, name, TARGET_HOST, jump.targets.port, "echo", "ok")
    assert ok.returncode == 0 and ok.stdout == "ok\n", ok.stderr
    # The last address of the /20 is permitted: sshd tries to connect (nothing listens).
    last = jump.on_proxy(config, name, options=("-W", f"127.1.15.255:{jump.targets.port}"))
    assert PROHIBITED not in last.stderr and "Connection refused" in last.stderr, last.stderr
    beyond = jump.on_proxy(config, name, options=("-W", f"127.1.16.0:{jump.targets.port}"))
    assert PROHIBITED in beyond.stderr


def test_production_zones_fit_in_sshd(jump: JumpHost) -> None:
    """config/proxyd.yaml's partner zones (a /20 and a /23, port 22) as PermitOpen:
    `sshd -t` accepts the generated config."""
    jump.config["zones"] = {"prod": ["160.44.192.0/20"], "preprod": ["80.158.0.0/23"]}
    jump.config["rules"] = [
        {"name": "partners", "from": ["any"], "to": ["prod", "preprod"], "ports": [22, 443]}
    ]
    jump.config["jump"]["ports"] = [22]
    jump.write_config()
    block = jump.sshd_block()
    entries = re.search(r"PermitOpen (.*)", block)
    assert entries is not None
    listed = entries.group(1).split()
    assert len(listed) == 4096 + 512
    assert "160.44.207.255:22" in listed and "80.158.1.255:22" in listed
    assert not any(e.endswith(":443") for e in listed)
    jump.start_sshd()  # runs sshd -t first


# --------------------------------------------------------------------------- UsePAM no


def test_account_works_with_usepam_no(jump: JumpHost) -> None:
    name, key = jump.add("alice")
    jump.start_sshd(use_pam=False)
    proc = jump.via_jump(
        jump.client_config(key), name, TARGET_HOST, jump.targets.port, "echo", "ok"
    )
    assert proc.stdout == "ok\n", proc.stderr


# --------------------------------------------------------------------------- sessions


def test_long_session_relays_both_ways(tunnel) -> None:
    """A held-open nc session: bytes go both ways through the gate (target banner in,
    our banner out, then the target's kex answer)."""
    jump, name, config = tunnel
    proc = jump.popen_ssh(
        config,
        "-p",
        str(jump.port),
        f"{name}@{PROXY_HOST}",
        f"nc {TARGET_HOST} {jump.targets.port}",
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert read_line(proc.stdout, 15).startswith(b"SSH-2.0-OpenSSH")
    proc.stdin.write(b"SSH-2.0-jumptest\r\n")
    proc.stdin.flush()
    kexinit = proc.stdout.read1(5) if hasattr(proc.stdout, "read1") else proc.stdout.read(5)
    assert len(kexinit) > 0
    proc.stdin.close()
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is not None, "client EOF must end the session"


def test_expiry_date_is_written_for_both_layers(tunnel) -> None:
    jump, name, _config = tunnel
    from jumpkit import epoch_day, shadow_expire_day

    expires = today_utc() + datetime.timedelta(days=30)
    assert shadow_expire_day(name) == epoch_day(expires)
    line = jump.authorized_keys(name).read_text()
    assert f'expiry-time="{expires:%Y%m%d}' in line
