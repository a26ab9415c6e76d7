"""Hands an admitted tunnel's two sockets from mitmproxy to the splice relay.

mitmproxy reads every socket in its own loop and passes each chunk through its layer
stack (measured: 22% of a tunnel's CPU is per-chunk layer dispatch, 50% buffer copies).
Once a tunnel has moved `TAKEOVER_AFTER` bytes, it is worth taking out of that path;
short tunnels (a ping, a small HTTPS request) never pay for the takeover.

The handover, without patching mitmproxy (what it relies on of mitmproxy's connection
handler is in `mitm_internals`; tests/integration/test_splice.py is the gate for an upgrade):
1. Pause reading on both transports and put a stand-in protocol in front of mitmproxy's
   stream protocol: it keeps whatever the transport still reads, in order.
2. `feed_eof()` on both stream readers: mitmproxy delivers what it had already read
   (the tunnel layer forwards it as usual), then exactly one close event per side,
   after which mitmproxy's connection tasks only wait. Those two close events are the
   "fully drained" marker; the tunnel layer hands them here instead of acting on them.
3. Wait until both transports have written out what mitmproxy gave them, then relay:
   first the bytes the stand-ins kept, then everything else in the kernel.
4. At the end, `close_connection(client)`: mitmproxy's own teardown, so its
   disconnect hooks (access log, metrics, connection counts) fire as for any tunnel.
   If mitmproxy closes first (idle timeout, shutdown), the stand-in hears of it and the
   relay lets go of the sockets before they close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from mitmproxy import connection

from . import mitm_internals as engine
from . import splice
from .mitm_internals import ConnectionHandler

log = logging.getLogger("proxyd.tunnel")

TAKEOVER_AFTER = 128 * 1024


class _StandIn(asyncio.Protocol):
    """Sits in front of mitmproxy's StreamReaderProtocol once the relay owns the socket.

    Keeps late reads; passes write flow control and the connection's loss on, so
    mitmproxy's writer and its close path behave as before."""

    def __init__(self, original: Any, on_lost: Callable[[], None]) -> None:
        self.original = original
        self.on_lost = on_lost
        self.kept = bytearray()
        self.flushed: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.kept += data

    def eof_received(self) -> bool:
        return True  # keep the socket open: the relay reads the end-of-file itself

    def pause_writing(self) -> None:
        self.original.pause_writing()

    def resume_writing(self) -> None:
        self.original.resume_writing()
        if self.flushed is not None and not self.flushed.done():
            self.flushed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()
        self.original.connection_lost(exc)


class Takeover:
    """One tunnel's handover. Made by `begin` from inside the tunnel layer's event."""

    def __init__(
        self,
        handler: ConnectionHandler,
        client: connection.Client,
        server: connection.Server,
        pipes: splice.PipePool,
        on_bytes: Callable[[bool, int], None],
    ) -> None:
        self.handler = handler
        self.client = client
        self.sides: tuple[connection.Connection, connection.Connection] = (client, server)
        self.pipes = pipes
        self.on_bytes = on_bytes
        self.relay: splice.Relay | None = None
        self.transports: dict[connection.Connection, asyncio.Transport] = {}
        self.stand_ins: dict[connection.Connection, _StandIn] = {}
        self.undrained: set[connection.Connection] = set()
        self.lost = False
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def begin(
        cls,
        handler: ConnectionHandler | None,
        client: connection.Client,
        server: connection.Server,
        pipes: splice.PipePool,
        on_bytes: Callable[[bool, int], None],
    ) -> Takeover | None:
        """Start the handover, or None where this tunnel can't be taken over (then it
        simply stays on mitmproxy's path)."""
        if handler is None or not splice.AVAILABLE:
            return None
        streams = []
        for conn in (client, server):
            pair = engine.streams(handler, conn)
            if pair is None or conn.state is connection.ConnectionState.CLOSED:
                return None
            reader, transport = pair
            if transport.is_closing() or transport.get_extra_info("socket") is None:
                return None
            streams.append((conn, reader, transport))
        if not any(conn.state & connection.ConnectionState.CAN_READ for conn in (client, server)):
            return None  # both ends have sent end-of-file: mitmproxy is closing it
        takeover = cls(handler, client, server, pipes, on_bytes)
        for conn, reader, transport in streams:
            transport.pause_reading()
            stand_in = _StandIn(transport.get_protocol(), takeover._on_lost)
            transport.set_protocol(stand_in)
            takeover.transports[conn] = transport
            takeover.stand_ins[conn] = stand_in
            if conn.state & connection.ConnectionState.CAN_READ:
                # mitmproxy's task for this side ends at our end-of-file and then waits
                # only while the state says CAN_WRITE; a side we already half-closed
                # would be closed instead. The relay tracks the socket's real state now.
                conn.state = connection.ConnectionState.OPEN
                takeover.undrained.add(conn)
                reader.feed_eof()
            # A side that sent end-of-file already had its close event, and its task
            # waits; the relay reads that end-of-file again from the socket.
        return takeover

    def drained(self, conn: connection.Connection) -> None:
        """mitmproxy's close event for `conn`: it has delivered all it read from it."""
        self.undrained.discard(conn)
        if not self.undrained and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
            self.task.add_done_callback(_report_crash)

    def _on_lost(self) -> None:
        self.lost = True
        if self.relay is not None:
            self.relay.abort()
        for stand_in in self.stand_ins.values():
            if stand_in.flushed is not None and not stand_in.flushed.done():
                stand_in.flushed.set_result(None)

    def _alive(self) -> bool:
        return not self.lost and not any(t.is_closing() for t in self.transports.values())

    async def _run(self) -> None:
        try:
            error = await self._relay()
        except OSError as e:  # no descriptor left for the duplicates (EMFILE): end it cleanly
            log.warning("tunnel %s: relay could not start: %s", self.client.peername, e)
            error = e
        finally:
            if not self.lost:
                engine.close(self.handler, self.client)
        if error is not None and not isinstance(error, ConnectionAbortedError):
            log.debug("tunnel %s ended: %s", self.client.peername, error)

    async def _relay(self) -> OSError | None:
        for transport in self.transports.values():
            # The stream reader may have resumed reading in the read that returned EOF.
            transport.pause_reading()
        for conn, transport in self.transports.items():
            await self._flushed(transport, self.stand_ins[conn])
        if not self._alive():
            return None
        client, server = (self.transports[c] for c in self.sides)
        up_kept, down_kept = (bytes(self.stand_ins[c].kept) for c in self.sides)
        handler = self.handler

        def on_bytes(up: bool, n: int) -> None:
            engine.mark_active(handler)  # a busy tunnel must not look idle to mitmproxy
            self.on_bytes(up, n)

        client_socket = _own_duplicate(client)
        try:
            server_socket = _own_duplicate(server)
        except OSError:
            client_socket.close()
            raise
        self.relay = splice.Relay(
            client_socket,
            server_socket,
            self.pipes,
            pending_up=up_kept,
            pending_down=down_kept,
            on_bytes=on_bytes,
            alive=self._alive,
        )
        self.relay.start()
        return await self.relay.done

    async def _flushed(self, transport: asyncio.Transport, stand_in: _StandIn) -> None:
        """Wait until mitmproxy's last writes have left the transport's buffer: bytes the
        relay writes must never overtake them."""
        while transport.get_write_buffer_size() and not self.lost:
            stand_in.flushed = asyncio.get_running_loop().create_future()
            transport.set_write_buffer_limits(high=0)  # resume_writing fires when empty
            await stand_in.flushed


def _own_duplicate(transport: asyncio.Transport) -> socket.socket:
    """A socket object of the relay's own on the transport's connection (see splice.Relay)."""
    fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        raise


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("tunnel relay crashed: %r", e, exc_info=e)
