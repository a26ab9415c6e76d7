"""The mitmproxy addons: thin adapters from flows to the core's decisions.

Hooks gather facts from the flow, call `gate` and apply the answer. Every CONNECT that is
let through becomes a byte tunnel (TLS is never intercepted), and the upstream connection
goes to the address the policy checked, never to a name resolved again.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import connection, http
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import RegularMode
from mitmproxy.proxy.server import ConnectionHandler

from . import gate, splice
from .accesslog import AccessRecord
from .addresses import IPAddress, format_hostport, parse_ip_literal
from .engine import Proxyserver
from .errors import BadDestination
from .executors.resolver import ResolveError
from .recorder import Recorder
from .runtime import Runtime
from .takeover import TAKEOVER_AFTER, Takeover
from .throttle import FailureThrottle

HOP_BY_HOP_PROXY_HEADERS = ("Proxy-Authorization", "Proxy-Connection")
PAC_PATHS = ("/proxy.pac", "/wpad.dat")


@dataclass
class Exchange:
    """What proxyd knows of one admitted request or tunnel until it ends."""

    started: float
    client: str
    user: str | None
    method: str
    target: str
    rule: str | None
    upstream: str
    bytes_up: int = 0
    bytes_down: int = 0
    status: int = 200
    content_type: str | None = field(default=None)

    # Stream callbacks for bodies mitmproxy streams instead of buffering.
    def count_up(self, chunk: bytes) -> bytes:
        self.bytes_up += len(chunk)
        return chunk

    def count_down(self, chunk: bytes) -> bytes:
        self.bytes_down += len(chunk)
        return chunk

    def count(self, up: bool, n: int) -> None:
        if up:
            self.bytes_up += n
        else:
            self.bytes_down += n

    def record(self, now: float) -> AccessRecord:
        return AccessRecord(
            time=now,
            duration_ms=int((now - self.started) * 1000),
            client=self.client,
            user=self.user,
            method=self.method,
            target=self.target,
            status=self.status,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            rule=self.rule,
            auth="ok" if self.user else "none",
            upstream=self.upstream,
            content_type=self.content_type,
        )


class CountingTunnel(layers.TCPLayer):
    """A passthrough tunnel that counts the bytes it relays (mitmproxy's ignored TCP layer
    fires no hooks, so nothing else could), keeps a client's half-close, and hands itself to the
    splice relay once it has carried `TAKEOVER_AFTER` bytes."""

    def __init__(
        self,
        context: Context,
        exchange: Exchange,
        find_handler: Callable[[], ConnectionHandler | None],
        pipes: splice.PipePool,
    ) -> None:
        super().__init__(context, ignore=True)
        self.exchange = exchange
        self.find_handler = find_handler
        self.pipes = pipes
        self.takeover: Takeover | None = None
        self.tried_takeover = False

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self.takeover is not None and isinstance(event, events.ConnectionClosed):
            # Not the peer's end: the marker that mitmproxy has delivered all it read.
            self.takeover.drained(event.connection)
            return
        if isinstance(event, events.DataReceived):
            self.exchange.count(event.connection is self.context.client, len(event.data))
        for command in super().handle_event(event):
            if (
                isinstance(command, commands.CloseTcpConnection)
                and command.half_close
                and command.connection is self.context.server
            ):
                # The client has sent end-of-file (`ssh -N`, `nc -N`, a request then
                # shutdown): mitmproxy's CONNECT passthrough would make this a full close,
                # and the server's reply would be lost. The server's own end still ends the
                # whole tunnel, as in Squid: a client that never closes holds nothing open.
                handler = self.find_handler()
                if handler is not None:
                    handler.close_connection(command.connection, half_close=True)
                    continue
            yield command
        exchange = self.exchange
        if not self.tried_takeover and exchange.bytes_up + exchange.bytes_down >= TAKEOVER_AFTER:
            self.tried_takeover = True
            self.takeover = Takeover.begin(
                self.find_handler(),
                self.context.client,
                self.context.server,
                self.pipes,
                exchange.count,
            )


class TunnelLayers:
    """Chooses protocol layers, in place of mitmproxy's NextLayer addon (hence the name)."""

    name = "nextlayer"

    def __init__(self, tunnels: dict[str, Exchange], server: Proxyserver) -> None:
        self.tunnels = tunnels
        self.server = server  # its `connections` map leads a tunnel to its handler
        self.pipes = splice.PipePool()

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        context = nextlayer.context
        if len(context.layers) == 1 and isinstance(context.client.proxy_mode, RegularMode):
            # The client's own connection: HTTP proxy protocol, plain text only.
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.regular)
            return
        # Inside an admitted CONNECT: bytes both ways, nothing parsed or decrypted.
        exchange = self.tunnels.get(context.client.id)
        if exchange is None:
            nextlayer.layer = layers.TCPLayer(context, ignore=True)
            return
        client_id = context.client.id
        nextlayer.layer = CountingTunnel(
            context, exchange, lambda: self.server.connections.get(client_id), self.pipes
        )

    def done(self) -> None:
        self.pipes.close()


class ProxydAddon:
    def __init__(self, runtime: Runtime, recorder: Recorder, tunnels: dict[str, Exchange]) -> None:
        self.runtime = runtime
        self.recorder = recorder
        self.tunnels = tunnels  # by client connection id: one tunnel per connection
        limits = runtime.config.limits
        # Abuse state outlives reloads; a reload only changes the limits.
        self.source_failures = FailureThrottle(limits.failures_per_source)
        self.user_failures = FailureThrottle(limits.failures_per_user)
        self.connections: collections.Counter[str] = collections.Counter()
        self.over_limit: set[str] = set()  # client ids refused for too many connections

    def swap(self, runtime: Runtime) -> None:
        """Install a fully built runtime (reload): one reference, never a half-built one."""
        self.runtime = runtime
        self.source_failures.spec = runtime.config.limits.failures_per_source
        self.user_failures.spec = runtime.config.limits.failures_per_user

    # --- connections per source ---------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        source = client.peername[0]
        if self.connections[source] >= self.runtime.config.limits.max_connections_per_source:
            # Not counted; its first request gets a 429 (a clear answer, not a reset).
            self.over_limit.add(client.id)
        else:
            self.connections[source] += 1

    # --- admission ----------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await self._admit(flow)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.method.upper() != "CONNECT":
            await self._admit(flow)

    async def _admit(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        started = time.time()
        runtime = self.runtime  # one config for the whole decision, even across a reload
        request = flow.request
        is_connect = request.method.upper() == "CONNECT"
        if flow.client_conn.id in self.over_limit:
            limit = runtime.config.limits.max_connections_per_source
            too_many = gate.Refusal(
                429, f"more than {limit} connections from your address", "connections"
            )
            self._refuse(flow, too_many, None)
            return
        if not is_connect and addressed_to_proxy(flow, runtime):
            self._serve_local(flow, runtime)
            return
        credentials = request.headers.get_all("Proxy-Authorization")
        for name in HOP_BY_HOP_PROXY_HEADERS:
            request.headers.pop(name, None)
        if not is_connect and request.scheme != "http":
            self._refuse(flow, gate.Refusal(400, "use CONNECT for https", "bad_request"), None)
            return
        try:
            target = gate.parse_target(request.host, request.port)
        except BadDestination as e:
            self._refuse(flow, gate.Refusal(400, str(e), "bad_destination"), None)
            return
        source_key = flow.client_conn.peername[0]
        offer = gate.read_offer(credentials)
        claimed = offer.claimed_username
        if credentials and (
            self.source_failures.throttled(source_key, started)
            or (claimed is not None and self.user_failures.throttled(claimed, started))
        ):
            # Not even verified: a guesser learns nothing while throttled.
            self._refuse(
                flow, gate.Refusal(429, "too many failed logins, retry later", "throttled"), claimed
            )
            return
        identity = gate.identify(
            runtime, offer, request.method.upper(), request_uris(request), started
        )
        failure = identity.auth_failure.reason if identity.auth_failure else None
        if identity.refusal is not None or (failure and failure not in gate.NOT_ABUSE):
            self.source_failures.failed(source_key, started)
            if claimed is not None:
                self.user_failures.failed(claimed, started)
        if identity.refusal is not None:
            self._refuse(flow, identity.refusal, None)
            return
        addresses: tuple[IPAddress, ...]
        if target.literal is not None:
            addresses = (target.literal,)
        else:
            assert target.name is not None
            try:
                addresses = await runtime.resolver.resolve(target.name, target.port)
            except ResolveError as e:
                self._refuse(flow, gate.Refusal(502, str(e), "dns"), identity.user)
                return
        source = gate.source_address(flow.client_conn.peername[0])
        decision, refusal = gate.admit(
            runtime.policy, source, addresses, target.port, identity, started
        )
        if refusal is not None:
            self._refuse(flow, refusal, identity.user)
            return
        exchange = Exchange(
            started=started,
            client=str(source),
            user=identity.user,
            method=request.method.upper(),
            target=describe_target(request, target),
            rule=decision.rule,
            upstream=str(addresses[0]),
        )
        # Connect to the address we checked: mitmproxy opens the upstream connection to
        # request.host. `data.host` leaves the Host header as the client sent it.
        request.data.host = str(addresses[0])
        flow.metadata["proxyd"] = exchange
        if is_connect:
            self.tunnels[flow.client_conn.id] = exchange
            self.recorder.metrics.tunnels_active.inc()
        elif request.stream:
            request.stream = exchange.count_up

    def _serve_local(self, flow: http.HTTPFlow, runtime: Runtime) -> None:
        """Requests for the proxy itself: the PAC, without auth; anything else 404.
        Never forwarded, so the proxy can't loop to itself."""
        request = flow.request
        path = request.path.split("?", 1)[0]
        if path in PAC_PATHS and request.method in ("GET", "HEAD"):
            pac = runtime.pac(request.host_header or format_hostport(request.host, request.port))
            headers = {
                "Content-Type": "application/x-ns-proxy-autoconfig",
                "ETag": pac.etag,
                "Cache-Control": "max-age=300",
            }
            if etag_matches(request.headers.get("If-None-Match"), pac.etag):
                flow.response = http.Response.make(304, b"", headers)
            elif request.method == "HEAD":  # the headers of a GET, no content
                flow.response = http.Response.make(200, b"", headers)
                flow.response.headers["Content-Length"] = str(len(pac.text.encode()))
            else:
                flow.response = http.Response.make(200, pac.text, headers)
        else:
            flow.response = http.Response.make(
                404, "proxyd: not found\n", {"Content-Type": "text/plain; charset=utf-8"}
            )
        response = flow.response
        self.recorder.record(
            AccessRecord(
                time=time.time(),
                duration_ms=0,
                client=flow.client_conn.peername[0],
                user=None,
                method=request.method,
                target=request.url,
                status=response.status_code,
                bytes_up=0,
                bytes_down=len(response.raw_content or b""),
                rule=None,
                auth="none",
                content_type=response.headers.get("Content-Type"),
            ),
            decision="local",
        )

    def _refuse(self, flow: http.HTTPFlow, refusal: gate.Refusal, user: str | None) -> None:
        headers: list[tuple[bytes, bytes]] = [(b"Content-Type", b"text/plain; charset=utf-8")]
        if refusal.status == 429:
            headers.append((b"Retry-After", b"60"))
            if refusal.cause == "connections":
                headers.append((b"Connection", b"close"))
        if refusal.status == 407:
            for value in self.runtime.challenges(refusal.stale):
                headers.append((b"Proxy-Authenticate", value.encode("ascii")))
        body = f"proxyd: {refusal.reason}\n"
        flow.response = http.Response.make(refusal.status, body, headers)
        if flow.request.stream:
            # mitmproxy can't answer early and stream the body; read it and drop it.
            flow.request.stream = False
        now = time.time()
        request = flow.request
        target = (
            request.authority or f"{request.host}:{request.port}"
            if request.method.upper() == "CONNECT"
            else request.url
        )
        self.recorder.record(
            AccessRecord(
                time=now,
                duration_ms=0,
                client=flow.client_conn.peername[0],
                user=user,
                method=request.method,
                target=target,
                status=refusal.status,
                bytes_up=0,
                bytes_down=len(body),
                rule=refusal.rule,
                auth=(
                    refusal.cause
                    if refusal.status == 407 or refusal.cause == "throttled"
                    else ("ok" if user else "none")
                ),
                content_type="text/plain",
            ),
            decision="auth_required" if refusal.status == 407 else refusal.cause,
        )

    # --- the end of admitted requests and tunnels ---------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get("proxyd")
        if isinstance(exchange, Exchange) and flow.response is not None and flow.response.stream:
            flow.response.stream = exchange.count_down

    def response(self, flow: http.HTTPFlow) -> None:
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
        exchange = flow.metadata.get("proxyd")
        if isinstance(exchange, Exchange) and exchange.method != "CONNECT":
            exchange.status = flow.response.status_code if flow.response else 502
            self.recorder.record(exchange.record(time.time()), decision="allow")

    def http_connected(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get("proxyd")
        if isinstance(exchange, Exchange):
            self.recorder.metrics.tunnel_setup.observe(time.time() - exchange.started)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        exchange = self.tunnels.get(flow.client_conn.id)
        if exchange is not None and flow.response is not None:
            exchange.status = flow.response.status_code  # upstream unreachable: 502

    def client_disconnected(self, client: connection.Client) -> None:
        if client.id in self.over_limit:
            self.over_limit.discard(client.id)
        else:
            source = client.peername[0]
            self.connections[source] -= 1
            if self.connections[source] <= 0:
                del self.connections[source]
        exchange = self.tunnels.pop(client.id, None)
        if exchange is not None:
            self.recorder.metrics.tunnels_active.dec()
            self.recorder.record(exchange.record(time.time()), decision="allow")


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: `*`, or a list of tags compared weakly (W/ ignored)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def addressed_to_proxy(flow: http.HTTPFlow, runtime: Runtime) -> bool:
    """Is the request for the proxy itself: its public address, or the address and port
    the client connected to? (mitmproxy has erased origin-form vs absolute-form by now.)"""
    request = flow.request
    public = runtime.config.public_address
    if public is not None and (request.host.lower(), request.port) == public:
        return True
    sockname = flow.client_conn.sockname
    if not sockname or request.port != sockname[1]:
        return False
    try:
        literal = parse_ip_literal(request.host)
    except BadDestination:
        return False
    return literal is not None and literal == gate.source_address(sockname[0])


def describe_target(request: http.Request, target: gate.Target) -> str:
    if request.method.upper() == "CONNECT":
        return format_hostport(target.literal or target.host, target.port)
    return request.url


def request_uris(request: http.Request) -> set[str]:
    """The `uri` values a client may put in its digest for this request.

    CONNECT: the authority (`host:port`). Otherwise the origin-form path (curl) or the
    absolute URI (other clients), with and without an explicit default port.
    """
    if request.method.upper() == "CONNECT":
        return {request.authority, f"{request.host}:{request.port}"} - {""}
    host = request.host if ":" not in request.host else f"[{request.host}]"
    path = request.path
    uris = {path, f"{request.scheme}://{host}:{request.port}{path}"}
    if request.port == 80:
        uris.add(f"{request.scheme}://{host}{path}")
    return uris
