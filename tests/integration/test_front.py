"""The tunnel front on a live proxyd: what a CONNECT meets before its tunnel runs.

A 407 and the retried CONNECT on one connection, answers in one piece, a TLS handshake or
noise on the plain port answered at once, a name whose first address drops SYNs, a client
that gives up while the connect is pending, the handover of other requests to the engine,
an idle tunnel's timeout, and a process out of descriptors. All on loopback, every wait
bounded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ProxydFactory
from harness import (
    INTERNAL_SOURCE,
    IO_TIMEOUT,
    ORIGIN_HOST,
    ProxydHandle,
    RawConnection,
    digest_authorization,
    digest_challenges,
    pick_challenge,
    syn_dropper,
)
from test_observability import admin_get
from test_upstream_timeouts import Origin

SECOND_HOST = "127.0.0.5"  # the live second address of a name


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)  # the client's end, passed on: the tunnel ends


@pytest.fixture
def echo_origin() -> Any:
    origin = Origin(echo)
    yield origin
    origin.close()


def open_rule(ports: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "name": "open",
        "from": ["any"],
        "to": ["testzone"],
        "ports": ports,
        "auth": "none",
        **extra,
    }


def access_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_record(path: Path, match: Any, timeout: float = IO_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in access_records(path):
            if match(record):
                return record
        time.sleep(0.05)
    raise AssertionError(f"no matching access record in {access_records(path)}")


@pytest.fixture
def authed(proxyd_factory: ProxydFactory, echo_origin: Origin) -> ProxydHandle:
    """A proxy whose rule for the echo origin requires Digest."""
    return proxyd_factory(extra_rules=[open_rule([echo_origin.port], auth="required")])


def test_a_407_then_the_retried_connect_on_the_same_connection(
    authed: ProxydHandle, echo_origin: Origin
) -> None:
    proxyd = authed
    target = f"{ORIGIN_HOST}:{echo_origin.port}"
    with RawConnection(proxyd.address) as conn:
        conn.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        # The whole 407 (head and body) arrives in one read: it left in one write.
        conn.sock.settimeout(IO_TIMEOUT)
        first = conn.sock.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 407 ")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        assert len(body) == length and body == b"proxyd: authentication required\n"
        challenges = [
            value
            for name, value in (line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
            if name == "Proxy-Authenticate"
        ]
        assert len(challenges) == 2
        challenge = pick_challenge(
            digest_challenges([("Proxy-Authenticate", c) for c in challenges]), "SHA-256"
        )
        auth = digest_authorization(challenge, "alice", "wonderland", "CONNECT", target)
        second = conn.request("CONNECT", target, [("Proxy-Authorization", auth)])
        assert second.status == 200
        conn.send(b"ping through the tunnel")
        assert conn.recv_exact(len(b"ping through the tunnel")) == b"ping through the tunnel"
    proxyd.wait_for_log(rf"TCP_DENIED/407 \d+ CONNECT {re.escape(target)} ")
    proxyd.wait_for_log(rf"TCP_TUNNEL/200 \d+ CONNECT {re.escape(target)} alice ")


@pytest.mark.parametrize(
    ("opening", "says"),
    [
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32, b"TLS handshake"),
        (b"\x00\x01\x02\xff\xfe", b"did not start with an HTTP request"),
    ],
)
def test_a_tls_handshake_or_noise_on_the_plain_port_gets_a_400_at_once(
    proxyd_factory: ProxydFactory, tmp_path: Path, opening: bytes, says: bytes
) -> None:
    log = tmp_path / "access.log"
    proxyd = proxyd_factory(access_log={"path": str(log), "format": "json"})
    begun = time.monotonic()
    with RawConnection(proxyd.address) as conn:
        conn.send(opening)
        reply = conn.read_response()
        assert reply.status == 400 and says in reply.body
        assert conn.is_closed_by_peer(timeout=2)
    assert time.monotonic() - begun < 1.0  # Squid answers in 0.05 s; no idle-timeout wait
    record = wait_for_record(log, lambda r: r["status"] == 400)
    assert record["client"] == "127.0.0.1" and record["method"] == "-"


def test_a_name_whose_first_address_drops_syns_connects_to_the_second(
    proxyd_factory: ProxydFactory, tmp_path: Path
) -> None:
    with syn_dropper(ORIGIN_HOST) as port:
        live = socket.create_server((SECOND_HOST, port))
        try:
            hosts = tmp_path / "two.hosts"
            hosts.write_text(f"{ORIGIN_HOST} two.test\n{SECOND_HOST} two.test\n")
            proxyd = proxyd_factory(
                extra_rules=[open_rule([port])],
                zones={
                    "testzone": [f"{ORIGIN_HOST}/32", f"{SECOND_HOST}/32"],
                    "internal": [f"{INTERNAL_SOURCE}/32"],
                },
                dns={"hosts_file": str(hosts)},
                upstream={"connect_timeout": 5},
            )
            begun = time.monotonic()
            with RawConnection(proxyd.address) as conn:
                reply = conn.request("CONNECT", f"two.test:{port}")
                took = time.monotonic() - begun
                assert reply.status == 200
                accepted, _ = live.accept()
                with accepted:
                    conn.send(b"hello second")
                    accepted.settimeout(IO_TIMEOUT)
                    assert accepted.recv(100) == b"hello second"
            # RFC 8305: the second attempt starts 250 ms after the first, not at its timeout.
            assert took < 2.0
            proxyd.wait_for_log(
                rf"TCP_TUNNEL/200 .* CONNECT two.test:{port} - HIER_DIRECT/{SECOND_HOST}"
            )
        finally:
            live.close()


def test_a_blackholed_destination_answers_504_within_the_connect_timeout(
    proxyd_factory: ProxydFactory,
) -> None:
    with syn_dropper(ORIGIN_HOST) as port:
        proxyd = proxyd_factory(extra_rules=[open_rule([port])], upstream={"connect_timeout": 1})
        begun = time.monotonic()
        with RawConnection(proxyd.address) as conn:
            reply = conn.request("CONNECT", f"{ORIGIN_HOST}:{port}")
        assert reply.status == 504
        assert time.monotonic() - begun < 1.0 + 0.5


def test_a_client_that_gives_up_during_the_connect_is_logged_as_such(
    proxyd_factory: ProxydFactory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    with syn_dropper(ORIGIN_HOST) as port:
        proxyd = proxyd_factory(
            extra_rules=[open_rule([port])],
            upstream={"connect_timeout": 10},
            access_log={"path": str(log), "format": "json"},
        )
        with RawConnection(proxyd.address) as conn:
            conn.send(f"CONNECT {ORIGIN_HOST}:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.3)  # the client's patience (not synchronisation): then it gives up
        record = wait_for_record(log, lambda r: r["method"] == "CONNECT", timeout=5)
    assert record["status"] == 499 and record["bytes_up"] == record["bytes_down"] == 0
    assert "TCP_TUNNEL/200" not in proxyd.log()


def test_a_plain_request_after_a_refused_connect_goes_to_the_engine(
    authed: ProxydHandle, echo_origin: Origin
) -> None:
    proxyd = authed
    with RawConnection(proxyd.address) as conn:
        first = conn.request("CONNECT", f"{ORIGIN_HOST}:{echo_origin.port}")
        assert first.status == 407
        second = conn.request("GET", f"{proxyd.url}/proxy.pac")  # the engine serves the PAC
        assert second.status == 200
        assert second.header("Content-Type") == "application/x-ns-proxy-autoconfig"


def test_a_connect_after_a_plain_request_is_refused_with_a_reason(
    proxyd: ProxydHandle, echo_origin: Origin
) -> None:
    with RawConnection(proxyd.address) as conn:
        conn.request("GET", f"{proxyd.url}/proxy.pac")
        reply = conn.request("CONNECT", f"{ORIGIN_HOST}:{echo_origin.port}")
        assert reply.status == 400
        assert b"send CONNECT as the first request of a connection" in reply.body
        assert conn.is_closed_by_peer(timeout=2)


def test_an_idle_tunnel_is_closed_after_the_idle_timeout(
    proxyd_factory: ProxydFactory, echo_origin: Origin, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    proxyd = proxyd_factory(
        extra_rules=[open_rule([echo_origin.port])],
        limits={"idle_timeout": 2},
        access_log={"path": str(log), "format": "json"},
    )
    with RawConnection(proxyd.address) as conn:
        assert conn.request("CONNECT", f"{ORIGIN_HOST}:{echo_origin.port}").status == 200
        conn.send(b"x")
        assert conn.recv_exact(1) == b"x"
        begun = time.monotonic()
        assert conn.is_closed_by_peer(timeout=10)
        waited = time.monotonic() - begun
    assert 2.0 <= waited < 2.0 + 5.0  # the timeout, plus at most one sweep interval
    record = wait_for_record(log, lambda r: r["method"] == "CONNECT")
    assert record["status"] == 200 and record["bytes_up"] == record["bytes_down"] == 1


def test_out_of_descriptors_pauses_accepting_keeps_health_checks_and_recovers(
    proxyd_factory: ProxydFactory, echo_origin: Origin
) -> None:
    proxyd = proxyd_factory(
        extra_rules=[open_rule([echo_origin.port])],
        admin_listen="127.0.0.1:0",
        limits={"max_connections_per_source": 1000},
    )
    pid = proxyd.proc.pid
    soft, hard = subprocess.run(
        ["prlimit", f"--pid={pid}", "--nofile", "--raw", "--noheadings", "-o", "SOFT,HARD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile=256:{hard}"], check=True)
    idle: list[socket.socket] = []
    try:
        for _ in range(300):  # more than the process may hold: the last ones wait in the queue
            idle.append(socket.create_connection(proxyd.address, timeout=IO_TIMEOUT))
        proxyd.wait_for_log(r"accepting paused \d+ time\(s\)")
        cpu_before = _cpu_seconds(pid)
        time.sleep(2.0)  # a measurement window: how busy is a paused proxy?
        assert _cpu_seconds(pid) - cpu_before < 0.5  # not a busy retry loop (was 98 % of a core)
        assert admin_get(proxyd, "/healthz") == (200, "ok\n")  # the reserve serves the admin port
    finally:
        for sock in idle:
            sock.close()
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:{hard}"], check=True)
    with RawConnection(proxyd.address) as conn:
        assert conn.request("CONNECT", f"{ORIGIN_HOST}:{echo_origin.port}").status == 200
        conn.send(b"back")
        assert conn.recv_exact(4) == b"back"
    log = proxyd.log()
    assert log.count("accepting paused") <= 3 and "Traceback" not in log


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
