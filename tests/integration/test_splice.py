"""Tunnels on proxyd's own front, relayed by splice from the first byte: correctness gate.

These are the checks that must pass before the front, the relay, or Python changes: bulk
both ways with SHA-256, half-close both ways, a server that speaks first, resets from
either side, data sent together with the CONNECT, SIGTERM while a relay runs, the access
log's byte counts, and many random tunnels with slow readers. Every server and client here
is on loopback; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ProxydFactory
from harness import ORIGIN_HOST, ProxydHandle, RawConnection

IO_TIMEOUT = 20.0
MiB = 1 << 20


def pattern(n: int, seed: int = 7) -> bytes:
    """Deterministic, incompressible-looking bytes (a lost or repeated chunk shows)."""
    return random.Random(seed).randbytes(n)


def recv_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


class BulkHandler(socketserver.BaseRequestHandler):
    """`SEND n\\n`: sends n pattern bytes while it reads the client's bytes to their end,
    then answers `<count> <sha256>\\n` (after the client's half-close) and closes.
    `FIRE n\\n` is not needed: the firehose server speaks first."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IO_TIMEOUT)
        header = recv_line(sock).split()
        if len(header) != 2 or header[0] != b"SEND":
            return
        send = threading.Thread(target=sock.sendall, args=(pattern(int(header[1])),))
        send.start()
        digest, count = hashlib.sha256(), 0
        while chunk := sock.recv(MiB):
            digest.update(chunk)
            count += len(chunk)
        send.join(IO_TIMEOUT)
        sock.sendall(f"{count} {digest.hexdigest()}\n".encode())


class FirehoseHandler(socketserver.BaseRequestHandler):
    """Speaks first: 3 MiB of pattern on accept, then `<count> <sha256>\\n` of what the
    client sent up to its half-close."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(pattern(3 * MiB, seed=3))
        digest, count = hashlib.sha256(), 0
        while chunk := sock.recv(MiB):
            digest.update(chunk)
            count += len(chunk)
        sock.sendall(f"{count} {digest.hexdigest()}\n".encode())


class ResetHandler(socketserver.BaseRequestHandler):
    """Sends 2 MiB, waits for the client's `GOT` line (it has 1 MiB of them), then resets
    the connection (SO_LINGER 0): a reset in the middle of a download, by protocol."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IO_TIMEOUT)
        with contextlib.suppress(OSError):
            sock.sendall(pattern(2 * MiB))
            recv_line(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # now: socketserver's own close would send a FIN first


class SinkHandler(socketserver.BaseRequestHandler):
    """Reads until end-of-file or error; records how the connection ended."""

    ended: list[str]

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(pattern(2 * MiB))
        try:
            while sock.recv(MiB):
                pass
            self.ended.append("eof")
        except OSError as e:
            self.ended.append(type(e).__name__)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class Servers:
    bulk: int
    firehose: int
    reset: int
    sink: int
    sink_ended: list[str]

    def ports(self) -> list[int]:
        return [self.bulk, self.firehose, self.reset, self.sink]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    ended: list[str] = []
    sink = type("Sink", (SinkHandler,), {"ended": ended})
    started = [
        Server((ORIGIN_HOST, 0), handler)
        for handler in (BulkHandler, FirehoseHandler, ResetHandler, sink)
    ]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Servers(*(s.server_address[1] for s in started), sink_ended=ended)
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


@pytest.fixture
def tunnel_proxy(proxyd_factory: ProxydFactory, servers: Servers, tmp_path: Path) -> ProxydHandle:
    rule = {"name": "bulk", "from": ["any"], "to": ["testzone"], "ports": servers.ports()}
    return proxyd_factory(
        extra_rules=[{**rule, "auth": "none"}],
        access_log={"path": str(tmp_path / "access.log"), "format": "json"},
    )


def open_tunnel(proxy: ProxydHandle, port: int, early: bytes = b"") -> socket.socket:
    """CONNECT without credentials (the `bulk` rule needs none); `early` goes in the same
    write as the CONNECT, before the 200 came back."""
    sock = socket.create_connection(proxy.address, timeout=IO_TIMEOUT)
    authority = f"{ORIGIN_HOST}:{port}"
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + early)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"proxy closed during CONNECT: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_all(sock: socket.socket, delay: float = 0.0, chunk: int = MiB) -> bytes:
    got = bytearray()
    while data := sock.recv(chunk):
        got += data
        if delay:
            time.sleep(delay)
    return bytes(got)


def bulk_exchange(
    proxy: ProxydHandle, port: int, up: int, down: int, seed: int, delay: float = 0.0
) -> None:
    """Send `up` bytes and receive `down` at once; half-close; check both SHA-256s."""
    payload = pattern(up, seed)
    with open_tunnel(proxy, port) as sock:
        sock.sendall(f"SEND {down}\n".encode())

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the reply must still arrive

        sender = threading.Thread(target=send)
        sender.start()
        got = read_all(sock, delay=delay, chunk=256 * 1024 if delay else MiB)
        sender.join(IO_TIMEOUT)
    assert len(got) >= down, (len(got), down)
    assert hashlib.sha256(got[:down]).digest() == hashlib.sha256(pattern(down)).digest()
    count, digest = got[down:].decode().split()
    assert int(count) == up
    assert digest == hashlib.sha256(payload).hexdigest()


def access_records(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def proxy_fds(proxy: ProxydHandle) -> int:
    return len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    ("up", "down"), [(20 * MiB, 20 * MiB), (0, 8 * MiB), (8 * MiB, 0), (1000, 1000), (0, 0)]
)
def test_bulk_both_ways_with_half_close(
    tunnel_proxy: ProxydHandle, servers: Servers, tmp_path: Path, up: int, down: int
) -> None:
    bulk_exchange(tunnel_proxy, servers.bulk, up, down, seed=up + down)
    reply = len(f"{up} {hashlib.sha256(pattern(up, up + down)).hexdigest()}\n")
    header = len(f"SEND {down}\n")

    def logged() -> bool:
        return any(r["method"] == "CONNECT" for r in access_records(tmp_path))

    wait_for(logged)
    (record,) = [r for r in access_records(tmp_path) if r["method"] == "CONNECT"]
    # Bytes counted exactly, the ones sent along with the CONNECT included.
    assert record["bytes_up"] == header + up
    assert record["bytes_down"] == down + reply
    assert record["status"] == 200


def test_server_speaks_first_and_client_half_closes(
    tunnel_proxy: ProxydHandle, servers: Servers
) -> None:
    payload = pattern(5 * MiB, seed=11)
    with open_tunnel(tunnel_proxy, servers.firehose) as sock:
        first = b""
        while len(first) < 3 * MiB:  # all of it before we send a byte
            chunk = sock.recv(MiB)
            assert chunk
            first += chunk
        assert first == pattern(3 * MiB, seed=3)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = read_all(sock)
    assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


def test_data_sent_with_the_connect_arrives_first(
    tunnel_proxy: ProxydHandle, servers: Servers
) -> None:
    with open_tunnel(tunnel_proxy, servers.bulk, early=b"SEND 4194304\n") as sock:
        payload = pattern(MiB, seed=5)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = read_all(sock)
    assert got[: 4 * MiB] == pattern(4 * MiB)
    assert got[4 * MiB :] == f"{MiB} {hashlib.sha256(payload).hexdigest()}\n".encode()


def test_server_reset_reaches_the_client_as_a_reset(
    tunnel_proxy: ProxydHandle, servers: Servers
) -> None:
    """A cut download must not look complete: the client sees a reset, not a clean EOF."""
    with open_tunnel(tunnel_proxy, servers.reset) as sock:
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while data := sock.recv(MiB):
                told = len(got) >= MiB
                got += data
                if not told and len(got) >= MiB:
                    sock.sendall(b"GOT\n")  # now the server resets
    assert MiB <= len(got) <= 2 * MiB
    assert bytes(got) == pattern(2 * MiB)[: len(got)]


def test_client_reset_mid_download_frees_everything(
    tunnel_proxy: ProxydHandle, servers: Servers, tmp_path: Path
) -> None:
    wait_for(lambda: proxy_fds(tunnel_proxy) > 0)
    baseline = proxy_fds(tunnel_proxy)
    servers.sink_ended.clear()
    sock = open_tunnel(tunnel_proxy, servers.sink)
    got = 0
    while got < MiB:
        got += len(sock.recv(MiB))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    wait_for(lambda: len(servers.sink_ended) == 1)
    wait_for(lambda: any(r["method"] == "CONNECT" for r in access_records(tmp_path)))
    # Sockets, pipes and mitmproxy's tasks are gone: back to the listener's own count
    # (pooled pipes aside: at most one pool's worth, kept empty for reuse).
    wait_for(lambda: proxy_fds(tunnel_proxy) <= baseline + 2 * 32)
    with open_tunnel(tunnel_proxy, servers.bulk) as sock2:  # and the proxy still works
        sock2.sendall(b"SEND 0\n")
        sock2.shutdown(socket.SHUT_WR)
        assert read_all(sock2).startswith(b"0 ")


def test_many_random_tunnels_with_slow_readers(
    tunnel_proxy: ProxydHandle, servers: Servers
) -> None:
    rng = random.Random(1234)
    cases = [
        (rng.randrange(0, 3 * MiB), rng.randrange(0, 3 * MiB), rng.choice([0.0, 0.0, 0.002]))
        for _ in range(60)
    ]
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [
            pool.submit(bulk_exchange, tunnel_proxy, servers.bulk, up, down, i, delay)
            for i, (up, down, delay) in enumerate(cases)
        ]
        for future in futures:
            future.result(timeout=120)


def test_sigterm_while_a_relay_runs_drains_then_closes(
    tunnel_proxy: ProxydHandle, servers: Servers
) -> None:
    """drain_timeout is 2 s in the test config: the open relay is closed after it, and
    proxyd exits cleanly (mitmproxy closes first; the relay lets go of its sockets)."""
    sock = open_tunnel(tunnel_proxy, servers.sink)
    try:
        got = 0
        while got < 2 * MiB:
            got += len(sock.recv(MiB))
        sock.sendall(pattern(MiB))  # past the threshold up, too: the relay is running
        started = time.monotonic()
        tunnel_proxy.proc.send_signal(signal.SIGTERM)
        assert tunnel_proxy.proc.wait(15) == 0
        assert time.monotonic() - started < 10
        sock.settimeout(IO_TIMEOUT)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(MiB) == b""
    finally:
        sock.close()
    # (Python 3.11's start_server logs a CancelledError for every connection task that a
    # shutdown cancels, spliced or not: not ours to judge here.)
    assert not re.search(r"crashed", tunnel_proxy.log()), tunnel_proxy.log()


def test_tunnel_through_digest_auth_is_spliced_too(
    proxyd_factory: ProxydFactory, servers: Servers
) -> None:
    """The `partners` rule (Digest) on the same ports: an authenticated tunnel moves past
    the threshold the same way."""
    proxy = proxyd_factory(
        extra_rules=[
            {
                "name": "bulk-auth",
                "from": ["any"],
                "to": ["testzone"],
                "ports": [servers.bulk],
                "auth": "required",
            }
        ]
    )
    with RawConnection(proxy.address) as conn:
        authority = f"{ORIGIN_HOST}:{servers.bulk}"
        first, response = conn.request_with_digest("CONNECT", authority, "alice", "wonderland")
        assert first.status == 407
        assert response is not None and response.status == 200
        sock = conn.sock
        sock.sendall(b"SEND 3145728\n")
        payload = pattern(2 * MiB, seed=9)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = conn.buffer + read_all(sock)
    assert got[: 3 * MiB] == pattern(3 * MiB)
    assert got[3 * MiB :] == f"{2 * MiB} {hashlib.sha256(payload).hexdigest()}\n".encode()
