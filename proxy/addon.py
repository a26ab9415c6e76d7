"""The mitmproxy addon: a thin adapter from flows to the core's decisions.

Hooks gather facts from the flow, call `gate` and apply the answer. Every CONNECT that is
let through becomes a byte tunnel (TLS is never intercepted), and the upstream connection
goes to the address the policy checked, never to a name resolved again.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import RegularMode

from . import gate
from .addresses import IPAddress, format_hostport
from .errors import BadDestination
from .executors.resolver import ResolveError
from .runtime import Runtime

log = logging.getLogger("proxyd")
access = logging.getLogger("proxyd.access")

HOP_BY_HOP_PROXY_HEADERS = ("Proxy-Authorization", "Proxy-Connection")


class TunnelLayers:
    """Chooses protocol layers, in place of mitmproxy's NextLayer addon (hence the name)."""

    name = "nextlayer"

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        context = nextlayer.context
        if len(context.layers) == 1 and isinstance(context.client.proxy_mode, RegularMode):
            # The client's own connection: HTTP proxy protocol, plain text only.
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.regular)
        else:
            # Inside an admitted CONNECT: bytes both ways, nothing parsed or decrypted.
            nextlayer.layer = layers.TCPLayer(context, ignore=True)


class ProxydAddon:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def swap(self, runtime: Runtime) -> None:
        """Install a fully built runtime (reload): one reference, never a half-built one."""
        self.runtime = runtime

    # --- requests -----------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await self._admit(flow)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.method.upper() != "CONNECT":
            await self._admit(flow)

    async def _admit(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        runtime = self.runtime  # one config for the whole decision, even across a reload
        request = flow.request
        is_connect = request.method.upper() == "CONNECT"
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
        identity = gate.identify(
            runtime, credentials, request.method.upper(), request_uris(request), time.time()
        )
        if identity.refusal is not None:
            self._refuse(flow, identity.refusal, None)
            return
        if target.literal is not None:
            addresses: tuple[IPAddress, ...] = (target.literal,)
        else:
            assert target.name is not None
            try:
                addresses = await runtime.resolver.resolve(target.name, target.port)
            except ResolveError as e:
                self._refuse(flow, gate.Refusal(502, str(e), "dns"), identity.user)
                return
        source = gate.source_address(flow.client_conn.peername[0])
        decision, refusal = gate.admit(runtime.policy, source, addresses, target.port, identity)
        if refusal is not None:
            self._refuse(flow, refusal, identity.user)
            return
        # Connect to the address we checked: mitmproxy opens the upstream connection to
        # request.host. `data.host` leaves the Host header as the client sent it.
        request.data.host = str(addresses[0])
        flow.metadata["proxyd"] = {"user": identity.user, "rule": decision.rule}
        access.info(
            "%s %s %s %s %s rule=%s",
            source,
            identity.user or "-",
            request.method,
            target_text(target, request),
            "tunnel" if is_connect else "forward",
            decision.rule,
        )

    def _refuse(self, flow: http.HTTPFlow, refusal: gate.Refusal, user: str | None) -> None:
        runtime = self.runtime
        headers: list[tuple[bytes, bytes]] = [(b"Content-Type", b"text/plain; charset=utf-8")]
        if refusal.status == 407:
            for value in runtime.challenges(refusal.stale):
                headers.append((b"Proxy-Authenticate", value.encode("ascii")))
        flow.response = http.Response.make(refusal.status, f"proxyd: {refusal.reason}\n", headers)
        access.info(
            "%s %s %s %s:%s %d %s",
            flow.client_conn.peername[0],
            user or "-",
            flow.request.method,
            flow.request.host,
            flow.request.port,
            refusal.status,
            refusal.cause,
        )


def target_text(target: gate.Target, request: http.Request) -> str:
    return format_hostport(target.literal or target.host, target.port)


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
