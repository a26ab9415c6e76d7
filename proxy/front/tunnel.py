"""The tunnel front: CONNECT served by proxyd itself, from the first byte to the last.

Every connection on the proxy port comes here first (`FrontServer` accepts it). Its first
bytes are peeked, not read: anything but a CONNECT goes to the engine untouched (`handoff`),
a TLS handshake or noise gets a 400 at once. A CONNECT head is read here with the same
limits as the engine's (400, 431) and judged by the same admission core inside the same
fail-closed boundary as plain HTTP (the Digest nonces and replay window, throttles,
connection caps, trusted sources are the core's). A refusal goes out in one write and the
connection stays open for the retried CONNECT (a 407 is answered by curl and Chromium on
the same connection). An admitted tunnel is checked once more against the policy (the
second lock), dialed over every checked address within the connect timeout, answered 200,
and relayed by `splice` from its first byte, the bytes the client sent along with the
CONNECT first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Protocol

from proxy.core import answers
from proxy.core.accesslog import CLIENT_GONE
from proxy.core.admission import Admission, Admit, Ask, Refuse, source_address
from proxy.core.connecthead import BadHead, Head, head_end, is_connect, parse_head
from proxy.core.connlimit import SourceCounts
from proxy.core.firstbytes import PEEK, Path, classify
from proxy.core.headerlimit import too_large_answer
from proxy.core.policy import Verdict
from proxy.core.records import Exchange, refusal_record, unjudged_record
from proxy.core.upstream import explain
from proxy.front import splice
from proxy.front.dial import DialFailed, dial
from proxy.service.deciding import decide
from proxy.service.recorder import Recorder
from proxy.service.runtime import Runtime

log = logging.getLogger("proxyd")

Handoff = Callable[[socket.socket, bytes], Awaitable[None]]
NOT_HTTP = "the connection did not start with an HTTP request: this is an HTTP proxy"
TLS_ON_PLAIN = (
    "a TLS handshake on the plain-text proxy port: give the proxy as http://host:port "
    "(the tunnel inside CONNECT is what carries TLS)"
)


class Host(Protocol):
    """What the front shares with the engine's addon: one runtime (swapped on reload),
    one admission core, one recorder, one table of open tunnels, one connection count."""

    runtime: Runtime
    admission: Admission
    recorder: Recorder
    tunnels: dict[str, Exchange]
    counts: SourceCounts


class ClientGone(Exception):
    pass


class Ending(Enum):
    KEEP = "keep"  # answered, and the connection reads the next request
    ANSWERED = "answered"  # answered, then closed once the client has read the answer
    CLOSED = "closed"  # nothing more to say: a tunnel's end, or a client gone


class TunnelFront:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.pipes = splice.PipePool()
        self.ids = itertools.count(1)
        self.idle: dict[splice.Splicer, list[float]] = {}  # open tunnel -> [last activity]
        self.idle_timeout = 600.0  # limits.idle_timeout, as the latest tunnel saw it
        self.sweeper: asyncio.TimerHandle | None = None

    # --- one connection ---------------------------------------------------------------

    async def serve(self, sock: socket.socket, peer: Any, handoff: Handoff) -> None:
        host = self.host
        counted = host.counts.opened(peer, host.runtime.config.limits.max_connections_per_source)
        try:
            if await self._serve(sock, peer, not counted, handoff):
                await _close_after_answer(asyncio.get_running_loop(), sock)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stayed silent: nothing to answer
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ENOTCONN):
                log.warning("connection from %s: %s", peer[0], e)
        finally:
            host.counts.closed(peer, counted)
            sock.close()

    async def _serve(
        self, sock: socket.socket, peer: Any, over_limit: bool, handoff: Handoff
    ) -> bool:
        """Serve one connection; True if it ends with an answer the client must still read."""
        loop = asyncio.get_running_loop()
        idle = self.host.runtime.config.limits.idle_timeout
        async with asyncio.timeout(idle):
            first = await _peek(loop, sock)
        if not first:
            return False
        path = classify(first)
        if path is Path.ENGINE:
            await handoff(sock, b"")
            return False
        if path is not Path.TUNNEL:
            self._not_http(sock, peer, TLS_ON_PLAIN if path is Path.TLS else NOT_HTTP)
            return True
        buffer = bytearray()
        while True:
            limit = self.host.runtime.config.limits.max_header_bytes
            try:
                async with asyncio.timeout(idle):
                    end = await _read_head(loop, sock, buffer, limit)
            except BadHead as e:
                self._bad_head(sock, peer, e, b"CONNECT" if is_connect(buffer) else b"-")
                return True
            if end is None:
                return False  # closed before a whole head
            if not is_connect(buffer):
                await handoff(sock, bytes(buffer))
                return False
            try:
                head = parse_head(buffer, limit)
            except BadHead as e:
                self._bad_head(sock, peer, e, b"CONNECT")
                return True
            assert head is not None
            rest = buffer[head.size :]
            ending = await self._connect(loop, sock, peer, head, bytes(rest), over_limit)
            if ending is not Ending.KEEP:
                return ending is Ending.ANSWERED
            buffer = rest  # a pipelined next request, if any

    # --- one CONNECT ------------------------------------------------------------------

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        peer: Any,
        head: Head,
        early: bytes,
        over_limit: bool,
    ) -> Ending:
        """Answer one CONNECT, or run its tunnel to the end."""
        started = time.time()
        runtime = self.host.runtime  # one config for the whole decision, even across a reload
        # The fail-closed boundary: whatever goes wrong while deciding, the answer is a 500.
        # Sending comes after it: a client that is gone is not an internal error.
        try:
            local = sock.getsockname()
            ask = Ask(
                peer=peer[0],
                local=(local[0], local[1]),
                method=head.method,
                proxy_authorization=head.values(b"proxy-authorization"),
                authority=head.target,
                over_connection_limit=over_limit,
            )
            outcome = await decide(self.host.admission, runtime, ask, started)
            if isinstance(outcome, Refuse):
                refusal = self._refusal(ask, outcome, runtime, head.keep_alive)
            elif not isinstance(outcome, Admit):
                raise TypeError(f"unexpected admission outcome {type(outcome).__name__}")
            elif not self._checked_again(runtime, ask, outcome, started):
                refusal = (answers.plain(500, "internal error")[0], False)
            else:
                refusal = None
        except Exception:
            self._internal_error(sock, peer, head)
            return Ending.ANSWERED
        if refusal is not None:
            answer, keep = refusal
            _send(sock, answer)
            return Ending.KEEP if keep else Ending.ANSWERED
        assert isinstance(outcome, Admit)
        return await self._tunnel(loop, sock, ask, outcome, early, runtime, started)

    def _checked_again(self, runtime: Runtime, ask: Ask, admit: Admit, now: float) -> bool:
        """The second lock, independent of the admission core's own logic: the policy
        itself must allow every address about to be dialed."""
        decision = runtime.policy.decide(
            source_address(ask.peer), admit.addresses, admit.port, admit.user is not None, now
        )
        if decision.verdict is Verdict.ALLOW:
            return True
        self.host.recorder.metrics.internal_errors.labels("guard").inc()
        log.error(
            "refused a tunnel from %s to %s: the policy does not allow what admission admitted",
            ask.peer,
            admit.target,
        )
        return False

    def _refusal(
        self, ask: Ask, refusal: Refuse, runtime: Runtime, keep_alive: bool
    ) -> tuple[bytes, bool]:
        """The refusal's answer in one piece, recorded; and whether the connection stays."""
        challenges = runtime.challenges(refusal.stale) if refusal.status == 407 else []
        headers = answers.refusal_headers(refusal, challenges)
        body = answers.text_body(refusal.reason)
        keep = keep_alive and not (refusal.status == 429 and refusal.cause == "connections")
        self.host.recorder.record(
            refusal_record(ask, refusal, len(body), time.time()), decision=refusal.decision
        )
        return answers.encode(refusal.status, headers, body, close=not keep), keep

    async def _tunnel(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ask: Ask,
        admit: Admit,
        early: bytes,
        runtime: Runtime,
        started: float,
    ) -> Ending:
        host = self.host
        exchange = Exchange(
            started=started,
            client=admit.client,
            user=admit.user,
            method="CONNECT",
            target=admit.target,
            rule=admit.rule,
            upstream=str(admit.address),
        )
        upstream = runtime.config.upstream
        try:
            server = await _dial_while_watching(loop, sock, admit, upstream.connect_timeout)
        except ClientGone:
            exchange.status = CLIENT_GONE
            host.recorder.record(exchange.record(time.time()), decision="client_gone")
            return Ending.CLOSED
        except DialFailed as e:
            exchange.status, reason = explain(
                e.failure,
                str(e.address),
                admit.port,
                e.message,
                connect_timeout=upstream.connect_timeout,
                read_timeout=upstream.read_timeout,
            )
            answer, body = answers.plain(exchange.status, reason)
            exchange.bytes_down = len(body)
            host.recorder.record(exchange.record(time.time()), decision="allow")
            _send(sock, answer)
            return Ending.ANSWERED
        exchange.upstream = str(server.getpeername()[0])
        key = f"front-{next(self.ids)}"
        host.tunnels[key] = exchange
        metrics = host.recorder.metrics
        metrics.tunnels_active.inc()
        activity = [loop.time()]

        def on_bytes(up: bool, n: int) -> None:
            exchange.count(up, n)
            activity[0] = loop.time()

        relay = splice.Splicer(sock, server, self.pipes, pending_up=early, on_bytes=on_bytes)
        try:
            _send(sock, answers.ESTABLISHED)
            metrics.tunnel_setup.observe(time.time() - started)
            self._watch_idle(relay, activity, runtime.config.limits.idle_timeout)
            relay.start()
            error = await relay.done
            if error is not None and not isinstance(error, (ConnectionError, TimeoutError)):
                log.warning("tunnel from %s to %s ended: %s", ask.peer, admit.target, error)
        except asyncio.CancelledError:
            relay.abort()  # shutdown: the sockets close with the relay
            raise
        except OSError:
            relay.abort()
        finally:
            self.idle.pop(relay, None)
            server.close()
            host.tunnels.pop(key, None)
            metrics.tunnels_active.dec()
            host.recorder.record(exchange.record(time.time()), decision="allow")
        return Ending.CLOSED

    # --- idle tunnels -----------------------------------------------------------------

    def _watch_idle(self, relay: splice.Splicer, activity: list[float], timeout: float) -> None:
        self.idle[relay] = activity
        self.idle_timeout = timeout
        if self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().call_later(min(5.0, timeout / 4), self._sweep)

    def _sweep(self) -> None:
        """Close tunnels without a byte either way for `limits.idle_timeout` seconds."""
        self.sweeper = None
        if not self.idle:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for relay, activity in list(self.idle.items()):
            if now - activity[0] >= self.idle_timeout:
                relay.expire()
        self.sweeper = loop.call_later(min(5.0, self.idle_timeout / 4), self._sweep)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        self.pipes.close()

    # --- answers without a decision ---------------------------------------------------

    def _not_http(self, sock: socket.socket, peer: Any, reason: str) -> None:
        answer, body = answers.plain(400, reason)
        self._unjudged(peer, "-", "-", 400, len(body), "not_http")
        _send(sock, answer)

    def _bad_head(self, sock: socket.socket, peer: Any, error: BadHead, method: bytes) -> None:
        limit = self.host.runtime.config.limits.max_header_bytes
        if error.status == 431:
            answer = too_large_answer(limit)
        else:
            answer = answers.plain(error.status, error.reason)[0]
        self._unjudged(peer, method.decode("ascii"), "-", error.status, 0, "bad_request")
        _send(sock, answer)

    def _internal_error(self, sock: socket.socket, peer: Any, head: Head) -> None:
        """The boundary's error path: refuse first, then log and count."""
        try:
            _send(sock, answers.plain(500, "internal error")[0])
        finally:
            log.exception("internal error while admitting CONNECT from %s: refused", peer[0])
            self.host.recorder.metrics.internal_errors.labels("admission").inc()
            # As the access log writes targets: never the user info of `user:pass@host`.
            target = Ask(peer=peer[0], local=None, method=head.method, authority=head.target)
            self._unjudged(peer, "CONNECT", target.display_target(), 500, 0, "internal_error")

    def _unjudged(
        self, peer: Any, method: str, target: str, status: int, body: int, decision: str
    ) -> None:
        record = unjudged_record(peer[0], method, target, status, time.time(), body)
        self.host.recorder.record(record, decision=decision)


# --- socket steps -------------------------------------------------------------------------


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _recv(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int = 65536, flags: int = 0
) -> bytes:
    """One receive on the non-blocking socket, waiting until it is readable."""
    while True:
        try:
            return sock.recv(size, flags)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first bytes, left in the socket for whoever reads them."""
    return await _recv(loop, sock, PEEK, socket.MSG_PEEK)


async def _read_head(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: bytearray, limit: int
) -> int | None:
    """Read until `buffer` holds a whole head; its end, or None if the client closed."""
    while (end := head_end(buffer, limit)) is None:
        data = await _recv(loop, sock)
        if not data:
            return None
        buffer += data
    return end


LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024


async def _close_after_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Close so that the answer arrives: a close with unread bytes in the socket (a TLS
    ClientHello only peeked at, early tunnel bytes) sends a reset, which can destroy the
    answer before the client reads it. Half-close, discard what the client still sends
    until it closes (bounded in time and bytes), then close."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    discarded = 0
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while discarded < LINGER_BYTES and (data := await _recv(loop, sock)):
                discarded += len(data)


def _send(sock: socket.socket, data: bytes) -> None:
    """One write of a short answer. The socket buffer of a fresh connection holds far more
    than any answer of proxyd's; a client that has not read its previous answer yet and
    leaves no room is cut off rather than waited for."""
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent != len(data):
        raise ConnectionError("the client does not read its answers")


async def _dial_while_watching(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, admit: Admit, timeout: float
) -> socket.socket:
    """Dial, and stop dialing if the client closes meanwhile (`ClientGone`). Bytes the
    client sends early (a TLS ClientHello) stay in its socket for the relay. The dial runs
    in this task (no task of its own to create per tunnel); the watcher cancels it."""
    task = asyncio.current_task()
    assert task is not None
    gone = False
    fd = sock.fileno()

    def on_readable() -> None:
        nonlocal gone
        loop.remove_reader(fd)
        try:
            gone = not sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            loop.add_reader(fd, on_readable)
            return
        except OSError:
            gone = True
        if gone:
            task.cancel()

    loop.add_reader(fd, on_readable)
    try:
        return await dial(admit.addresses, admit.port, timeout)
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        loop.remove_reader(fd)
