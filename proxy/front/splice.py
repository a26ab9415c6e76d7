"""Moves an admitted tunnel's bytes between two sockets inside the kernel.

`os.splice` through a pipe copies socket to socket without the bytes ever reaching Python:
one system call per direction moves up to a pipe's worth (1 MiB). Measured on 2 cores
(../shared/notes/fast-tunnels.md): mitmproxy's own passthrough moves ~590 MB/s at
1.7 CPU-s/GB; this relay ~2,300 MB/s at 0.2 CPU-s/GB.

The relay is driven by the event loop (readiness callbacks, non-blocking sockets), knows
nothing of mitmproxy and is tested on plain socket pairs. Pipes come from a pool and are
held only while bytes sit in them (a destination that cannot take more): an idle or
flowing tunnel holds none, so thousands of tunnels need no thousands of pipes, and a
non-root proxy stays within the kernel's `pipe-user-pages-soft` budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Callable

AVAILABLE = hasattr(os, "splice")  # Linux only; elsewhere tunnels stay on mitmproxy's path
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ exists from Python 3.10 on Linux only
FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# Bytes one direction moves per wake-up before it lets other connections run.
TURN_BUDGET = 4 * PIPE_SIZE
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Pipe:
    __slots__ = ("capacity", "r", "w")

    def __init__(self, size: int) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.capacity = fcntl.fcntl(self.w, F_SETPIPE_SZ, size)
        except OSError:
            # EPERM past pipe-user-pages-soft (unprivileged): the default 64 KiB still beats
            # copying through Python.
            self.capacity = 65536

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class PipePool:
    """Empty pipes to reuse: creating one costs two descriptors and an fcntl."""

    def __init__(self, size: int = PIPE_SIZE, keep: int = 32) -> None:
        self.size = size
        self.keep = keep
        self.idle: list[Pipe] = []

    def take(self) -> Pipe:
        return self.idle.pop() if self.idle else Pipe(self.size)

    def give(self, pipe: Pipe, empty: bool) -> None:
        if empty and len(self.idle) < self.keep:
            self.idle.append(pipe)
        else:
            pipe.close()  # bytes still in it belong to a dead tunnel

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class _Direction:
    """One way of a tunnel: src's bytes to dst, then a half-close of dst at src's end."""

    def __init__(
        self, relay: Splicer, src: socket.socket, dst: socket.socket, pending: bytes
    ) -> None:
        self.relay = relay
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.pending = memoryview(pending)
        self.pipe: Pipe | None = None
        self.in_pipe = 0
        self.done = False
        self.reading = False
        self.writing = False

    # --- readiness registrations (one reader on src, one writer on dst at most) ---------

    def _want(self, read: bool, write: bool) -> None:
        loop = self.relay.loop
        if read != self.reading:
            if read:
                loop.add_reader(self.src, self.pump)
            else:
                loop.remove_reader(self.src)
            self.reading = read
        if write != self.writing:
            if write:
                loop.add_writer(self.dst, self.pump)
            else:
                loop.remove_writer(self.dst)
            self.writing = write

    def stop(self) -> None:
        """Unregister everything and hand the pipe back; idempotent."""
        if self.reading or self.writing:
            self._want(read=False, write=False)
        if self.pipe is not None:
            self.relay.pool.give(self.pipe, empty=self.in_pipe == 0)
            self.pipe = None
            self.in_pipe = 0

    # --- moving bytes -------------------------------------------------------------------

    def pump(self) -> None:
        if self.done or self.relay.finished:
            return
        try:
            self._pump()
        except OSError as e:
            self.relay.fail(e)

    def _pump(self) -> None:
        budget = TURN_BUDGET
        while self.pending:
            try:
                n = self.dst_sock.send(self.pending)
            except BlockingIOError:
                self._wait_writable()
                return
            self.pending = self.pending[n:]
            self._count(n)
        while budget > 0:
            if self.in_pipe:
                assert self.pipe is not None
                try:
                    n = os.splice(self.pipe.r, self.dst, self.in_pipe, flags=FLAGS)
                except BlockingIOError:
                    self._wait_writable()
                    return
                self.in_pipe -= n
                self._count(n)
                budget -= n
                continue
            if self.pipe is None:
                self.pipe = self.relay.pool.take()
            try:
                n = os.splice(self.src, self.pipe.w, self.pipe.capacity, flags=FLAGS)
            except BlockingIOError:
                # Nothing to read: an idle direction holds no pipe.
                self.relay.pool.give(self.pipe, empty=True)
                self.pipe = None
                self._wait_readable()
                return
            if n == 0:
                self._finish()
                return
            self.in_pipe = n
        # Budget spent: let other connections run, and come back for what is left. Bytes
        # still in the pipe wait for the destination, not the source: a source that has
        # sent its last bytes never becomes readable again.
        if self.in_pipe:
            self._wait_writable()
        else:
            # The budget ran out with the pipe just emptied: hand it back, since this
            # direction may stay idle from here on (the invariant the pool relies on).
            if self.pipe is not None:
                self.relay.pool.give(self.pipe, empty=True)
                self.pipe = None
            self._wait_readable()

    def _count(self, n: int) -> None:
        self.relay.on_bytes(self is self.relay.up, n)

    def _wait_readable(self) -> None:
        if self.relay.alive():
            self._want(read=True, write=False)
        else:
            self.relay.abort()

    def _wait_writable(self) -> None:
        if self.relay.alive():
            self._want(read=False, write=True)
        else:
            self.relay.abort()

    def _finish(self) -> None:
        self.done = True
        self.stop()
        with contextlib.suppress(OSError):  # the peer may be gone already; its own end says
            self.dst_sock.shutdown(socket.SHUT_WR)
        self.relay.direction_done()


class Splicer:
    """Both directions of one tunnel. `done` resolves with None at a clean end (the server
    sent end-of-file) or with the error that ended it.

    The relay owns the two sockets it is given and closes them when it ends. Given
    duplicates of descriptors that an asyncio transport also holds, the relay's readiness
    registrations are its own (asyncio refuses a second owner of one descriptor), and the
    connection lives until both owners have closed it. `alive()` is asked before each
    wait: the other owner may close at any time (mitmproxy's idle timeout, shutdown)."""

    def __init__(
        self,
        client: socket.socket,
        server: socket.socket,
        pool: PipePool,
        *,
        pending_up: bytes = b"",
        pending_down: bytes = b"",
        on_bytes: Callable[[bool, int], None] = lambda up, n: None,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.client = client
        self.server = server
        self.on_bytes = on_bytes
        self.alive = alive
        self.up = _Direction(self, client, server, pending_up)
        self.down = _Direction(self, server, client, pending_down)
        self.finished = False
        self.done: asyncio.Future[OSError | None] = self.loop.create_future()

    def start(self) -> None:
        self.up.pump()
        self.down.pump()

    def direction_done(self) -> None:
        # The client's end-of-file half-closes toward the server and its reply still
        # comes; the server's end ends the tunnel (as on mitmproxy's path, see addon.py).
        if self.down.done:
            self._end(None)

    def fail(self, error: OSError) -> None:
        """A socket error on either side ends the tunnel as a reset on both: a clean FIN
        would pass a cut transfer off as a whole one."""
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        self._end(error)

    def expire(self) -> None:
        """The idle timeout: end the tunnel with a close on both sides."""
        self._end(TimeoutError("tunnel idle"))

    def abort(self) -> None:
        """The sockets are going away under us: stop touching them."""
        self._end(ConnectionAbortedError("tunnel closed"))

    def _end(self, error: OSError | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.up.stop()
        self.down.stop()
        self.client.close()
        self.server.close()
        if not self.done.done():
            self.done.set_result(error)
