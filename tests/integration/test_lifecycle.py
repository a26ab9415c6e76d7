"""Live reload (SIGHUP, `proxyd reload`, users file), and SIGTERM draining open tunnels."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from harness import (
    BANNER,
    Origins,
    ProxydHandle,
    RawConnection,
    add_user,
    clean_env,
    digest_get_status,
    proxyd_bin,
)

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"


def proxyd_reload(proxyd: ProxydHandle) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(proxyd_bin()), "reload", "--config", str(proxyd.config_path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )


def get(
    proxyd: ProxydHandle,
    origins: Origins,
    env: dict[str, str],
    user: str = USER,
    password: str = PASSWORD,
) -> int:
    return digest_get_status(proxyd, origins, env, user, password)


def edit_config(proxyd: ProxydHandle, change) -> None:
    config = yaml.safe_load(proxyd.config_path.read_text())
    change(config)
    proxyd.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def open_tunnel(proxyd: ProxydHandle, origins: Origins) -> RawConnection:
    host, port = origins.speak_first
    conn = RawConnection(proxyd.address)
    _, reply = conn.request_with_digest("CONNECT", f"{host}:{port}", USER, PASSWORD)
    assert reply is not None and reply.status == 200
    assert conn.recv_exact(len(BANNER)) == BANNER
    return conn


def echo(conn: RawConnection, payload: bytes = b"ping\n") -> None:
    conn.send(payload)
    assert conn.recv_exact(len(payload)) == payload


def drop_http_port(origins: Origins):
    def change(config: dict) -> None:
        for rule in config["rules"]:
            rule["ports"] = [p for p in rule["ports"] if p != origins.http[1]]

    return change


def test_sighup_applies_new_policy_and_keeps_tunnels(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    assert get(proxyd, origins, client_env) == 200
    tunnel = open_tunnel(proxyd, origins)
    edit_config(proxyd, drop_http_port(origins))
    proxyd.proc.send_signal(signal.SIGHUP)
    proxyd.wait_for_log("config reloaded")
    assert get(proxyd, origins, client_env) == 403
    echo(tunnel)  # an open tunnel is not cut by a reload
    tunnel.close()


def test_broken_config_is_refused_and_old_policy_keeps_serving(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    text = proxyd.config_path.read_text()
    proxyd.config_path.write_text(text.replace("testzone", "tetszone", 1))
    proxyd.proc.send_signal(signal.SIGHUP)
    proxyd.wait_for_log("reload refused")
    assert "unknown zone" in proxyd.log()
    assert get(proxyd, origins, client_env) == 200
    assert proxyd.proc.poll() is None


def test_proxyd_reload_command_signals_via_pid_file(
    proxyd_factory, origins: Origins, client_env: dict[str, str], tmp_path: Path
) -> None:
    proxyd = proxyd_factory(pid_file=str(tmp_path / "proxyd.pid"))
    assert (tmp_path / "proxyd.pid").read_text().strip() == str(proxyd.proc.pid)
    edit_config(proxyd, drop_http_port(origins))
    run = proxyd_reload(proxyd)
    assert run.returncode == 0, run.stderr
    proxyd.wait_for_log("config reloaded")
    assert get(proxyd, origins, client_env) == 403
    proxyd.stop()
    assert not (tmp_path / "proxyd.pid").exists()


def test_reload_without_pid_file_is_a_clear_error(proxyd: ProxydHandle) -> None:
    run = proxyd_reload(proxyd)
    assert run.returncode == 1
    assert "no pid_file" in run.stderr and "Traceback" not in run.stderr


def test_new_user_is_seen_within_two_seconds(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    assert get(proxyd, origins, client_env, "bob", "bob-password") == 407
    add_user(proxyd.config_path, "bob", "bob-password", clean_env())
    deadline = time.monotonic() + 2.0
    while get(proxyd, origins, client_env, "bob", "bob-password") != 200:
        assert time.monotonic() < deadline, "new user not seen within 2 s"
        time.sleep(0.1)


def test_sigterm_stops_accepting_and_drains_open_tunnels(
    proxyd: ProxydHandle, origins: Origins
) -> None:
    tunnel = open_tunnel(proxyd, origins)
    proxyd.proc.send_signal(signal.SIGTERM)
    proxyd.wait_for_log("draining 1 open tunnel")
    with pytest.raises(OSError):
        RawConnection(proxyd.address).close()  # the listener is closed
    echo(tunnel)  # the open tunnel still works while draining
    tunnel.close()
    assert proxyd.proc.wait(timeout=10) == 0


def test_sigterm_drain_is_bounded_by_drain_timeout(proxyd_factory, origins: Origins) -> None:
    proxyd = proxyd_factory(drain_timeout=1)
    tunnel = open_tunnel(proxyd, origins)
    started = time.monotonic()
    proxyd.proc.send_signal(signal.SIGTERM)
    assert proxyd.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert "still open after 1" in proxyd.log()
    tunnel.close()
