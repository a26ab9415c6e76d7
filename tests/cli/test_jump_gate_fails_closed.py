"""`proxyd jump-gate` fails closed: an error nobody expected refuses, like a policy denial.

The gate is the jump host's enforcement point. Each fault below is injected where the
gate decides (reading the config, parsing the target, resolving, the policy); the gate
must answer one `proxyd: refused: internal error` line, exit 1, open no connection, and
leave the traceback to syslog, not to the partner.
"""

from __future__ import annotations

import socket
import syslog
from pathlib import Path

import pytest

from proxy.cli import jump as jump_cli
from proxy.cli.main import main
from proxy.core import config
from proxy.core.policy import Policy
from proxy.effects import resolver

CONFIG = """\
listen: 127.0.0.1:3128
realm: proxyd
auth:
  users_file: users.digest
  nonce_secret_file: nonce.secret
dns:
  hosts_file: hosts
zones:
  prod: [160.44.192.0/20]
rules:
  - name: partners
    from: [any]
    to: [prod]
    ports: [22]
    auth: required
"""


def boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom: a bug nobody expected")


FAULTS = {
    "config": (config, "load"),
    "target": (jump_cli, "parse_target"),
    "policy": (Policy, "open_to_anyone"),
    "resolver": (resolver.Resolver, "resolve"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_unexpected_error_refuses(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    path = tmp_path / "proxyd.yaml"
    path.write_text(CONFIG)
    (tmp_path / "hosts").write_text("160.44.192.10 bastion.prod.test\n")
    target = "bastion.prod.test" if fault == "resolver" else "160.44.192.10"
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"nc {target} 22")
    owner, name = FAULTS[fault]
    monkeypatch.setattr(owner, name, boom)
    connections: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connections.append(a))
    logged: list[str] = []
    monkeypatch.setattr(syslog, "syslog", lambda priority, line: logged.append(line))

    assert main(["jump-gate", "--config", str(path)]) == 1

    out, err = capsys.readouterr()
    assert (out, err) == ("", "proxyd: refused: internal error\n")
    assert connections == []
    assert "RuntimeError: boom: a bug nobody expected" in logged
    assert logged[0].startswith("Traceback")
