"""Upstream failures on a live proxyd: a destination that drops SYNs, one that accepts and
never answers, one that refuses; a client that stops reading a download; and the byte
counts of a chunked download larger than the streaming threshold."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import IO_TIMEOUT, ORIGIN_HOST, ProxydHandle, RawConnection, free_port, syn_dropper


class Origin:
    """A TCP server on ORIGIN_HOST running `serve(conn)` for each connection, in a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server((ORIGIN_HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.serve(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def never_answers(conn: socket.socket) -> None:
    read_head(conn)
    conn.recv(1)  # until proxyd closes


CHUNK = b"x" * 65536
CHUNKS = 48  # 3 MiB: past the 1 MiB streaming threshold


def chunked_download(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(CHUNKS):
        conn.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
    conn.sendall(b"0\r\n\r\n")


def endless_download(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
    while True:
        conn.sendall(CHUNK)


@pytest.fixture
def origin_factory() -> Iterator[Callable[[Callable[[socket.socket], None]], Origin]]:
    made: list[Origin] = []

    def make(serve: Callable[[socket.socket], None]) -> Origin:
        made.append(Origin(serve))
        return made[-1]

    yield make
    for origin in made:
        origin.close()


def start(proxyd_factory: Any, ports: list[int], **overrides: Any) -> ProxydHandle:
    rule = {"name": "open-test", "from": ["any"], "to": ["testzone"], "ports": ports}
    return proxyd_factory(extra_rules=[{**rule, "auth": "none"}], **overrides)


def test_a_destination_that_drops_syns_gets_504_after_the_connect_timeout(proxyd_factory):
    with syn_dropper() as port:
        proxyd = start(proxyd_factory, [port], upstream={"connect_timeout": 1})
        target = f"{ORIGIN_HOST}:{port}"
        for method, url in (("GET", f"http://{target}/"), ("CONNECT", target)):
            begun = time.monotonic()
            with RawConnection(proxyd.address) as conn:
                reply = conn.request(method, url)
            assert reply.status == 504, (method, reply.status, reply.text)
            assert f"no connection to {target} (the checked address) within 1 s" in reply.text
            # Bounded well below the kernel's ~2 minutes of SYN retries.
            assert time.monotonic() - begun < IO_TIMEOUT
        proxyd.wait_for_log(rf"/504 .* GET http://{target}/")
        proxyd.wait_for_log(rf"/504 .* CONNECT {target}")


def test_an_upstream_that_never_answers_gets_504_after_the_read_timeout(
    proxyd_factory, origin_factory
):
    origin = origin_factory(never_answers)
    proxyd = start(proxyd_factory, [origin.port], upstream={"read_timeout": 1})
    target = f"{ORIGIN_HOST}:{origin.port}"
    with RawConnection(proxyd.address) as conn:
        reply = conn.request("GET", f"http://{target}/slow")
    assert reply.status == 504, reply.text
    assert reply.text == f"proxyd: {target} sent no response within 1 s\n"
    proxyd.wait_for_log(rf"/504 .* GET http://{target}/slow")


def test_a_refused_connect_says_so_in_proxyds_words(proxyd_factory):
    port = free_port()  # nothing listens there: the kernel refuses
    proxyd = start(proxyd_factory, [port])
    target = f"{ORIGIN_HOST}:{port}"
    for method, url in (("GET", f"http://{target}/"), ("CONNECT", target)):
        with RawConnection(proxyd.address) as conn:
            reply = conn.request(method, url)
        assert reply.status == 502, (method, reply.text)
        assert reply.text == (
            f"proxyd: could not connect to {target} (the checked address): connection refused\n"
        )
        assert "mitmproxy" not in reply.text.lower()
        assert reply.header("Server") is None


def test_a_client_that_stops_reading_is_aborted_and_its_socket_freed(
    proxyd_factory, origin_factory
):
    origin = origin_factory(endless_download)
    proxyd = start(proxyd_factory, [origin.port], limits={"idle_timeout": 2})
    client = socket.create_connection(proxyd.address)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    target = f"http://{ORIGIN_HOST}:{origin.port}/big"
    client.sendall(f"GET {target} HTTP/1.1\r\nHost: {ORIGIN_HOST}\r\n\r\n".encode())
    client_port = client.getsockname()[1]

    def proxyd_side_open() -> bool:
        out = subprocess.run(
            [
                "ss",
                "-Htn",
                "state",
                "all",
                f"( sport = :{proxyd.port} and dport = :{client_port} )",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return bool(out.strip())

    assert proxyd_side_open()
    # Idle for idle_timeout (2 s), then at most idle_timeout again to read the rest, which
    # it never does: reset and gone (no descriptor, no kernel state) within a bounded wait,
    # where it used to stay ESTABLISHED forever with the rest of the download unsent.
    deadline = time.monotonic() + 4 * 2 + IO_TIMEOUT
    while proxyd_side_open() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not proxyd_side_open(), "proxyd still holds the socket of a client that stopped reading"
    client.close()


def test_a_chunked_download_past_the_streaming_threshold_is_counted(proxyd_factory, origin_factory):
    origin = origin_factory(chunked_download)
    proxyd = start(proxyd_factory, [origin.port], admin_listen="127.0.0.1:0")
    target = f"http://{ORIGIN_HOST}:{origin.port}/chunked"
    with RawConnection(proxyd.address) as conn:
        reply = conn.request("GET", target)
    assert reply.status == 200
    assert len(reply.body) == CHUNKS * len(CHUNK)
    line = proxyd.wait_for_log(rf"TCP_MISS/200 (\d+) GET {target}")
    assert int(line.group(1)) == CHUNKS * len(CHUNK)
