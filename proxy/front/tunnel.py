"""The tunnel front: CONNECT served by proxyd itself, from the first byte to the last.

Every connection on the proxy ports comes here first (`FrontServer` accepts it). Its first
bytes are peeked, not read. A TLS handshake (on the TLS listener, or on the plain one when
a certificate is configured) is answered by asyncio's TLS, and the same steps follow
inside it (front/clients.py has both kinds of connection); plain text on the TLS listener
is answered in plain text and logged. Then anything but a CONNECT goes to the engine
untouched (`handoff`), noise gets a 400 at once. A CONNECT head is read here with the same
limits as the engine's (400, 431) and judged by the same admission core inside the same
fail-closed boundary as plain HTTP (the Digest nonces and replay window, throttles,
connection caps, trusted sources are the core's). A refusal goes out in one write and the
connection stays open for the retried CONNECT (a 407 is answered by curl and Chromium on
the same connection). An admitted tunnel is checked once more against the policy (the
second lock), dialed over every checked address within the connect timeout, answered 200,
and relayed from its first byte (by `splice`; inside TLS in user space), the bytes the
client sent along with the CONNECT first.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Protocol

from proxy.core import answers
from proxy.core.accesslog import CLIENT_GONE
from proxy.core.admission import Admission, Admit, Ask, Refuse, read_offer, source_address
from proxy.core.audit import grant_record
from proxy.core.basic import BasicCredentials, password_matches
from proxy.core.connecthead import BadHead, Head, head_end, is_connect, parse_head
from proxy.core.connlimit import SourceCounts
from proxy.core.firstbytes import TLS_HANDSHAKE, Path, classify
from proxy.core.headerlimit import too_large_answer
from proxy.core.policy import Verdict
from proxy.core.records import (
    Exchange,
    listener_name,
    listener_of,
    refusal_record,
    unjudged_record,
)
from proxy.core.upstream import explain
from proxy.effects.audit import AuditLog
from proxy.effects.userfile import lock_user
from proxy.front import splice
from proxy.front.clients import Client, PlainClient, Relay, TlsClient
from proxy.front.dial import DialFailed, dial
from proxy.service.deciding import decide
from proxy.service.recorder import Recorder
from proxy.service.runtime import Runtime
from proxy.service.sessions import Sessions

log = logging.getLogger("proxyd")

Handoff = Callable[[Client, bytes], Awaitable[None]]
NOT_HTTP = "the connection did not start with an HTTP request: this is an HTTP proxy"
TLS_ON_PLAIN = (
    "a TLS handshake on the plain-text proxy port: give the proxy as http://host:port "
    "(the tunnel inside CONNECT is what carries TLS)"
)
PLAINTEXT_ON_TLS = (
    "plain text on the TLS port: give the proxy as https://host:port (this request, and "
    "any password in it, crossed the network readable; a client that cannot speak TLS to "
    "a proxy uses the plain-text port with Digest, or `proxyd relay`)"
)
HANDSHAKE_LOG_INTERVAL = 60.0
HANDSHAKE_TIMEOUT = 10.0  # seconds for a client's TLS handshake, at most limits.idle_timeout


class Host(Protocol):
    """What the front shares with the engine's addon: one runtime (swapped on reload),
    one admission core, one recorder, one table of open tunnels, one connection count."""

    runtime: Runtime
    admission: Admission
    recorder: Recorder
    tunnels: dict[str, Exchange]
    counts: SourceCounts
    tls_peers: set[Any]  # peer addresses of the TLS connections the engine serves
    sessions: Sessions  # authenticated tunnels and connections, for revocation

    def tls_context(self) -> ssl.SSLContext | None:
        """The context serving new TLS connections (None: no certificate configured)."""


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
        self.idle: dict[Relay, list[float]] = {}  # open tunnel -> [last activity]
        self.idle_timeout = 600.0  # limits.idle_timeout, as the latest tunnel saw it
        self.sweeper: asyncio.TimerHandle | None = None
        self.handshake_failures = 0  # since the last log line about them
        self.handshake_logged = -HANDSHAKE_LOG_INTERVAL

    # --- one connection ---------------------------------------------------------------

    async def serve(
        self, sock: socket.socket, peer: Any, handoff: Handoff, listener: str = "http"
    ) -> None:
        """One accepted connection, on the plain listener (`http`) or the TLS one."""
        host = self.host
        counted = host.counts.opened(peer, host.runtime.config.limits.max_connections_per_source)
        plain = PlainClient(sock)
        client: Client = plain
        try:
            opened = await self._open(plain, peer, listener)
            if opened is not None:
                client, first = opened
                if not first:  # TLS: the first bytes inside it
                    async with asyncio.timeout(host.runtime.config.limits.idle_timeout):
                        first = await client.peek()
                if first and await self._serve(client, peer, first, not counted, handoff):
                    await client.close_after_answer()
        except (ConnectionError, TimeoutError, ssl.SSLError):
            pass  # the client went away or stayed silent: nothing to answer
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ENOTCONN):
                log.warning("connection from %s: %s", peer[0], e)
        finally:
            host.counts.closed(peer, counted)
            host.tls_peers.discard(peer)
            client.close()

    async def _open(
        self, plain: PlainClient, peer: Any, listener: str
    ) -> tuple[Client, bytes] | None:
        """The connection and its first bytes (none yet after a TLS handshake, done where
        the client opens one and a certificate is configured); None once it is dealt with
        (closed, a failed handshake, plain text on the TLS port answered)."""
        idle = self.host.runtime.config.limits.idle_timeout
        async with asyncio.timeout(idle):
            first = await plain.peek()
        if not first:
            return None
        context = self.host.tls_context()
        if listener == "tls" and first[0] != TLS_HANDSHAKE:
            await self._plaintext_on_tls(plain, peer)
            return None
        if first[0] != TLS_HANDSHAKE or context is None:
            return plain, first
        handshakes = self.host.recorder.metrics.tls_handshakes
        try:
            client = await TlsClient.handshake(plain.sock, context, min(HANDSHAKE_TIMEOUT, idle))
        except (ssl.SSLError, ConnectionError, TimeoutError) as e:
            handshakes.labels("failed").inc()
            self._handshake_failed(peer, e)
            return None
        handshakes.labels("ok").inc()
        self.host.tls_peers.add(peer)
        return client, b""

    async def _serve(
        self, client: Client, peer: Any, first: bytes, over_limit: bool, handoff: Handoff
    ) -> bool:
        """Serve one connection; True if it ends with an answer the client must still read."""
        idle = self.host.runtime.config.limits.idle_timeout
        path = classify(first)
        if path is Path.ENGINE:
            await handoff(client, b"")
            return False
        if path is not Path.TUNNEL:
            self._not_http(client, peer, TLS_ON_PLAIN if path is Path.TLS else NOT_HTTP)
            return True
        buffer = bytearray()
        while True:
            limit = self.host.runtime.config.limits.max_header_bytes
            try:
                async with asyncio.timeout(idle):
                    end = await _read_head(client, buffer, limit)
            except BadHead as e:
                method = b"CONNECT" if is_connect(buffer) else b"-"
                self._bad_head(client, peer, e, method)
                return True
            if end is None:
                return False  # closed before a whole head
            if not is_connect(buffer):
                await handoff(client, bytes(buffer))
                return False
            try:
                head = parse_head(buffer, limit)
            except BadHead as e:
                self._bad_head(client, peer, e, b"CONNECT")
                return True
            assert head is not None
            rest = buffer[head.size :]
            ending = await self._connect(client, peer, head, bytes(rest), over_limit)
            if ending is not Ending.KEEP:
                return ending is Ending.ANSWERED
            buffer = rest  # a pipelined next request, if any

    # --- one CONNECT ------------------------------------------------------------------

    async def _connect(
        self,
        client: Client,
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
            ask = Ask(
                peer=peer[0],
                local=client.local(),
                method=head.method,
                proxy_authorization=head.values(b"proxy-authorization"),
                authority=head.target,
                over_connection_limit=over_limit,
                tls=client.tls,
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
            self._internal_error(client, peer, head)
            return Ending.ANSWERED
        if refusal is not None:
            answer, keep = refusal
            client.send(answer)
            return Ending.KEEP if keep else Ending.ANSWERED
        assert isinstance(outcome, Admit)
        return await self._tunnel(client, ask, outcome, early, runtime, started)

    def _checked_again(self, runtime: Runtime, ask: Ask, admit: Admit, now: float) -> bool:
        """The second lock, independent of the admission core's own logic: the policy
        itself must allow every address about to be dialed."""
        decision = runtime.policy.decide(
            source_address(ask.peer), admit.addresses, admit.port, admit.who, now, "CONNECT"
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
        headers = answers.refusal_headers(refusal, runtime.challenges(refusal, ask.tls))
        body = answers.text_body(refusal.reason)
        keep = keep_alive and not (refusal.status == 429 and refusal.cause == "connections")
        self.host.recorder.record(
            refusal_record(ask, refusal, len(body), time.time()), decision=refusal.decision
        )
        return answers.encode(refusal.status, headers, body, close=not keep), keep

    async def _tunnel(
        self,
        client: Client,
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
            listener=listener_of(ask),
        )
        loop = asyncio.get_running_loop()
        upstream = runtime.config.upstream
        try:
            server = await _dial_while_watching(client, admit, upstream.connect_timeout)
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
            client.send(answer)
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

        relay: Relay | None = None
        try:
            relay = await client.relay(server, self.pipes, early, on_bytes)
            client.send(answers.ESTABLISHED)
            metrics.tunnel_setup.observe(time.time() - started)
            self._watch_idle(relay, activity, runtime.config.limits.idle_timeout)
            if admit.user is not None:
                started_relay = relay

                def end(reason: str) -> None:
                    exchange.revoked = reason
                    started_relay.expire()

                host.sessions.add(key, runtime.verifier.lookup(admit.user), end)
            relay.start()
            error = await relay.done
            if error is not None and not isinstance(error, (ConnectionError, TimeoutError)):
                log.warning("tunnel from %s to %s ended: %s", ask.peer, admit.target, error)
        except asyncio.CancelledError:
            if relay is not None:
                relay.abort()  # shutdown: the sockets close with the relay
            raise
        except OSError:
            if relay is not None:
                relay.abort()
        finally:
            if relay is not None:
                self.idle.pop(relay, None)
            server.close()
            host.tunnels.pop(key, None)
            host.sessions.discard(key)
            metrics.tunnels_active.dec()
            host.recorder.record(exchange.record(time.time()), decision="allow")
        return Ending.CLOSED

    # --- idle tunnels -----------------------------------------------------------------

    def _watch_idle(self, relay: Relay, activity: list[float], timeout: float) -> None:
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

    def _not_http(self, client: Client, peer: Any, reason: str) -> None:
        answer, body = answers.plain(400, reason)
        self._unjudged(client, peer, "-", "-", 400, len(body), "not_http")
        client.send(answer)

    def _bad_head(self, client: Client, peer: Any, error: BadHead, method: bytes) -> None:
        limit = self.host.runtime.config.limits.max_header_bytes
        if error.status == 431:
            answer = too_large_answer(limit)
        else:
            answer = answers.plain(error.status, error.reason)[0]
        self._unjudged(client, peer, method.decode("ascii"), "-", error.status, 0, "bad_request")
        client.send(answer)

    def _internal_error(self, client: Client, peer: Any, head: Head) -> None:
        """The boundary's error path: refuse first, then log and count."""
        try:
            client.send(answers.plain(500, "internal error")[0])
        finally:
            log.exception("internal error while admitting CONNECT from %s: refused", peer[0])
            self.host.recorder.metrics.internal_errors.labels("admission").inc()
            # As the access log writes targets: never the user info of `user:pass@host`.
            target = Ask(peer=peer[0], local=None, method=head.method, authority=head.target)
            target_text = target.display_target()
            self._unjudged(client, peer, "CONNECT", target_text, 500, 0, "internal_error")

    def _unjudged(
        self,
        client: Client,
        peer: Any,
        method: str,
        target: str,
        status: int,
        body: int,
        decision: str,
    ) -> None:
        listener = listener_name(client.tls)
        record = unjudged_record(peer[0], method, target, status, time.time(), body, listener)
        self.host.recorder.record(record, decision=decision)

    def _handshake_failed(self, peer: Any, error: Exception) -> None:
        """One WARNING per interval with a count: a browser that does not trust the
        certificate falls back to the PAC's plain `PROXY` without a word, so this line is
        where an operator sees it (scanners and noise land here too)."""
        self.handshake_failures += 1
        now = time.monotonic()
        if now - self.handshake_logged >= HANDSHAKE_LOG_INTERVAL:
            log.warning(
                "TLS handshake failed %d time(s) in the last %ds; the last from %s: %s "
                "(a client that does not trust the certificate, or not TLS at all)",
                self.handshake_failures,
                int(HANDSHAKE_LOG_INTERVAL),
                peer[0],
                getattr(error, "reason", None) or error,
            )
            self.handshake_failures = 0
            self.handshake_logged = now

    # --- plain text on the TLS port ---------------------------------------------------

    async def _plaintext_on_tls(self, client: PlainClient, peer: Any) -> None:
        """A client that ignored the `https` scheme sent its request, and perhaps a
        password, in clear. Answered in plain text (it can read nothing else), logged with
        the user name it gave (never the password), counted as an auth failure, and, with
        `auth.lock_on_plaintext`, a user whose valid password was in it is locked."""
        runtime = self.host.runtime
        limit = runtime.config.limits.max_header_bytes
        buffer = bytearray()
        head: Head | None = None
        try:
            async with asyncio.timeout(min(HANDSHAKE_TIMEOUT, runtime.config.limits.idle_timeout)):
                if await _read_head(client, buffer, limit) is not None:
                    head = parse_head(buffer, limit)
        except (BadHead, TimeoutError):
            pass  # answered all the same: what it sent is not a request proxyd reads
        method, target, user, basic = "-", "-", None, None
        if head is not None:
            method = Ask(peer="", local=None, method=head.method).display_method()
            if head.method == b"CONNECT":
                connect = Ask(peer="", local=None, method=head.method, authority=head.target)
                target = connect.display_target()
            offer = read_offer(head.values(b"proxy-authorization"), basic_allowed=True)
            user, basic = offer.username, offer.basic
        answer, body = answers.plain(400, PLAINTEXT_ON_TLS)
        record = unjudged_record(
            peer[0], method, target, 400, time.time(), len(body), "tls", user, "plaintext_on_tls"
        )
        self.host.recorder.record(record, decision="plaintext_on_tls")
        if basic is not None and runtime.config.auth.lock_on_plaintext:
            self._lock_leaked(runtime, basic, peer)
        client.send(answer)
        await client.close_after_answer()

    def _lock_leaked(self, runtime: Runtime, basic: BasicCredentials, peer: Any) -> None:
        """Lock the user whose valid password was just sent in clear."""
        user = runtime.users.lookup(basic.username)
        if user is None or user.locked or not password_matches(basic, runtime.config.realm, user):
            return
        try:
            locked = lock_user(runtime.config.auth.users_file, user.name)
        except (OSError, ValueError) as e:
            log.error("could not lock user %s (password sent in clear): %s", user.name, e)
            return
        if locked:
            record = grant_record(
                "user",
                "lock",
                user.name,
                "proxyd",
                time.time(),
                reason=f"password sent in clear to the TLS port from {peer[0]}",
            )
            try:
                AuditLog(runtime.config.audit_log).write(record)
            except OSError as e:
                log.error("could not audit the lock of %s: %s", user.name, e)
            log.warning(
                "locked user %s: its password was sent in clear to the TLS port from %s; "
                "`proxyd users passwd %s` sets a new one and unlocks it",
                user.name,
                peer[0],
                user.name,
            )


# --- steps -------------------------------------------------------------------------------


async def _read_head(client: Client, buffer: bytearray, limit: int) -> int | None:
    """Read until `buffer` holds a whole head; its end, or None if the client closed."""
    while (end := head_end(buffer, limit)) is None:
        data = await client.recv()
        if not data:
            return None
        buffer += data
    return end


async def _dial_while_watching(client: Client, admit: Admit, timeout: float) -> socket.socket:
    """Dial, and stop dialing if the client closes meanwhile (`ClientGone`). Bytes the
    client sends early (a TLS ClientHello) stay for the relay. The dial runs in this task
    (no task of its own to create per tunnel); the watcher cancels it."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def on_gone() -> None:
        nonlocal gone
        if not gone:
            gone = True
            task.cancel()

    stop_watching = client.watch_gone(on_gone)
    try:
        return await dial(admit.addresses, admit.port, timeout)
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        stop_watching()
