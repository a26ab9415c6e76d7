"""One HTTP/1.1 connection on asyncio streams, spoken through h11's state machine.

h11 (already one of mitmproxy's dependencies) parses and frames; this wrapper only moves
bytes between it and the socket, with a bound on every read and a deadline on idle waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11

READ_SIZE = 65536
MAX_HEAD = 64 * 1024
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class HttpConnection:
    def __init__(
        self, role: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.h11 = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self.reader = reader
        self.writer = writer

    async def next_event(self, timeout: float | None = None) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            self.h11.receive_data(data)

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def read_body(self, limit: int, timeout: float | None = None) -> bytes | None:
        """The whole body of the message just received; None if it exceeds `limit`."""
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    return None
                parts.append(bytes(event.data))
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed inside a message")

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def trailing(self) -> bytes:
        """Bytes that arrived after a CONNECT's head: they belong to the tunnel."""
        data, _closed = self.h11.trailing_data
        return bytes(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


def end_to_end(headers: Any, drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Headers without hop-by-hop ones (RFC 9110 7.6.1), including those that Connection
    names, and without `drop`."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in named and name.lower() not in drop
    ]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy until EOF, then half-close the write side so the other end sees it; bytes."""
    total = 0
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            total += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
    return total


async def splice_streams(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Both directions until both have ended, then close both sockets."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
