"""Every place proxyd reaches into mitmproxy beyond its addon API, in one module.

Each reach-in below names the mitmproxy internal it relies on. They were validated on the
series in `SUPPORTED_SERIES` by tests/integration/test_splice.py, test_limits.py,
test_workers.py, test_upstream_timeouts.py and tests/addon/test_master.py, the gates for an
upgrade; importing this module with another series installed fails at once (`proxyd serve`
exits with the message) instead of at the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import version as _version

from proxy.core.errors import UnsupportedEngine
from proxy.core.headerlimit import HeaderLimit, head_too_large, too_large_answer
from proxy.front.accept import FrontServer, bind
from proxy.front.clients import Client
from proxy.front.tunnel import TunnelFront
from proxy.service.runtime import ListenPorts

SUPPORTED_SERIES = "12.3"


def check_version(found: str) -> None:
    if found.split(".")[:2] != SUPPORTED_SERIES.split("."):
        raise UnsupportedEngine(
            f"proxyd needs mitmproxy {SUPPORTED_SERIES}.x, and {found} is installed: "
            "reinstall proxyd (pip install .) to get the version it was tested with"
        )


check_version(_version.VERSION)


def _register_addons_package_only() -> None:
    """Relies on: `mitmproxy/addons/__init__.py` only importing every default addon (the
    web UI's flask app, onboarding, playback, ...) for mitmdump's list; nothing in the core
    uses the names it defines. Registering the package without running it lets the proxy
    server addon be imported alone: 14.5 MB less RSS and 0.4 s less start-up per process."""
    if "mitmproxy.addons" in sys.modules:
        return  # already imported whole (a test, or a caller that needs mitmdump's set)
    spec = importlib.util.find_spec("mitmproxy")
    if spec is None or spec.origin is None:
        return  # no mitmproxy: the import below fails with its own clear error
    package = types.ModuleType("mitmproxy.addons")
    package.__path__ = [os.path.join(os.path.dirname(spec.origin), "addons")]
    sys.modules["mitmproxy.addons"] = package


_register_addons_package_only()

from mitmproxy import connection, http  # noqa: E402
from mitmproxy.addons.proxyserver import Proxyserver  # noqa: E402
from mitmproxy.master import Master  # noqa: E402
from mitmproxy.net.http import http1  # noqa: E402
from mitmproxy.proxy import commands, events, layer, mode_servers  # noqa: E402
from mitmproxy.proxy.layers.http import _http1  # noqa: E402
from mitmproxy.proxy.layers.http._events import ResponseProtocolError  # noqa: E402
from mitmproxy.proxy.server import ConnectionHandler  # noqa: E402

__all__ = ["ConnectionHandler", "Master", "Proxyserver"]


# --- the listener --------------------------------------------------------------------------


class Listener:
    """Settings of the replaced `RegularInstance.listen`, set before the engine starts."""

    backlog = 1024  # asyncio's default of 100 overflows in bursts of tunnels
    reuse_port = False  # `serve --workers N`: every worker binds the same port
    linger = 600.0  # limits.idle_timeout: how long a closed client may take to read the rest
    front: TunnelFront | None = None  # set by the master: every connection meets it first
    tls: tuple[str, int] | None = None  # `tls_listen`, served by the same instance
    servers: list[FrontServer] = []  # this process's listeners (the front cancels their tasks)
    on_pause: Callable[[], None] = staticmethod(lambda: None)

    @classmethod
    def bound_ports(cls) -> ListenPorts:
        """The ports as bound (the config may say 0, any free port)."""
        ports = {s.listener: s.sockets[0].getsockname()[1] for s in cls.servers if s.sockets}
        return ListenPorts(ports.get("http", 0), ports.get("tls"))


async def _listen(self: mode_servers.RegularInstance, host: str, port: int) -> list[asyncio.Server]:
    """Replaces `AsyncioServerInstance.listen` for regular mode: proxyd accepts, its front
    sees each connection first (front/tunnel.py) and hands every request that is not a
    CONNECT to the engine. The TLS listener (`tls_listen`) is a second server of the same
    instance. Relies on: the instance's `handle_stream(reader, writer)` serving one client
    connection to its end with any reader and writer that have the stream methods (it
    takes mitmproxy_rs streams too), and on the instance keeping what this returns only
    to list its sockets (`.sockets`) and stop it (`.close()`)."""
    front = Listener.front
    if front is None:
        raise RuntimeError("the tunnel front is not set up")

    async def handoff(client: Client, already_read: bytes) -> None:
        reader, writer, transport = await client.streams(already_read)
        try:
            await self.handle_stream(reader, writer)
        finally:
            await release(transport, Listener.linger)

    def server_for(listener: str, address: tuple[str, int]) -> FrontServer:
        async def serve(sock: socket.socket, peer: Any) -> None:
            await front.serve(sock, peer, handoff, listener)

        sockets = bind(address[0] or None, address[1], Listener.backlog, Listener.reuse_port)
        server = FrontServer(sockets, serve, Listener.on_pause, listener)
        Listener.servers.append(server)
        return server

    servers = [server_for("http", (host, port))]
    if Listener.tls is not None:
        try:
            servers.append(server_for("tls", Listener.tls))
        except OSError:
            servers[0].close()
            raise
    return servers  # type: ignore[return-value]


async def release(transport: asyncio.BaseTransport, linger: float) -> None:
    """Frees a client socket that mitmproxy is done with. mitmproxy ends a connection with
    `writer.close()`, which asyncio completes only once its write buffer is empty: a client
    that stopped reading would hold its socket forever, outside every connection count.
    While the client still reads, it gets the rest; after `linger` seconds without progress
    (or at shutdown) the socket is aborted. asyncio's TLS transport bounds its own close
    (flush, close_notify) by its shutdown timeout instead."""
    if not isinstance(transport, asyncio.WriteTransport):
        return
    if not transport.is_closing():
        transport.close()
    step = min(1.0, linger / 4)
    left, still = _unsent(transport), 0.0
    try:
        while left:
            await asyncio.sleep(step)
            now = _unsent(transport)
            still = still + step if now >= left else 0.0
            left = now
            if left and still >= linger:
                _reset(transport)
                return
    except asyncio.CancelledError:
        _reset(transport)
        raise


def _unsent(transport: asyncio.WriteTransport) -> int:
    try:
        return transport.get_write_buffer_size()
    except AttributeError:  # asyncio's TLS transport, once closed, has no buffer to ask
        return 0


def _reset(transport: asyncio.WriteTransport) -> None:
    """Abort with a reset: a plain close would leave the kernel holding the unsent bytes
    (FIN-WAIT-1 against a zero window) for minutes more."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --- the HTTP/1 server side -------------------------------------------------------------------

_original_read_headers = _http1.Http1Server.read_headers
_original_send = _http1.Http1Server.send


def _read_headers_bounded(
    self: _http1.Http1Server, event: events.ConnectionEvent
) -> layer.CommandGenerator[None]:
    """Wraps `Http1Server.read_headers`. Relies on: `self.buf._data` holding the unparsed
    head, and `self.state = self.done` ending the server side after a close."""
    if isinstance(event, events.DataReceived) and head_too_large(self.buf._data, HeaderLimit.bytes):
        yield commands.SendData(self.conn, too_large_answer(HeaderLimit.bytes))
        yield commands.CloseConnection(self.conn)
        self.state = self.done
        return
    yield from _original_read_headers(self, event)


ErrorAnswer = Callable[[connection.Client, int, str], tuple[int, str]]


class ErrorAnswers:
    """Who writes the answer to a request mitmproxy could not complete (set by the addon)."""

    make: ErrorAnswer | None = None


def _send_with_proxyd_errors(self: _http1.Http1Server, event: Any) -> layer.CommandGenerator[None]:
    """Wraps `Http1Server.send`. Relies on: a `ResponseProtocolError` sent to the client
    side being answered (when nothing of a response was sent yet and the client can still be
    written to) with an error page of `event.code.http_status_code()`, then a close. The
    page becomes proxyd's, written from what proxyd knows of the flow (the `error` hook ran
    just before); mitmproxy's HTML page names mitmproxy and its own options."""
    make = ErrorAnswers.make
    if (
        make is not None
        and isinstance(event, ResponseProtocolError)
        and self.conn.state & connection.ConnectionState.CAN_WRITE
        and not self.response
        and (status := event.code.http_status_code()) is not None
    ):
        assert isinstance(self.conn, connection.Client)
        status, reason = make(self.conn, status, event.message)
        answer = http.Response.make(
            status,
            f"proxyd: {reason}\n",
            {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"},
        )
        yield commands.SendData(self.conn, http1.assemble_response(answer))
        yield commands.CloseConnection(self.conn)
        return
    yield from _original_send(self, event)


# --- connection handlers ----------------------------------------------------------------------


def handler_of(server: Proxyserver, client_id: str) -> ConnectionHandler | None:
    """Relies on: `Proxyserver.connections`, the live handlers by client connection id."""
    handler: ConnectionHandler | None = server.connections.get(client_id)
    return handler


def close(handler: ConnectionHandler, conn: connection.Connection) -> bool:
    """Relies on: `ConnectionHandler.close_connection` (a full close cancels the
    connection's task, which ends in one `ConnectionClosed` event). False if the
    connection is not (or no longer) open."""
    if conn not in handler.transports:
        return False
    handler.close_connection(conn)
    return True


def cancel_connect_after(
    server: connection.Server, seconds: float, message: str
) -> asyncio.TimerHandle:
    """Call from the `server_connect` hook. Relies on: `ConnectionHandler.open_connection`
    running that hook in the task that then calls `asyncio.open_connection`, and answering a
    cancellation there as a failed connect whose error is the cancel message."""
    task = asyncio.current_task()
    assert task is not None

    def expire() -> None:
        if server.timestamp_tcp_setup is None:
            task.cancel(message)

    return asyncio.get_running_loop().call_later(seconds, expire)


def install() -> None:
    mode_servers.RegularInstance.listen = _listen  # type: ignore[method-assign,assignment]
    _http1.Http1Server.read_headers = _read_headers_bounded  # type: ignore[method-assign]
    _http1.Http1Server.send = _send_with_proxyd_errors  # type: ignore[method-assign]


install()
