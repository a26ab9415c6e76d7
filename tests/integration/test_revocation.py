"""Revocation is immediate: removing, locking, expiring or changing the password of a
user ends that user's open tunnels and kept-alive connections within about a second,
with an access-log line that says why. Real proxyd, real `proxyd users` CLI."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from harness import (
    BANNER,
    IO_TIMEOUT,
    Origins,
    ProxydHandle,
    RawConnection,
    clean_env,
    proxyd_bin,
)

USER, PASSWORD = "alice", "wonderland"
DEADLINE = 1.0  # seconds from the CLI's return to the cut


def users_cli(proxy: ProxydHandle, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [str(proxyd_bin()), "users", "--config", str(proxy.config_path), *args],
        input=stdin,
        text=True,
        env=clean_env(),
        check=True,
        capture_output=True,
    )


def open_tunnel(proxy: ProxydHandle, origins: Origins) -> RawConnection:
    conn = RawConnection(proxy.address)
    host, port = origins.speak_first
    _, answer = conn.request_with_digest("CONNECT", f"{host}:{port}", USER, PASSWORD)
    assert answer is not None and answer.status == 200
    assert conn.recv_exact(len(BANNER)) == BANNER
    conn.send(b"ping\n")
    assert conn.recv_exact(5) == b"ping\n"
    return conn


def kept_alive(proxy: ProxydHandle, origins: Origins) -> RawConnection:
    conn = RawConnection(proxy.address)
    host, port = origins.http
    _, answer = conn.request_with_digest("GET", f"http://{host}:{port}/k", USER, PASSWORD)
    assert answer is not None and answer.status == 200
    return conn


def cut_within(conn: RawConnection, seconds: float) -> float:
    started = time.monotonic()
    assert conn.is_closed_by_peer(timeout=seconds + 2), "still open"
    return time.monotonic() - started


CHANGES: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "remove": (("remove", USER), None, "removed"),
    "passwd": (("passwd", USER, "--password-stdin"), "another-password\n", "password_changed"),
    "expire": ((), None, "expired"),
    "lock": ((), None, "locked"),
}


def edited(line: str, change: str) -> str:
    if not line.startswith(f"{USER}:"):
        return line
    fields = line.rstrip("\n").split(":")
    if change == "expire":
        fields[4:5] = ["2020-01-01"]  # the first day refused: long past
    else:
        fields[2] = "!" + fields[2]
    return ":".join(fields) + "\n"


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_to_a_user_cuts_its_tunnel_and_its_kept_alive_connection(
    proxyd_factory: Any, origins: Origins, change: str
) -> None:
    proxy = proxyd_factory(users={USER: PASSWORD, "bob": "bobsecret1"})
    tunnel, connection = open_tunnel(proxy, origins), kept_alive(proxy, origins)
    # bob's tunnel must survive alice's change
    bob = RawConnection(proxy.address)
    host, port = origins.speak_first
    _, answer = bob.request_with_digest("CONNECT", f"{host}:{port}", "bob", "bobsecret1")
    assert answer is not None and answer.status == 200
    args, stdin, reason = CHANGES[change]
    if not args:  # an expiry passed, a lock set: as they appear in the users file
        users_file = proxy.config_path.parent / "users.digest"
        lines = users_file.read_text().splitlines(keepends=True)
        users_file.write_text("".join(edited(line, change) for line in lines))
    else:
        users_cli(proxy, *args, stdin=stdin)
    assert cut_within(tunnel, DEADLINE) <= DEADLINE + 0.5
    assert cut_within(connection, DEADLINE) <= DEADLINE + 0.5
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        lines = [line for line in proxy.log().splitlines() if f"auth=revoked_{reason}" in line]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2, proxy.log()
    assert any(" CONNECT " in line for line in lines)
    bob.send(b"still\n")
    assert bob.buffer + bob.recv_exact(len(BANNER) + 6 - len(bob.buffer)) == BANNER + b"still\n"
    for conn in (tunnel, connection, bob):
        conn.close()
