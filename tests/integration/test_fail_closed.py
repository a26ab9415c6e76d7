"""Fail closed, against a real `proxyd serve`: nothing proxyd has not admitted passes.

The reported bypass (one 0xFF byte in a Digest parameter made proxyd an open proxy) as
regression tests, then each lock proven with the other one broken on purpose
(`faulty_proxyd.py`). On the engine's path: the gate's boundary, the guard's per-request
check, its `server_connect` check, and `next_layer`, which closes tunnels it has no record
of (CONNECTs reach the engine there through a broken dispatch, `front-off`). On the
front's path: the same boundary, the second lock (the policy asked again before a dial),
and a failure outside the boundary, which closes the connection unanswered.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from harness import (
    BANNER,
    DENIED_HOST,
    ORIGIN_HOST,
    Origins,
    ProxydHandle,
    RawConnection,
    parse_challenge,
)
from test_observability import admin_get, samples, value

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
FAULTY = [sys.executable, str(Path(__file__).with_name("faulty_proxyd.py"))]
ADMIN_RE = re.compile(r"admin listening on ([\d.]+):(\d+)")


def ff_header(nonce: str, uri: str) -> str:
    """The attack: user bob (who doesn't exist), a garbage response, a raw 0xFF cnonce.
    `RawConnection.request` sends header text as latin-1, so \\xff is the byte 0xFF."""
    return (
        f'Digest username="bob", realm="proxyd", nonce="{nonce}", uri="{uri}", '
        f'response="00000000000000000000000000000000", qop=auth, nc=00000001, '
        f'cnonce="\xff", algorithm=MD5'
    )


def a_nonce(proxyd: ProxydHandle, origins: Origins) -> str:
    host, port = origins.http
    with RawConnection(proxyd.address) as conn:
        reply = conn.request("GET", f"http://{host}:{port}/")
    assert reply.status == 407
    return parse_challenge(reply.header_all("Proxy-Authenticate")[0])["nonce"]


def admin_port(proxyd: ProxydHandle) -> int:
    return int(proxyd.wait_for_log(ADMIN_RE).group(2))


def attack_targets(proxyd: ProxydHandle, origins: Origins) -> list[tuple[str, str]]:
    """(method, target) toward a denied, an allowed destination and the admin port."""
    denied = f"{DENIED_HOST}:{origins.denied_http[1]}"
    allowed = f"{ORIGIN_HOST}:{origins.https[1]}"
    admin = f"127.0.0.1:{admin_port(proxyd)}"
    return [
        ("CONNECT", denied),
        ("CONNECT", allowed),
        ("CONNECT", admin),
        ("GET", f"http://{denied}/"),
        ("GET", f"http://{ORIGIN_HOST}:{origins.http[1]}/"),
        ("GET", f"http://{admin}/metrics"),
    ]


def nothing_reached(origins: Origins) -> None:
    assert origins.denied_hits() == 0
    assert origins.hits("http") == 0
    assert origins.hits("https") == 0


@pytest.mark.parametrize("faults", [None, "guard-off"], ids=["whole", "gate-alone"])
def test_a_byte_outside_the_grammar_is_refused_never_relayed(
    proxyd_factory, origins: Origins, faults: str | None
) -> None:
    proxyd = proxyd_factory(
        admin_listen="127.0.0.1:0", launcher=[*FAULTY, faults] if faults else None
    )
    nonce = a_nonce(proxyd, origins)
    for method, target in attack_targets(proxyd, origins):
        with RawConnection(proxyd.address) as conn:
            reply = conn.request(method, target, {"Proxy-Authorization": ff_header(nonce, target)})
            assert reply.status == 400, (method, target, reply.status)
            assert "0xff" in reply.text
            if method == "CONNECT":  # nothing relayed after the answer
                conn.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"proxyd_" not in conn.recv_available(0.3)
    nothing_reached(origins)
    # The last access-log line may still be on its way through the pipe: bounded wait.
    deadline = time.monotonic() + 5
    while proxyd.log().count("auth=bad_request") < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = proxyd.log()
    assert log.count("auth=bad_request") == 6
    assert "Addon error" not in log and "Traceback" not in log


def test_a_fault_inside_admission_is_a_500_logged_once_and_counted(
    proxyd_factory, origins: Origins
) -> None:
    proxyd = proxyd_factory(admin_listen="127.0.0.1:0", launcher=[*FAULTY, "core-raises"])
    for method, target in attack_targets(proxyd, origins):
        with RawConnection(proxyd.address) as conn:
            reply = conn.request(method, target)
            assert reply.status == 500, (method, target)
            assert reply.text == "proxyd: internal error\n"
    nothing_reached(origins)
    log = proxyd.log()
    assert log.count("internal error while admitting") == 6
    assert len(re.findall(r" TCP_[A-Z]+/500 0 (GET|CONNECT) ", log)) == 6  # access-log lines
    assert log.count("RuntimeError: injected fault") == 6
    _, text = admin_get(proxyd, "/metrics")
    assert value(samples(text), "proxyd_internal_errors_total", where="admission") == 6


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_the_guard_refuses_when_the_gate_never_ran(
    proxyd_factory, origins: Origins, method: str
) -> None:
    """The gate's hooks raise outside its boundary; mitmproxy logs and carries on."""
    faults = "gate-raises,front-off" if method == "CONNECT" else "gate-raises"
    proxyd = proxyd_factory(admin_listen="127.0.0.1:0", launcher=[*FAULTY, faults])
    for _, target in [t for t in attack_targets(proxyd, origins) if t[0] == method]:
        with RawConnection(proxyd.address) as conn:
            assert conn.request(method, target).status == 500
    nothing_reached(origins)
    proxyd.wait_for_log("refused a request that was never admitted")  # written after the 500


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_server_connect_refuses_when_gate_and_guard_check_are_broken(
    proxyd_factory, origins: Origins, method: str
) -> None:
    faults = "gate-raises,guard-check-raises" + (",front-off" if method == "CONNECT" else "")
    proxyd = proxyd_factory(admin_listen="127.0.0.1:0", launcher=[*FAULTY, faults])
    for _, target in [t for t in attack_targets(proxyd, origins) if t[0] == method]:
        with RawConnection(proxyd.address) as conn:
            reply = conn.request(method, target)
            assert reply.status >= 500, (target, reply.status)
    nothing_reached(origins)
    proxyd.wait_for_log("refused an upstream connection")
    _, text = admin_get(proxyd, "/metrics")
    assert value(samples(text), "proxyd_internal_errors_total", where="guard") == 3


def test_next_layer_closes_a_tunnel_with_no_admission_record(
    proxyd_factory, origins: Origins
) -> None:
    """Every other lock broken: the upstream connection opens (eager), but not one byte
    is relayed either way."""
    proxyd = proxyd_factory(
        launcher=[*FAULTY, "gate-raises,guard-check-raises,guard-connect-off,front-off"]
    )
    host, port = origins.speak_first
    with RawConnection(proxyd.address) as conn:
        reply = conn.request("CONNECT", f"{host}:{port}")
        conn.send(b"hello")
        rest = conn.recv_available(1.0)
        assert BANNER not in rest and b"hello" not in rest
        assert conn.is_closed_by_peer()
    assert reply.status in (200, 500)
    proxyd.wait_for_log("closed a tunnel from 127.0.0.1 that was never admitted")


def test_the_fronts_second_lock_refuses_what_a_broken_core_admits(
    proxyd_factory, origins: Origins
) -> None:
    proxyd = proxyd_factory(admin_listen="127.0.0.1:0", launcher=[*FAULTY, "front-core-admits"])
    connects = [t for t in attack_targets(proxyd, origins) if t[0] == "CONNECT"]
    for method, target in connects:
        with RawConnection(proxyd.address) as conn:
            reply = conn.request(method, target)
            assert reply.status == 500, (target, reply.status)
            conn.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"proxyd_" not in conn.recv_available(0.3)
    nothing_reached(origins)
    assert proxyd.log().count("the policy does not allow what admission admitted") == 3
    _, text = admin_get(proxyd, "/metrics")
    assert value(samples(text), "proxyd_internal_errors_total", where="guard") == 3


def test_a_front_failure_outside_the_boundary_closes_the_connection_unanswered(
    proxyd_factory, origins: Origins
) -> None:
    proxyd = proxyd_factory(admin_listen="127.0.0.1:0", launcher=[*FAULTY, "front-raises"])
    for method, target in [t for t in attack_targets(proxyd, origins) if t[0] == "CONNECT"]:
        with RawConnection(proxyd.address) as conn:
            conn.send(f"{method} {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert conn.recv_available(1.0) == b""
            assert conn.is_closed_by_peer()
    nothing_reached(origins)
    # Logged as each handler ends, just after its close: bounded wait for the third line.
    deadline = time.monotonic() + 5
    while proxyd.log().count("connection handler crashed") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxyd.log().count("connection handler crashed") == 3


def test_the_boundarys_log_line_never_holds_the_user_info_of_a_connect_target(
    proxyd_factory, origins: Origins
) -> None:
    proxyd = proxyd_factory(launcher=[*FAULTY, "core-raises"])
    target = f"alice:s3cr3t-pw@{ORIGIN_HOST}:{origins.https[1]}"
    with RawConnection(proxyd.address) as conn:
        assert conn.request("CONNECT", target).status == 500
    proxyd.wait_for_log(rf"TCP_TUNNEL/500 0 CONNECT \*\*\*@{ORIGIN_HOST}:{origins.https[1]} ")
    assert "s3cr3t-pw" not in proxyd.log()
