"""Python load generators for the tunnel workloads, run in forked processes.

Each worker process sets up (connects, authenticates), reports ready, waits for the
common start, works until its deadline and reports counts plus its own CPU time. The
parent snapshots the proxy's CPU between "all ready" and "all done", so neither setup
nor teardown is charged to the transfer.
"""

from __future__ import annotations

import base64
import contextlib
import multiprocessing
import multiprocessing.connection
import queue
import resource
import socket
import ssl
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import digest
import procstat

CHUNK = 1 << 20  # one sendall: large buffers keep the generator off the critical path
CYCLE = 32 << 20  # bytes per verified SINK transfer (the sink answers OK <count>)
IO_TIMEOUT = 10.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_CTX = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class ProxyTls:
    """How a generator speaks TLS to a proxy's TLS listener: the CA that signed the
    proxy's certificate (the bench's own) and the name the certificate is checked for."""

    cafile: str
    server_hostname: str


@dataclass(frozen=True)
class Endpoint:
    """How a generator reaches `dest`: through `proxy` (None: direct), authenticated or
    not; `tls`: inside TLS to the proxy (its `https://` listener); `scheme`: "digest"
    (a 407 first for the nonce, then nc counting up) or "basic" (sent up front, only
    meaningful inside TLS)."""

    proxy: tuple[str, int] | None
    auth: bool
    tls: ProxyTls | None = None
    scheme: str = "digest"


_CONTEXTS: dict[str, ssl.SSLContext] = {}


def _context(tls: ProxyTls) -> ssl.SSLContext:
    """One client context per CA file and process (verification on, as a client's)."""
    context = _CONTEXTS.get(tls.cafile)
    if context is None:
        context = _CONTEXTS[tls.cafile] = ssl.create_default_context(cafile=tls.cafile)
    return context


def connect(
    endpoint: Endpoint, dest: tuple[str, int], timeout: float = IO_TIMEOUT
) -> socket.socket:
    """A connected socket to the proxy (or to `dest` directly); inside TLS, handshaken
    and the proxy's certificate verified."""
    sock = socket.create_connection(endpoint.proxy or dest, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if endpoint.proxy is None or endpoint.tls is None:
        return sock
    try:
        return _context(endpoint.tls).wrap_socket(
            sock, server_hostname=endpoint.tls.server_hostname
        )
    except BaseException:
        sock.close()
        raise


class BasicSigner:
    """Proxy-Authorization for Basic: the same value every time, no challenge first."""

    def __init__(self) -> None:
        token = base64.b64encode(f"{digest.USER}:{digest.PASSWORD}".encode()).decode()
        self.value = f"Basic {token}"

    def header(self) -> str:
        return self.value


Signer = digest.DigestSigner | BasicSigner


class ProxyRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"proxy answered {status}")
        self.status = status


def _hostport(dest: tuple[str, int]) -> str:
    return f"{dest[0]}:{dest[1]}"


def connect_signer(endpoint: Endpoint, dest: tuple[str, int]) -> Signer | None:
    """A signer for CONNECT to `dest`; Digest: a fresh nonce (one per generator process),
    fetched the way the tunnels will go (inside TLS on a TLS endpoint)."""
    if endpoint.proxy is None or not endpoint.auth:
        return None
    if endpoint.scheme == "basic":
        return BasicSigner()
    authority = _hostport(dest)
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    challenge = digest.fetch_challenge(endpoint.proxy, request, lambda: connect(endpoint, dest))
    return digest.DigestSigner(challenge, "CONNECT", authority)


def open_tunnel(
    endpoint: Endpoint, dest: tuple[str, int], signer: Signer | None
) -> tuple[socket.socket, bytes]:
    """A connected socket to `dest` (through the proxy's CONNECT if any) and early bytes.
    On a TLS endpoint the socket is the TLS connection to the proxy, the tunnel inside it."""
    sock = connect(endpoint, dest)
    if endpoint.proxy is None:
        return sock, b""
    authority = _hostport(dest)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if signer is not None:
        lines.append(f"Proxy-Authorization: {signer.header()}")
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = digest.read_head(sock)
        status = digest.status_of(head)
        if status != 200:
            raise ProxyRefused(status)
    except BaseException:
        sock.close()
        raise
    return sock, rest


def _read_line(sock: socket.socket, pending: bytes) -> tuple[bytes, bytes]:
    while b"\n" not in pending:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a full line: {pending!r}")
        pending += chunk
    line, _, rest = pending.partition(b"\n")
    return line, rest


# --------------------------------------------------------------------------- workers


class BulkStream:
    """One tunnel sinking CYCLE-byte transfers until the deadline; each one is counted
    by the origin and checked here."""

    def __init__(self, endpoint: Endpoint, dest: tuple[str, int]) -> None:
        signer = connect_signer(endpoint, dest)
        self.sock, self.pending = open_tunnel(endpoint, dest, signer)
        self.payload = memoryview(bytes(CHUNK))

    def run(self, deadline: float) -> dict[str, Any]:
        sent = verified = 0
        header = b"SINK %d\n" % CYCLE
        while time.monotonic() < deadline:
            self.sock.sendall(header)
            for _ in range(CYCLE // CHUNK):
                self.sock.sendall(self.payload)
            sent += CYCLE
            line, self.pending = _read_line(self.sock, self.pending)
            if line != b"OK %d" % CYCLE:
                raise ValueError(f"sink answered {line!r} after {CYCLE} bytes")
            verified += CYCLE
        self.sock.close()
        return {"bytes_sent": sent, "bytes_verified": verified}


SETUP_SAMPLES = 50_000  # per worker: enough for a p50, bounded memory


class TunnelChurn:
    """New tunnels in a loop: connect (+ a full TLS handshake on a TLS endpoint: no
    session is resumed), CONNECT (+Digest or Basic), 200, PING/PONG, origin closes."""

    def __init__(self, endpoint: Endpoint, dest: tuple[str, int]) -> None:
        self.endpoint, self.dest = endpoint, dest
        self.signer = connect_signer(endpoint, dest)
        self.setup_ms: list[float] = []  # connect (+TLS) to 200 (or to the socket, direct)

    def once(self) -> None:
        begun = time.perf_counter()
        sock, pending = open_tunnel(self.endpoint, self.dest, self.signer)
        if len(self.setup_ms) < SETUP_SAMPLES:
            self.setup_ms.append((time.perf_counter() - begun) * 1000)
        with sock:
            sock.sendall(b"PING\n")
            line, pending = _read_line(sock, pending)
            if line != b"PONG":
                raise ValueError(f"origin answered {line!r}")
            # Wait for the origin's close to come through, so TIME_WAIT stays on the
            # listening sides and tunnels that never end are noticed (timeout).
            while sock.recv(4096):
                pass

    def run(self, deadline: float) -> dict[str, Any]:
        ok, failures = 0, 0
        statuses: dict[int, int] = {}
        last_error = ""
        while time.monotonic() < deadline:
            try:
                self.once()
                ok += 1
            except ProxyRefused as refused:
                statuses[refused.status] = statuses.get(refused.status, 0) + 1
            except (OSError, ValueError) as error:
                failures += 1
                last_error = repr(error)
                time.sleep(0.001)  # a refused connect must not spin
        return {
            "ok": ok,
            "bad_status": statuses,
            "failures": failures,
            "last_error": last_error,
            "setup_ms": self.setup_ms,
        }


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(
    make: Callable[..., Any],
    args: tuple[Any, ...],
    duration: float,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    try:
        worker = make(*args)
    except BaseException:
        ready.put(traceback.format_exc())
        return
    ready.put(None)
    try:
        if not start.wait(START_TIMEOUT):
            return
        cpu0, t0 = _cpu_self(), time.monotonic()
        out = worker.run(t0 + duration)
        out.update(start=t0, end=time.monotonic(), cpu=_cpu_self() - cpu0)
        results.put(out)
    except BaseException:
        results.put({"error": traceback.format_exc()})


@dataclass
class ParallelResult:
    workers: list[dict[str, Any]]
    wall: float  # first start to last end, seconds
    generator_cpu: float  # CPU-seconds of all generator processes
    watched_cpu: dict[str, float]  # CPU-seconds of each watched group over the same span


def run_parallel(
    make: Callable[..., Any],
    args: tuple[Any, ...],
    processes: int,
    duration: float,
    watch: dict[str, list[int]],
) -> ParallelResult:
    """`processes` forked workers built by make(*args), started together for `duration`."""
    ready, results, start = _CTX.Queue(), _CTX.Queue(), _CTX.Event()
    children = [
        _CTX.Process(target=_child, args=(make, args, duration, ready, start, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        return _collect(children, ready, results, start, duration, watch)
    finally:
        for child in children:
            child.join(STOP_TIMEOUT)
            if child.is_alive():
                child.kill()
                child.join(STOP_TIMEOUT)


def _collect(
    children: list[Any],
    ready: Any,
    results: Any,
    start: Any,
    duration: float,
    watch: dict[str, list[int]],
) -> ParallelResult:
    deadline = time.monotonic() + START_TIMEOUT
    for _ in children:
        try:
            error = ready.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError("generator workers not ready in time") from None
        if error is not None:
            raise RuntimeError(f"a generator failed in setup:\n{error}")
    cpu0 = procstat.cpu_snapshot(watch)
    start.set()
    outs = [results.get(timeout=duration + START_TIMEOUT) for _ in children]
    watched = procstat.cpu_delta(cpu0, procstat.cpu_snapshot(watch))
    for out in outs:
        if "error" in out:
            raise RuntimeError(f"a generator failed:\n{out['error']}")
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return ParallelResult(outs, wall, sum(o["cpu"] for o in outs), watched)


# --------------------------------------------------------------------------- idle tunnels


def _hold_tunnels(endpoint: Endpoint, dest: tuple[str, int], pipe: Any) -> None:
    """Opens tunnels to the counts the parent sends, each checked with HOLD/PONG, and
    keeps them open; `0` closes them all and ends."""
    held: list[socket.socket] = []
    try:
        signer = connect_signer(endpoint, dest)
        while (count := pipe.recv()) > 0:
            errors = 0
            while len(held) < count and errors < 20:
                try:
                    sock, pending = open_tunnel(endpoint, dest, signer)
                    sock.sendall(b"HOLD\n")
                    line, _ = _read_line(sock, pending)
                    if line != b"PONG":
                        raise ValueError(f"origin answered {line!r}")
                    held.append(sock)
                except (OSError, ValueError, ProxyRefused):
                    errors += 1
            pipe.send({"open": len(held), "errors": errors})
    except BaseException:
        pipe.send({"error": traceback.format_exc()})
    finally:
        for sock in held:
            sock.close()


class IdleHolder:
    """A child process holding idle tunnels; `hold(n)` grows the set to n."""

    def __init__(self, endpoint: Endpoint, dest: tuple[str, int]) -> None:
        self._pipe, child_end = _CTX.Pipe()
        self._proc = _CTX.Process(target=_hold_tunnels, args=(endpoint, dest, child_end))
        self._proc.start()

    def hold(self, count: int, timeout: float) -> dict[str, Any]:
        self._pipe.send(count)
        if not self._pipe.poll(timeout):
            raise RuntimeError(f"{count} idle tunnels not open within {timeout}s")
        answer: dict[str, Any] = self._pipe.recv()
        if "error" in answer:
            raise RuntimeError(f"idle tunnel holder failed:\n{answer['error']}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(0)
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
