"""The jump gate's byte relay: stdin/stdout of the ssh session to one TCP connection."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket

CHUNK = 65536


def relay_stdio(sock: socket.socket, stdin: int = 0, stdout: int = 1) -> None:
    """Copy both ways until the server closes; a client EOF half-closes toward the server
    (so ssh's own protocol shutdown works), binary-safe."""
    # poll, not epoll (DefaultSelector): epoll refuses regular files and /dev/null with
    # EPERM, and `proxyd connect HOST PORT </dev/null` (or <file) must work like nc.
    sel = selectors.PollSelector()
    sel.register(stdin, selectors.EVENT_READ, "up")
    sel.register(sock, selectors.EVENT_READ, "down")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "up":
                    data = os.read(stdin, CHUNK)
                    if not data:
                        sel.unregister(stdin)
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)
                        continue
                    sock.sendall(data)
                else:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout, view) :]
    finally:
        sel.close()
        sock.close()
