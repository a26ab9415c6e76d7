"""The second lock: where mitmproxy opens an upstream connection, only what the gate
admitted goes through.

`ProxydAddon` (the first lock) leaves every flow with an admission record or a refusal.
This addon does not trust that. It runs after it on the same hooks and checks the record
against where the flow is about to go, remembers per client connection the one address
the current request or tunnel may reach, and in `server_connect` (which mitmproxy runs
right before it connects) kills every connection to any other address. Each step starts
from "deny" and grants only once the check has passed, so an exception inside this addon
(which mitmproxy would log and carry on from) leaves the door shut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from proxy.service.metrics import Metrics

log = logging.getLogger("proxyd.guard")

ADMITTED = "proxyd.admitted"  # flow.metadata key of the gate's record
NOT_ADMITTED = "proxyd: not admitted"


@dataclass(frozen=True)
class Admitted:
    """The gate's word that a flow may reach exactly this address and port."""

    host: str
    port: int


def internal_error_response() -> http.Response:
    """The answer of both locks' error paths: a 500 that closes the connection."""
    return http.Response.make(
        500,
        b"proxyd: internal error\n",
        {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"},
    )


class EngineGuard:
    name = "proxyd-guard"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.allowed: dict[str, tuple[str, int]] = {}  # client connection id -> address

    # Both hooks run after ProxydAddon's (addon order), on every request and tunnel.
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.data.method != b"CONNECT":
            self._check(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def _check(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        self.allowed.pop(client_id, None)  # whatever the last request could reach, not this one
        if flow.response is not None or flow.error is not None:
            return  # answered or killed here: nothing goes upstream
        record = flow.metadata.get(ADMITTED)
        target = (flow.request.host, flow.request.port)
        if not isinstance(record, Admitted) or (record.host, record.port) != target:
            self._refuse(flow, "a request that was never admitted")
            return
        self.allowed[client_id] = target

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        server.error = NOT_ADMITTED  # default deny, until the address is the admitted one
        allowed = self.allowed.get(data.client.id)
        if allowed is not None and server.address == allowed:
            server.error = None
            return
        self.metrics.internal_errors.labels("guard").inc()
        log.error(
            "refused an upstream connection from %s to %s: not admitted",
            data.client.peername[0],
            server.address,
        )

    def client_disconnected(self, client: object) -> None:
        self.allowed.pop(getattr(client, "id", ""), None)

    def _refuse(self, flow: http.HTTPFlow, what: str) -> None:
        self.metrics.internal_errors.labels("guard").inc()
        log.error("refused %s from %s", what, flow.client_conn.peername[0])
        flow.response = internal_error_response()
        flow.request.stream = False
