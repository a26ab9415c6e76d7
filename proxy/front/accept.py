"""The listening sockets of the proxy port and their accept loop.

proxyd accepts connections itself (not asyncio's server), because it must:
- look at each connection's first bytes before anything reads them (the tunnel front);
- stay calm out of descriptors: asyncio's accept loop logs a traceback per attempt and
  retries, which measured 144,586 tracebacks in 37 s at 98 % of a core. Here, EMFILE
  pauses accepting, is logged once per interval with a count, gives back a reserve of
  descriptors so the admin listener (health checks, metrics) keeps working, and accepting
  resumes by itself once descriptors are free again.

`FrontServer` looks enough like an `asyncio.Server` (`sockets`, `close`) for mitmproxy's
server instance to start, list and stop it as its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("proxyd")

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPTS_PER_WAKE = 64  # a burst is taken in one go, then other work runs
RESERVE = 16  # descriptors held back for the admin listener
PAUSE = 0.1  # seconds without accepting after running out
LOG_INTERVAL = 10.0

Serve = Callable[[socket.socket, Any], Coroutine[Any, Any, None]]


def bind(host: str | None, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for `host` (every local address when None), one port for all."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # every family on the port the first got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Reserve:
    """Descriptors kept open so that they can be given back when the process runs out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fds: list[int] = []
        self.refill()

    def refill(self) -> bool:
        try:
            while len(self.fds) < self.size:
                self.fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return False
        return True

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class FrontServer:
    def __init__(
        self,
        sockets: list[socket.socket],
        serve: Serve,
        on_pause: Callable[[], None] = lambda: None,
        listener: str = "http",
    ) -> None:
        self.listener = listener  # http (plain text) or tls
        self.sockets = sockets
        self.serve = serve
        self.on_pause = on_pause
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reserve = Reserve(RESERVE)
        self.paused: asyncio.TimerHandle | None = None
        self.pauses_unlogged = 0
        self.last_logged = 0.0
        for sock in sockets:
            self.loop.add_reader(sock, self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.ECONNABORTED:  # gone before we took it
                    continue
                self._pause(e)  # out of descriptors, mostly: never a busy retry
                return
            conn.setblocking(False)
            task = self.loop.create_task(self.serve(conn, peer))
            self.tasks.add(task)
            task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error("connection handler crashed: %r", e, exc_info=e)

    def _pause(self, error: OSError) -> None:
        for sock in self.sockets:
            self.loop.remove_reader(sock)
        self.reserve.release()  # for the admin listener while this one waits
        self.on_pause()
        self.pauses_unlogged += 1
        now = time.monotonic()
        if now - self.last_logged >= LOG_INTERVAL:
            advice = (
                "; raise the limit (LimitNOFILE, ulimit -n) or lower "
                "limits.max_connections_per_source"
                if error.errno in OUT_OF_DESCRIPTORS
                else ""
            )
            log.warning(
                "proxyd: accept failed (%s): accepting paused %d time(s) in the last %ds%s",
                os.strerror(error.errno) if error.errno else error,
                self.pauses_unlogged,
                int(LOG_INTERVAL),
                advice,
            )
            self.pauses_unlogged = 0
            self.last_logged = now
        self.paused = self.loop.call_later(PAUSE, self._resume)

    def _resume(self) -> None:
        self.paused = None
        if not self.reserve.refill():
            self._pause(OSError(errno.EMFILE, os.strerror(errno.EMFILE)))
            return
        for sock in self.sockets:
            if sock.fileno() != -1:
                self.loop.add_reader(sock, self._accept, sock)

    # --- what mitmproxy's server instance calls -------------------------------------

    def close(self) -> None:
        """Stop accepting (drain, shutdown): open connections are left to finish."""
        if self.paused is not None:
            self.paused.cancel()
            self.paused = None
        for sock in self.sockets:
            if sock.fileno() != -1:
                self.loop.remove_reader(sock)
                sock.close()
        self.reserve.release()

    async def wait_closed(self) -> None:
        return None

    async def end_connections(self) -> None:
        """At shutdown: end every connection this front still serves, and wait until each
        has written its access-log line."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def is_serving(self) -> bool:
        return any(sock.fileno() != -1 for sock in self.sockets)


def close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
