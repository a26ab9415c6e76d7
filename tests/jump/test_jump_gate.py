"""The forced command (`proxyd jump-gate`) through real ssh: only `nc HOST PORT`.

Every hostile command tries to create a marker file in a world-writable folder: if any
part of it ran (as the account, through its login shell or otherwise), the file exists.
Each refusal is exactly one `proxyd: refused:` line and exit status 1.
"""

from __future__ import annotations

import pytest
from jumpkit import PROXY_HOST, TARGET_HOST, JumpHost, port_of, refused_lines


@pytest.fixture
def gate(jump: JumpHost) -> tuple[JumpHost, str, object]:
    name, key = jump.add("alice")
    jump.start_sshd()
    return jump, name, jump.client_config(key)


def _hostile(port: int, marker: str) -> dict[str, str]:
    t = f"{TARGET_HOST} {port}"
    return {
        "nc-e": f"nc -e /bin/sh {t}",
        "nc-e-touch": f"nc -e /usr/bin/touch {marker} {port}",
        "nc-c": f"nc -c 'touch {marker}' {t}",
        "semicolon": f"nc {t}; touch {marker}",
        "and": f"nc {t} && touch {marker}",
        "or": f"nc {TARGET_HOST} 1 || touch {marker}",
        "pipe-sh": f"nc {t} | sh",
        "pipe-touch": f"nc {t} | touch {marker}",
        "dollar-paren": f"$(touch {marker})",
        "dollar-paren-host": f"nc $(touch {marker}) {port}",
        "backticks": f"`touch {marker}`",
        "backticks-port": f"nc {TARGET_HOST} `touch {marker}`",
        "extra-arg": f"nc {t} extra",
        "extra-arg-touch": f"nc {t} touch {marker}",
        "newline": f"nc {t}\ntouch {marker}",
        "trailing-newline": f"nc {t}\n",
        "cr": f"nc {t}\rtouch {marker}",
        "tab": f"nc\t{TARGET_HOST}\t{port}",
        "double-space": f"nc  {t}",
        "leading-space": f" nc {t}",
        "trailing-space": f"nc {t} ",
        "redirect": f"nc {t} > {marker}",
        "ampersand": f"nc {t} & touch {marker}",
        "plain-shell": f"touch {marker}",
        "sh-c": f"sh -c 'touch {marker}'",
        "absolute-nc": f"/bin/nc {t}",
        "ncat": f"ncat {t}",
        "proxy-option": f"nc -X connect -x 127.0.0.1:3128 {t}",
        "dash-host": f"nc -e {port}",
        "env-assign": f"PATH=/tmp nc {t}",
        "glob-host": f"nc 127.0.0.* {port}",
        "brace": f"nc {{{TARGET_HOST},127.0.0.3}} {port}",
        "port-range": f"nc {TARGET_HOST} {port}-{port + 1}",
        "port-zero": f"nc {TARGET_HOST} 0",
        "port-huge": f"nc {TARGET_HOST} 99999",
        "port-negative": f"nc {TARGET_HOST} -1",
        "scp-sink": "scp -t /tmp",
        "rsync": "rsync --server -e.Lsfx . /tmp",
        "empty": "",
    }


_CASES = sorted(_hostile(22, "M"))


@pytest.mark.parametrize("case", _CASES)
def test_hostile_command_refused_and_nothing_runs(gate, case: str) -> None:
    jump, name, config = gate
    marker = jump.markers / f"m-{case}"
    command = _hostile(jump.targets.port, str(marker))[case]
    proc = jump.on_proxy(config, name, command)
    assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
    assert proc.stdout == "", "nothing relayed"
    lines = refused_lines(proc.stderr)
    assert len(lines) == 1, (command, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), f"{command!r} ran something"
    assert jump.targets.hits() == 0


def test_sftp_subsystem_refused(gate) -> None:
    """A subsystem request meets the forced command too (sshd passes the subsystem's
    command as SSH_ORIGINAL_COMMAND). sshd discards a subsystem's stderr, so the refusal
    line does not reach the client; the exit status does, and the real sftp client fails."""
    jump, name, config = gate
    proc = jump.on_proxy(config, name, "sftp", options=("-s",))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    from jumpkit import client_env, run

    sftp = run(
        ["sftp", "-F", str(config), "-P", str(jump.port), "-b", "-", f"{name}@{PROXY_HOST}"],
        input="ls /\n",
        env=client_env(jump.client_home),
        timeout=30,
    )
    assert sftp.returncode != 0 and "bin" not in sftp.stdout, sftp.stdout


def test_the_exact_form_works_as_a_baseline(gate) -> None:
    """The same account and path that refuses the cases above relays `nc HOST PORT`."""
    jump, name, config = gate
    proc = jump.on_proxy(config, name, f"nc {TARGET_HOST} {jump.targets.port}")
    assert proc.stdout.startswith("SSH-2.0-OpenSSH"), proc.stderr
    assert refused_lines(proc.stderr) == []


def test_refusal_names_the_reason(gate) -> None:
    jump, name, config = gate
    outside = jump.on_proxy(config, name, f"nc 127.0.0.3 {port_of(jump.targets.denied)}")
    port = jump.on_proxy(config, name, f"nc {TARGET_HOST} {port_of(jump.targets.offport)}")
    form = jump.on_proxy(config, name, "id")
    assert "outside" in refused_lines(outside.stderr)[0]
    assert "port" in refused_lines(port.stderr)[0]
    assert "nc HOST PORT" in refused_lines(form.stderr)[0]


def test_unresolvable_name_is_a_clean_refusal(gate) -> None:
    """A name that does not resolve: one line, no traceback."""
    jump, name, config = gate
    proc = jump.on_proxy(config, name, f"nc no-such-host.invalid {jump.targets.port}")
    assert proc.returncode == 1
    assert len(refused_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr


def test_gate_needs_ssh_original_command_and_runs_nothing_locally(jump: JumpHost) -> None:
    """Run directly (as root, outside sshd): same grammar, same refusals."""
    from jumpkit import run

    marker = jump.markers / "direct"
    env = {"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": f"nc {PROXY_HOST} 22; touch {marker}"}
    proc = run([str(jump.gate), "jump-gate", "--config", str(jump.config_path)], env=env)
    assert proc.returncode == 1 and len(refused_lines(proc.stderr)) == 1
    assert not marker.exists()
