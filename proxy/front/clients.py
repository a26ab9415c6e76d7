"""A client connection as the tunnel front sees it: plain text, or TLS.

The front reads request heads, answers in one write, watches for a client that leaves
while a tunnel is dialed, relays a tunnel and hands other requests to the engine; each of
these is a method here, so the front's logic is written once for both kinds.

- `PlainClient`: the accepted non-blocking socket itself. Its first bytes are peeked (left
  in the socket for the engine), and a tunnel is relayed by `splice`, in the kernel.
- `TlsClient`: the same socket after a TLS handshake, done by asyncio's TLS transport
  (`TlsStream` is its protocol). A tunnel inside TLS cannot be spliced (the kernel
  here has no kTLS), so `TlsRelay` relays it in user space, with flow control both ways.
  The engine reads the connection through `TlsStream`, which has the `read`, `write`,
  `drain`, `close` that mitmproxy's connection handler calls on its streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from proxy.core.firstbytes import PEEK
from proxy.front import splice

LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024
READ_CHUNK = 65536
TLS_BUFFER = 256 * 1024  # read from a TLS client ahead of the front, at most
# A closing TLS connection is aborted after this long (its last bytes unread, or no
# close_notify back): the bound that `release` keeps for a plain one.
SHUTDOWN_TIMEOUT = 30.0


class Relay(Protocol):
    """A running tunnel (`splice.Splicer`, `TlsRelay`): `done` resolves with None at a
    clean end or with the error that ended it."""

    done: asyncio.Future[OSError | None]

    def start(self) -> None: ...

    def expire(self) -> None: ...

    def abort(self) -> None: ...


Streams = tuple[Any, Any, asyncio.BaseTransport]  # reader, writer, transport (for release)


class Client(Protocol):
    tls: bool

    def local(self) -> tuple[str, int]: ...

    async def peek(self) -> bytes: ...

    async def recv(self) -> bytes: ...

    def send(self, data: bytes) -> None: ...

    async def close_after_answer(self) -> None: ...

    def watch_gone(self, on_gone: Callable[[], None]) -> Callable[[], None]: ...

    async def relay(
        self,
        server: socket.socket,
        pipes: splice.PipePool,
        early: bytes,
        on_bytes: Callable[[bool, int], None],
    ) -> Relay: ...

    async def streams(self, already_read: bytes) -> Streams: ...

    def close(self) -> None: ...


# --- plain text ---------------------------------------------------------------------------


class PlainClient:
    tls = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    def local(self) -> tuple[str, int]:
        address = self.sock.getsockname()
        return address[0], address[1]

    async def peek(self) -> bytes:
        """The first bytes, left in the socket for whoever reads them."""
        return await self._recv(PEEK, socket.MSG_PEEK)

    async def recv(self) -> bytes:
        return await self._recv(READ_CHUNK)

    async def _recv(self, size: int, flags: int = 0) -> bytes:
        """One receive on the non-blocking socket, waiting until it is readable."""
        while True:
            try:
                return self.sock.recv(size, flags)
            except (BlockingIOError, InterruptedError):
                await self._readable()

    async def _readable(self) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()
        fd = self.sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self.loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            self.loop.remove_reader(fd)

    def send(self, data: bytes) -> None:
        """One write of a short answer. The socket buffer of a fresh connection holds far
        more than any answer of proxyd's; a client that has not read its previous answer
        yet and leaves no room is cut off rather than waited for."""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent != len(data):
            raise ConnectionError("the client does not read its answers")

    async def close_after_answer(self) -> None:
        """Close so that the answer arrives: a close with unread bytes in the socket (a
        TLS ClientHello only peeked at, early tunnel bytes) sends a reset, which can
        destroy the answer before the client reads it. Half-close, discard what the client
        still sends until it closes (bounded in time and bytes), then close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        discarded = 0
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                while discarded < LINGER_BYTES and (data := await self.recv()):
                    discarded += len(data)

    def watch_gone(self, on_gone: Callable[[], None]) -> Callable[[], None]:
        """Call `on_gone` if the client closes; bytes it sends meanwhile (a TLS ClientHello
        for the tunnel) stay in its socket for the relay. Returns the cancel."""
        fd = self.sock.fileno()

        def on_readable() -> None:
            self.loop.remove_reader(fd)
            try:
                gone = not self.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                self.loop.add_reader(fd, on_readable)
                return
            except OSError:
                gone = True
            if gone:
                on_gone()

        self.loop.add_reader(fd, on_readable)

        def cancel() -> None:
            self.loop.remove_reader(fd)

        return cancel

    async def relay(
        self,
        server: socket.socket,
        pipes: splice.PipePool,
        early: bytes,
        on_bytes: Callable[[bool, int], None],
    ) -> Relay:
        return splice.Splicer(self.sock, server, pipes, pending_up=early, on_bytes=on_bytes)

    async def streams(self, already_read: bytes) -> Streams:
        reader = asyncio.StreamReader(limit=2**16, loop=self.loop)
        if already_read:
            reader.feed_data(already_read)  # before the transport reads anything after it
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        transport, _ = await self.loop.connect_accepted_socket(lambda: protocol, self.sock)
        writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
        return reader, writer, transport

    def close(self) -> None:
        self.sock.close()


# --- TLS ----------------------------------------------------------------------------------


class TlsStream(asyncio.Protocol):
    """The protocol of a client's TLS transport: decrypted bytes in a bounded buffer for
    the front and the engine, or straight into a `TlsRelay` once a tunnel runs."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[Exception | None] = self.loop.create_future()
        self.relay: TlsRelay | None = None
        self.on_eof: Callable[[], None] | None = None  # the front's watch during a dial

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.up(data)
            return
        self.buffer += data
        self._wake()
        if len(self.buffer) > TLS_BUFFER and not self.reading_paused:
            self.reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> None:
        self.eof = True
        self._wake()
        if self.on_eof is not None:
            self.on_eof()
        if self.relay is not None:
            self.relay.up_ended()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        self._writable()
        if self.on_eof is not None:
            self.on_eof()
        if not self.lost.done():
            self.lost.set_result(exc)
        if self.relay is not None:
            self.relay.ended(exc, client=True)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.relay is not None:
            self.relay.pause(client_full=True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._writable()
        if self.relay is not None:
            self.relay.resume(client_full=True)

    # reading (the front, then the engine)
    async def read(self, n: int = READ_CHUNK) -> bytes:
        while not self.buffer and not self.eof:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        if self.reading_paused and len(self.buffer) <= TLS_BUFFER // 2:
            self.reading_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        self.buffer[0:0] = data

    def take_buffer(self) -> bytes:
        """Everything buffered, for a relay that takes the reading over from here."""
        data = bytes(self.buffer)
        self.buffer.clear()
        if self.reading_paused:
            self.reading_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()
        return data

    # writing (the engine's writer)
    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def drain(self) -> None:
        while self.writing_paused and not self.lost.done():
            self.writable = self.loop.create_future()
            try:
                await self.writable
            finally:
                self.writable = None
        if self.lost.done():
            raise ConnectionResetError("the client closed the connection")

    def write_eof(self) -> None:
        # TLS over asyncio cannot half-close: end the connection after what is written.
        self._transport.close()

    def close(self) -> None:
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def transport_abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    async def wait_closed(self) -> None:
        await asyncio.shield(self.lost)

    @property
    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _writable(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)


class TlsClient:
    tls = True

    def __init__(self, sock: socket.socket, stream: TlsStream) -> None:
        self.sock = sock  # owned by the TLS transport from now on
        self.stream = stream
        self.loop = asyncio.get_running_loop()
        self.peeked = False

    @classmethod
    async def handshake(
        cls, sock: socket.socket, context: ssl.SSLContext, timeout: float
    ) -> TlsClient:
        """The server side of the TLS handshake on an accepted socket; ssl.SSLError,
        ConnectionError or TimeoutError (asyncio's handshake timeout is a
        ConnectionAbortedError) if it fails."""
        loop = asyncio.get_running_loop()
        stream = TlsStream()
        await loop.connect_accepted_socket(
            lambda: stream,
            sock,
            ssl=context,
            ssl_handshake_timeout=timeout,
            ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        return cls(sock, stream)

    def local(self) -> tuple[str, int]:
        address = self.stream.get_extra_info("sockname")
        return address[0], address[1]

    async def peek(self) -> bytes:
        """The first decrypted bytes, kept for the next `recv`."""
        data = await self.stream.read()
        self.stream.unread(data)
        return data[:PEEK]

    async def recv(self) -> bytes:
        return await self.stream.read()

    def send(self, data: bytes) -> None:
        if self.stream.lost.done() or self.stream.is_closing():
            raise ConnectionError("the client closed the connection")
        self.stream.write(data)

    async def close_after_answer(self) -> None:
        """Close after the answer is sent: asyncio's TLS transport flushes, then sends
        close_notify. Bounded: a client that does not read is cut off."""
        self.stream.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                await self.stream.wait_closed()
        self.stream.transport_abort()

    def watch_gone(self, on_gone: Callable[[], None]) -> Callable[[], None]:
        """`on_gone` once the client closes (its TLS close or its socket's end). Bytes it
        sends meanwhile stay in the stream's buffer for the relay."""
        stream = self.stream
        if stream.eof:
            on_gone()
            return lambda: None
        stream.on_eof = on_gone

        def cancel() -> None:
            stream.on_eof = None

        return cancel

    async def relay(
        self,
        server: socket.socket,
        pipes: splice.PipePool,
        early: bytes,
        on_bytes: Callable[[bool, int], None],
    ) -> Relay:
        relay = TlsRelay(self.stream, early, on_bytes)
        await self.loop.connect_accepted_socket(lambda: relay.server_side, server)
        return relay

    async def streams(self, already_read: bytes) -> Streams:
        if already_read:
            self.stream.unread(already_read)
        return self.stream, self.stream, self.stream._transport

    def close(self) -> None:
        """The end of the connection: what is written still goes out, then close_notify,
        within SHUTDOWN_TIMEOUT (the socket belongs to the TLS transport)."""
        transport = self.stream.transport
        if transport is not None and not transport.is_closing():
            transport.close()


class _ServerSide(asyncio.Protocol):
    """The protocol of a TLS tunnel's plain connection to the destination."""

    def __init__(self, relay: TlsRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.relay.down(data)

    def eof_received(self) -> bool:
        self.relay.down_ended()
        return True  # the relay closes the connection when the tunnel ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.ended(exc, client=False)

    def pause_writing(self) -> None:
        self.relay.pause(client_full=False)

    def resume_writing(self) -> None:
        self.relay.resume(client_full=False)


class TlsRelay:
    """Both directions of a tunnel inside TLS, in user space: each side's bytes are
    written to the other's transport as they arrive, and a side whose peer's write buffer
    is full stops reading until it drains (asyncio's flow control, both ways).

    Ends: the server's end-of-file ends the tunnel as on the plain path (the client gets
    what is buffered, then TLS's close); the client's end (TLS close, or its socket's end)
    half-closes toward the server, whose answer can no longer reach a TLS connection that
    asyncio closes at the client's end, so the tunnel ends once the server is done or the
    idle timeout expires it. `done` resolves once both connections are gone."""

    def __init__(
        self, client: TlsStream, early: bytes, on_bytes: Callable[[bool, int], None]
    ) -> None:
        self.client = client
        self.early = early
        self.on_bytes = on_bytes
        self.server_side = _ServerSide(self)
        self.open = {True: True, False: True}  # client=True / server=False still connected
        self.error: OSError | None = None
        self.done: asyncio.Future[OSError | None] = client.loop.create_future()

    @property
    def _server(self) -> asyncio.Transport:
        assert self.server_side.transport is not None
        return self.server_side.transport

    def start(self) -> None:
        self.client.relay = self
        pending = self.early + self.client.take_buffer()  # what came while it was dialed
        self.early = b""
        if pending:
            self.up(pending)
        if self.client.eof:  # the client's end came before the tunnel did
            self.up_ended()
        if self.client.lost.done():
            self.ended(self.client.lost.result(), client=True)

    # client -> server
    def up(self, data: bytes) -> None:
        if not self._server.is_closing():
            self._server.write(data)
            self.on_bytes(True, len(data))

    def up_ended(self) -> None:
        if not self._server.is_closing() and self._server.can_write_eof():
            self._server.write_eof()

    # server -> client
    def down(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.on_bytes(False, len(data))

    def down_ended(self) -> None:
        self.client.close()  # flushes, then close_notify; connection_lost follows

    # flow control: the side whose peer is full stops reading
    def pause(self, client_full: bool) -> None:
        reader = self._server if client_full else self.client.transport
        if reader is not None and not reader.is_closing():
            reader.pause_reading()

    def resume(self, client_full: bool) -> None:
        reader = self._server if client_full else self.client.transport
        if reader is not None and not reader.is_closing():
            reader.resume_reading()

    def ended(self, exc: Exception | None, client: bool) -> None:
        if not self.open[client]:
            return
        self.open[client] = False
        if isinstance(exc, OSError) and self.error is None:
            self.error = exc
        if client:  # nothing can reach the client any more: let the server go
            if self.server_side.transport is not None:
                self.server_side.transport.close()
        elif self.client.transport is not None:
            self.client.transport.close()
        if not any(self.open.values()) and not self.done.done():
            self.done.set_result(self.error)

    def expire(self) -> None:
        """The idle timeout: end both connections."""
        if self.error is None:
            self.error = TimeoutError("tunnel idle")
        self.abort()

    def abort(self) -> None:
        self.client.transport_abort()
        if self.server_side.transport is not None:
            self.server_side.transport.abort()
        if not self.done.done():  # connection_lost follows abort; don't wait for it
            self.done.set_result(self.error or ConnectionAbortedError("tunnel closed"))
