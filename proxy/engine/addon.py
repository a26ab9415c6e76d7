"""The mitmproxy addons: thin adapters from flows to the core's decisions.

Hooks gather facts from the flow (as bytes where they are the client's), ask the admission
core and apply the outcome, all inside one boundary that refuses on any exception. The
upstream connection goes to the address the policy checked, never to a name resolved again;
`guard.EngineGuard` checks that again where mitmproxy connects. CONNECT tunnels are served
by proxyd's own front (front/tunnel.py), never here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from mitmproxy import connection, http
from mitmproxy.proxy import commands, events, layer, layers, server_hooks
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import RegularMode

from proxy.core import answers
from proxy.core.accesslog import AccessRecord
from proxy.core.admission import (
    PAC_PATHS,
    Admission,
    Admit,
    Ask,
    Outcome,
    Refuse,
    ServeLocal,
    printable,
)
from proxy.core.connlimit import SourceCounts
from proxy.core.records import (
    Exchange,
    listener_name,
    listener_of,
    refusal_record,
    unjudged_record,
)
from proxy.core.upstream import CONNECT_TIMEOUT, classify, explain
from proxy.engine import mitm_internals as engine
from proxy.engine.guard import ADMITTED, NOT_ADMITTED, Admitted, internal_error_response
from proxy.engine.mitm_internals import Proxyserver
from proxy.service.certificates import Certificates
from proxy.service.deciding import decide
from proxy.service.metrics import Metrics
from proxy.service.recorder import Recorder
from proxy.service.runtime import Runtime
from proxy.service.sessions import Sessions

log = logging.getLogger("proxyd")

HOP_BY_HOP_PROXY_HEADERS = ("Proxy-Authorization", "Proxy-Connection")


class ClosedTunnel(layer.Layer):
    """What a tunnel without an admission record gets: both ends closed, nothing relayed."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            yield commands.CloseConnection(self.context.client)


class TunnelLayers:
    """Chooses protocol layers, in place of mitmproxy's NextLayer addon (hence the name)."""

    name = "nextlayer"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        context = nextlayer.context
        if len(context.layers) == 1 and isinstance(context.client.proxy_mode, RegularMode):
            # The client's own connection: HTTP proxy protocol, plain text only.
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.regular)
            return
        # Tunnels are the front's (front/tunnel.py): the engine admits none, so a tunnel
        # here was never admitted. Default deny: closed, never passed through.
        nextlayer.layer = ClosedTunnel(context)
        self.metrics.internal_errors.labels("guard").inc()
        log.error("closed a tunnel from %s that was never admitted", context.client.peername[0])


class ProxydAddon:
    def __init__(
        self,
        runtime: Runtime,
        recorder: Recorder,
        tunnels: dict[str, Exchange],
        server: Proxyserver,
    ) -> None:
        self.runtime = runtime
        self.recorder = recorder
        self.tunnels = tunnels  # the front's open tunnels (drain waits for them)
        self.server = server
        # Upstream timeouts: connect timers by server connection id; the one plain request
        # per client connection (HTTP/1) awaiting its response head, by client id; and the
        # answer the `error` hook chose for the engine to send, by client id.
        self.connect_timers: dict[str, asyncio.TimerHandle] = {}
        self.response_waits: dict[str, asyncio.TimerHandle] = {}
        self.error_answers: dict[str, tuple[int, str]] = {}
        # Abuse state outlives reloads; a reload only changes the limits.
        self.admission = Admission(runtime.config.limits.auth_failures)
        self.counts = SourceCounts()  # kept by the listener, for both paths
        self.tls_peers: set[Any] = set()  # peers of TLS connections (the front adds them)
        self.sessions = Sessions()  # what revocation ends: tunnels, kept-alive connections
        self.certificates: Certificates | None = None  # with `tls`: what TLS serves

    def tls_context(self) -> ssl.SSLContext | None:
        return self.certificates.context if self.certificates is not None else None

    def swap(self, runtime: Runtime) -> None:
        """Install a fully built runtime (reload): one reference, never a half-built one."""
        runtime.ports = self.runtime.ports  # the listeners stay until a restart
        self.runtime = runtime
        self.admission.throttle.update(runtime.config.limits.auth_failures)

    # --- admission ----------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT after plain requests on one connection (a CONNECT that opens one is
        the front's). No client measured here does this; it is refused, not tunneled."""
        if flow.response is not None:
            return
        # The refusal first: nothing below can leave this flow without an answer.
        refusal = Refuse(400, "send CONNECT as the first request of a connection", "bad_request")
        body = refusal_response(flow, refusal, [])
        if flow.response is not None:
            flow.response.headers["Connection"] = "close"
        for name in HOP_BY_HOP_PROXY_HEADERS:
            flow.request.headers.pop(name, None)
        ask = self._ask(flow, ())
        self.recorder.record(
            refusal_record(ask, refusal, len(body), time.time()), decision=refusal.decision
        )

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.data.method != b"CONNECT":
            await self._admit(flow)

    async def _admit(self, flow: http.HTTPFlow) -> None:
        """The one fail-closed boundary: whatever happens inside, the flow leaves with an
        admission record or a refusal, never with neither."""
        if flow.response is not None:
            return
        request = flow.request
        # Never forwarded, whatever follows: the credentials are read from the raw fields.
        credentials = tuple(
            v for k, v in request.headers.fields if k.lower() == b"proxy-authorization"
        )
        for name in HOP_BY_HOP_PROXY_HEADERS:
            request.headers.pop(name, None)
        started = time.time()
        runtime = self.runtime  # one config for the whole decision, even across a reload
        try:
            ask = self._ask(flow, credentials)
            outcome = await decide(self.admission, runtime, ask, started)
            self._apply(flow, ask, outcome, runtime, started)
        except Exception:
            refuse_internal_error(flow)  # first: whatever fails below, the flow is refused
            peer = flow.client_conn.peername[0]
            method = printable(request.data.method.decode("latin-1"))
            log.exception("internal error while admitting %s from %s: refused", method, peer)
            self.recorder.metrics.internal_errors.labels("admission").inc()
            target = printable(request.data.authority.decode("latin-1") or request.host)
            self.recorder.record(
                unjudged_record(
                    peer, method, target, 500, time.time(), listener=self._listener(flow)
                ),
                decision="internal_error",
            )

    def _ask(self, flow: http.HTTPFlow, credentials: tuple[bytes, ...]) -> Ask:
        request, client = flow.request, flow.client_conn
        host_header = [v for k, v in request.headers.fields if k.lower() == b"host"]
        is_connect = request.data.method == b"CONNECT"
        return Ask(
            peer=client.peername[0],
            local=(client.sockname[0], client.sockname[1]) if client.sockname else None,
            method=request.data.method,
            proxy_authorization=credentials,
            authority=request.data.authority if is_connect else b"",
            scheme=request.scheme,
            host=request.host,
            port=request.port,
            path=request.data.path,
            host_header=host_header[0] if len(host_header) == 1 else None,
            over_connection_limit=client.peername in self.counts.over,
            tls=client.peername in self.tls_peers,
        )

    def _listener(self, flow: http.HTTPFlow) -> str:
        return listener_name(flow.client_conn.peername in self.tls_peers)

    def _apply(
        self, flow: http.HTTPFlow, ask: Ask, outcome: Outcome, runtime: Runtime, started: float
    ) -> None:
        if isinstance(outcome, Refuse):
            self._refuse(flow, ask, outcome, runtime)
        elif isinstance(outcome, ServeLocal):
            self._serve_local(flow, ask, outcome, runtime)
        elif isinstance(outcome, Admit):
            self._forward(flow, ask, outcome, started)
        else:  # a Resolve left over is a bug: the boundary refuses it
            raise TypeError(f"unexpected admission outcome {type(outcome).__name__}")

    def _forward(self, flow: http.HTTPFlow, ask: Ask, admit: Admit, started: float) -> None:
        request = flow.request
        exchange = Exchange(
            started=started,
            client=admit.client,
            user=admit.user,
            method=ask.display_method(),
            target=admit.target,
            rule=admit.rule,
            upstream=str(admit.address),
            listener=listener_of(ask),
        )
        # Connect to the address we checked: mitmproxy opens the upstream connection to
        # request.host. `data.host` leaves the Host header as the client sent it.
        request.data.host = str(admit.address)
        request.data.port = admit.port
        flow.metadata["proxyd"] = exchange
        if admit.user is not None:
            self._track(flow.client_conn, admit.user, ask)
        flow.metadata[ADMITTED] = Admitted(str(admit.address), admit.port)
        if request.stream or "content-length" not in request.headers:
            # A body of unknown length streams from the first byte, counted (see
            # responseheaders); a request without a body has nothing to stream.
            request.stream = exchange.count_up

    def _serve_local(
        self, flow: http.HTTPFlow, ask: Ask, local: ServeLocal, runtime: Runtime
    ) -> None:
        """Requests for the proxy itself: the PAC, without auth; anything else 404.
        Never forwarded, so the proxy can't loop to itself."""
        if local.path in PAC_PATHS and local.method in ("GET", "HEAD"):
            pac = runtime.pac(local.pac_host)
            headers = {
                "Content-Type": "application/x-ns-proxy-autoconfig",
                "ETag": pac.etag,
                "Cache-Control": "max-age=300",
            }
            if etag_matches(flow.request.headers.get("If-None-Match"), pac.etag):
                response = http.Response.make(304, b"", headers)
            elif local.method == "HEAD":  # the headers of a GET, no content
                response = http.Response.make(200, b"", headers)
                response.headers["Content-Length"] = str(len(pac.text.encode()))
            else:
                response = http.Response.make(200, pac.text, headers)
        else:
            response = http.Response.make(
                404, "proxyd: not found\n", {"Content-Type": "text/plain; charset=utf-8"}
            )
        flow.response = response
        self.recorder.record(
            AccessRecord(
                time=time.time(),
                duration_ms=0,
                client=ask.peer,
                user=None,
                method=local.method,
                target=ask.display_target(),
                status=response.status_code,
                bytes_up=0,
                bytes_down=len(response.raw_content or b""),
                rule=None,
                auth="none",
                content_type=response.headers.get("Content-Type"),
                listener=listener_of(ask),
            ),
            decision="local",
        )

    def _refuse(self, flow: http.HTTPFlow, ask: Ask, refusal: Refuse, runtime: Runtime) -> None:
        body = refusal_response(flow, refusal, runtime.challenges(refusal, ask.tls))
        self.recorder.record(
            refusal_record(ask, refusal, len(body), time.time()), decision=refusal.decision
        )

    # --- the end of admitted requests ----------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._stop_waiting(flow.client_conn.id)
        exchange = flow.metadata.get("proxyd")
        response = flow.response
        if not isinstance(exchange, Exchange) or response is None:
            return
        if response.stream or "content-length" not in response.headers:
            # Streamed from the first byte, and counted: a body of unknown length (chunked,
            # or until close) would otherwise be buffered up to stream_large_bodies and then
            # streamed by the engine without passing any callback of ours.
            response.stream = exchange.count_down

    def response(self, flow: http.HTTPFlow) -> None:
        self._stop_waiting(flow.client_conn.id)
        exchange = flow.metadata.get("proxyd")
        if not isinstance(exchange, Exchange) or exchange.method == "CONNECT":
            return
        assert flow.response is not None
        exchange.status = flow.response.status_code
        exchange.content_type = flow.response.headers.get("Content-Type")
        exchange.bytes_up += len(flow.request.raw_content or b"")
        exchange.bytes_down += len(flow.response.raw_content or b"")
        now = time.time()
        self.recorder.metrics.request_duration.observe(now - exchange.started)
        self.recorder.record(exchange.record(now), decision="allow")

    def error(self, flow: http.HTTPFlow) -> None:
        """A plain request the engine could not complete. Runs before the engine answers
        the client, so the answer it sends (`error_answer`) is the one chosen here."""
        client_id = flow.client_conn.id
        self._stop_waiting(client_id)
        exchange = flow.metadata.get("proxyd")
        if not isinstance(exchange, Exchange) or exchange.method == "CONNECT":
            return
        if flow.response is not None:
            exchange.status = flow.response.status_code
        else:
            message = flow.error.msg if flow.error else ""
            connected = flow.server_conn.timestamp_tcp_setup is not None
            exchange.status, reason = self._upstream_failure(
                flow.request.host, flow.request.port, message, connected, exchange.read_timed_out
            )
            self.error_answers[client_id] = (exchange.status, reason)
        self.recorder.record(exchange.record(time.time()), decision="allow")

    def error_answer(self, client: connection.Client, status: int, message: str) -> tuple[int, str]:
        """What the engine sends for a request it could not complete (mitm_internals)."""
        return self.error_answers.pop(client.id, None) or (status, printable(message))

    def _upstream_failure(
        self, host: str, port: int, message: str, connected: bool, read_timed_out: bool
    ) -> tuple[int, str]:
        if message == NOT_ADMITTED:  # the guard's refusal in server_connect
            return 500, "internal error"
        upstream = self.runtime.config.upstream
        return explain(
            classify(message, connected=connected, read_timed_out=read_timed_out),
            host,
            port,
            message,
            connect_timeout=upstream.connect_timeout,
            read_timeout=upstream.read_timeout,
        )

    # --- upstream timeouts ------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.error is None:
            self.connect_timers[data.server.id] = engine.cancel_connect_after(
                data.server, self.runtime.config.upstream.connect_timeout, CONNECT_TIMEOUT
            )

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if (timer := self.connect_timers.pop(data.server.id, None)) is not None:
            timer.cancel()

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.server_connected(data)

    def request(self, flow: http.HTTPFlow) -> None:
        """The whole request has been read (and, streamed, sent): its response may now
        take up to `upstream.read_timeout` to start."""
        exchange = flow.metadata.get("proxyd")
        if isinstance(exchange, Exchange) and exchange.method != "CONNECT" and not flow.response:
            self._await_response(flow, exchange)

    def _await_response(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        self._stop_waiting(flow.client_conn.id)
        self.response_waits[flow.client_conn.id] = asyncio.get_running_loop().call_later(
            self.runtime.config.upstream.read_timeout, self._no_response, flow, exchange
        )

    def _no_response(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        self.response_waits.pop(flow.client_conn.id, None)
        server = flow.server_conn
        if not server.connected:
            # Still connecting (the connect timeout has that) or not yet sent: the read
            # timeout counts from a request that has reached a connected upstream.
            if flow.live and server.error is None:
                self._await_response(flow, exchange)
            return
        handler = engine.handler_of(self.server, flow.client_conn.id)
        exchange.read_timed_out = True
        if handler is None or not engine.close(handler, server):
            exchange.read_timed_out = False

    def _stop_waiting(self, client_id: str) -> None:
        if (timer := self.response_waits.pop(client_id, None)) is not None:
            timer.cancel()

    def client_disconnected(self, client: connection.Client) -> None:
        self._stop_waiting(client.id)
        self.error_answers.pop(client.id, None)
        self.sessions.discard(client.id)

    def _track(self, client: connection.Client, user: str, ask: Ask) -> None:
        """A kept-alive connection of `user`: revocation closes it (sessions.py)."""

        def end(reason: str) -> None:
            handler = engine.handler_of(self.server, client.id)
            if handler is not None:
                engine.close(handler, client)
            record = unjudged_record(
                ask.peer,
                "-",
                "-",
                403,
                time.time(),
                0,
                listener_of(ask),
                user,
                f"revoked_{reason}",
            )
            self.recorder.record(record, decision="revoked")

        self.sessions.add(client.id, self.runtime.verifier.lookup(user), end)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: `*`, or a list of tags compared weakly (W/ ignored)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def refusal_response(flow: http.HTTPFlow, refusal: Refuse, challenges: list[str]) -> bytes:
    """Answer `flow` with the refusal (its response is set first, before anything that
    could fail); returns the body sent."""
    body = answers.text_body(refusal.reason)
    flow.response = http.Response.make(
        refusal.status, body, answers.refusal_headers(refusal, challenges)
    )
    if flow.request.stream:
        # mitmproxy can't answer early and stream the body; read it and drop it.
        flow.request.stream = False
    return body


def refuse_internal_error(flow: http.HTTPFlow) -> None:
    """The boundary's error path: a 500 that closes the connection, with nothing in it that
    could fail; if even that fails, the flow is killed (closed without an answer)."""
    try:
        flow.response = internal_error_response()
        flow.request.stream = False
        flow.metadata.pop(ADMITTED, None)
    except Exception:
        flow.kill()  # type: ignore[no-untyped-call]
