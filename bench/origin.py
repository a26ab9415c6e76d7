"""The TCP origin behind tunnels: a sink that counts bytes, and a ping that answers.

Run as its own process (`python bench/origin.py HOST PORT`); it prints `ready` once it
listens. A connection sends one command line, then:

- `SINK <n>`: the next n bytes are read and dropped, then `OK <n>` is sent back and the
  connection takes another command (so one tunnel carries many verified transfers).
- `PING`: answered with `PONG`, then the server closes. The server closing first puts
  TIME_WAIT on the listening side, so 10^5 short tunnels don't exhaust ephemeral ports.
- `HOLD`: answered with `PONG`; the connection then stays open and idle.
"""

from __future__ import annotations

import asyncio
import resource
import sys

BUFFER = 1 << 20  # large reads: the sink must never be what limits a transfer
MAX_COMMAND = 256
# One read buffer for every connection: the loop is single-threaded and buffer_updated
# consumes (or copies) the bytes before the next read. A 1 MiB bytearray per connection
# would cost ~0.7 ms of zeroing each, and cap new tunnels at ~1,000/s.
_SHARED_BUFFER = memoryview(bytearray(BUFFER))


class OriginProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self._command = bytearray()
        self._remaining = 0  # bytes still to sink in the current SINK
        self._size = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(_SHARED_BUFFER[:nbytes])

    def _feed(self, data: memoryview) -> None:
        while len(data) and self._transport is not None:
            if self._remaining:  # the hot path: count and drop
                taken = min(self._remaining, len(data))
                self._remaining -= taken
                data = data[taken:]
                if self._remaining == 0:
                    self._reply(b"OK %d\n" % self._size)
                continue
            self._command += data
            end = self._command.find(b"\n")
            if end < 0:
                if len(self._command) > MAX_COMMAND:
                    self._close()
                return
            line = bytes(self._command[:end]).split()
            # Whatever followed the line (a SINK's first payload bytes) is fed on.
            data = memoryview(bytes(self._command[end + 1 :]))
            self._command.clear()
            self._run(line)

    def _run(self, line: list[bytes]) -> None:
        if len(line) == 2 and line[0] == b"SINK" and line[1].isdigit() and int(line[1]) > 0:
            self._remaining = self._size = int(line[1])
        elif line == [b"PING"]:
            self._reply(b"PONG\n")
            self._close()
        elif line == [b"HOLD"]:
            self._reply(b"PONG\n")
        else:
            self._reply(b"ERR\n")
            self._close()

    def _reply(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(OriginProtocol, host, port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
