"""The splice relay on its own, between real loopback socket pairs (no proxy, no mitmproxy)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
from collections.abc import Callable

import pytest

from proxy.front import splice

MiB = 1 << 20


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (splice needs real sockets, as in the proxy)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


class Tunnel:
    """client_end <-> [relay: client_side | server_side] <-> server_end."""

    def __init__(self, pool: splice.PipePool, **relay_args: object) -> None:
        self.client_end, client_side = tcp_pair()
        server_side, self.server_end = tcp_pair()
        self.counted = {True: 0, False: 0}

        def on_bytes(up: bool, n: int) -> None:
            self.counted[up] += n

        self.relay = splice.Splicer(client_side, server_side, pool, on_bytes=on_bytes, **relay_args)  # type: ignore[arg-type]
        self.sides = (client_side, server_side)

    def close(self) -> None:
        self.client_end.close()
        self.server_end.close()


async def send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def read_to_end(sock: socket.socket, delay: float = 0.0) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while chunk := await loop.sock_recv(sock, 256 * 1024):
        got += chunk
        if delay:
            await asyncio.sleep(delay)
    return bytes(got)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (checked every loop turn), bounded: no sleep as synchronisation."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))  # type: ignore[arg-type]


def test_both_directions_pending_bytes_first_and_half_close() -> None:
    up = random.Random(1).randbytes(6 * MiB)
    down = random.Random(2).randbytes(5 * MiB)

    async def scenario() -> None:
        pool = splice.PipePool()
        t = Tunnel(pool, pending_up=b"UP-KEPT:", pending_down=b"DOWN-KEPT:")
        t.relay.start()

        async def client() -> bytes:
            await send_all(t.client_end, up)
            t.client_end.shutdown(socket.SHUT_WR)
            return await read_to_end(t.client_end)

        async def server() -> bytes:
            received = await read_to_end(t.server_end)  # the client's half-close arrives...
            await send_all(t.server_end, down)  # ...and the reply after it still does
            t.server_end.shutdown(socket.SHUT_WR)
            return received

        at_client, at_server = await asyncio.gather(client(), server())
        assert await t.relay.done is None
        assert at_server == b"UP-KEPT:" + up
        assert hashlib.sha256(at_client).digest() == hashlib.sha256(b"DOWN-KEPT:" + down).digest()
        assert t.counted == {True: len(up) + 8, False: len(down) + 10}
        assert all(s.fileno() == -1 for s in t.sides)  # the relay closed its own sockets
        assert len(pool.idle) <= 2  # pipes came back empty, for the next tunnel
        t.close()
        pool.close()

    run(scenario)


def test_an_idle_tunnel_holds_no_pipe_and_a_slow_reader_holds_one() -> None:
    async def scenario() -> None:
        pool = splice.PipePool()
        t = Tunnel(pool)
        t.relay.start()
        # start() ran both directions: each found nothing to read, gave its pipe back and
        # now waits for its socket (one pipe, made once, sits idle in the pool).
        assert t.relay.up.reading and t.relay.down.reading
        assert t.relay.up.pipe is None and t.relay.down.pipe is None
        assert len(pool.idle) == 1
        # The server sends far more than the socket buffers take while nobody reads.
        t.server_end.setblocking(True)
        sender = asyncio.get_running_loop().run_in_executor(
            None, t.server_end.sendall, b"x" * (16 * MiB)
        )
        await until(lambda: t.relay.down.in_pipe > 0 and not t.relay.down.reading)
        assert t.relay.down.pipe is not None  # held while the reader is behind
        got = await read_to_end_after(t, 16 * MiB)
        await sender
        assert got == 16 * MiB
        assert t.relay.down.pipe is None  # drained: back in the pool
        t.server_end.shutdown(socket.SHUT_WR)
        t.client_end.shutdown(socket.SHUT_WR)
        assert await t.relay.done is None
        t.close()
        pool.close()

    run(scenario)


def test_a_direction_whose_budget_runs_out_as_its_pipe_empties_hands_the_pipe_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One wake-up moves exactly one pipe's worth and spends the whole budget on it: the
    # pump leaves its loop with an empty pipe, which must go back to the pool there and
    # then (the direction may stay idle for hours).
    monkeypatch.setattr(splice, "TURN_BUDGET", 65536)

    async def scenario() -> None:
        pool = splice.PipePool(size=65536)
        t = Tunnel(pool)
        t.server_end.setblocking(True)
        t.server_end.sendall(b"y" * 65536)  # waiting in the socket before the relay starts
        t.server_end.setblocking(False)
        t.relay.start()
        assert await read_to_end_after(t, 65536) == 65536
        assert t.relay.down.in_pipe == 0
        assert t.relay.down.pipe is None
        t.server_end.shutdown(socket.SHUT_WR)
        t.client_end.shutdown(socket.SHUT_WR)
        assert await t.relay.done is None
        t.close()
        pool.close()

    run(scenario)


async def read_to_end_after(t: Tunnel, n: int) -> int:
    loop = asyncio.get_running_loop()
    total = 0
    while total < n:
        chunk = await loop.sock_recv(t.client_end, MiB)
        assert chunk
        total += len(chunk)
    return total


def test_a_reset_on_one_side_is_a_reset_on_the_other() -> None:
    async def scenario() -> None:
        pool = splice.PipePool()
        t = Tunnel(pool)
        t.relay.start()
        await send_all(t.server_end, b"partial")
        t.server_end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, splice.RESET_ON_CLOSE)
        t.server_end.close()
        error = await t.relay.done
        assert isinstance(error, ConnectionResetError)
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(t.client_end, MiB):
                pass
        t.client_end.close()
        pool.close()

    run(scenario)


def test_when_the_other_owner_closes_the_relay_lets_go() -> None:
    """alive() turning false (mitmproxy closing its transports) ends the relay at its next
    wait without touching the sockets again, and without a registration left behind."""

    async def scenario() -> None:
        pool = splice.PipePool()
        alive = [True]
        t = Tunnel(pool, alive=lambda: alive[0])
        t.relay.start()
        await send_all(t.client_end, b"a" * 1000)
        await until(lambda: t.counted[True] == 1000)  # relayed while alive
        alive[0] = False
        await send_all(t.client_end, b"b" * 1000)
        error = await asyncio.wait_for(t.relay.done, 5)
        assert isinstance(error, ConnectionAbortedError)
        loop = asyncio.get_running_loop()
        for direction in (t.relay.up, t.relay.down):
            assert not direction.reading and not direction.writing
            assert not loop.remove_reader(direction.src)
            assert not loop.remove_writer(direction.dst)
        t.close()
        pool.close()

    run(scenario)


def test_the_pool_keeps_only_empty_pipes_and_at_most_keep() -> None:
    pool = splice.PipePool(keep=2)
    pipes = [pool.take() for _ in range(3)]
    assert all(p.capacity >= 65536 for p in pipes)
    os.write(pipes[0].w, b"left over")
    pool.give(pipes[0], empty=False)  # bytes of a dead tunnel: closed, never reused
    pool.give(pipes[1], empty=True)
    pool.give(pipes[2], empty=True)
    assert pool.idle == [pipes[1], pipes[2]]
    extra = splice.Pipe(splice.PIPE_SIZE)
    pool.give(extra, empty=True)  # over `keep`: closed
    assert len(pool.idle) == 2
    with pytest.raises(OSError):
        os.fstat(extra.r)
    pool.close()
    assert pool.idle == []


def test_the_servers_end_ends_the_tunnel_even_if_the_client_never_closes() -> None:
    """As on mitmproxy's path and in Squid: a client that keeps its side open after the
    server is done must not hold a tunnel (and its pipes and descriptors) open."""

    async def scenario() -> None:
        pool = splice.PipePool()
        t = Tunnel(pool)
        t.relay.start()
        await send_all(t.server_end, b"bye")
        t.server_end.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(t.relay.done, 5) is None
        assert await read_to_end(t.client_end) == b"bye"
        t.close()
        pool.close()

    run(scenario)


def test_bytes_left_in_the_pipe_when_a_turn_ends_still_arrive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn that ends with bytes still in the pipe must wait for the destination, not
    for the source: here the client sends its last bytes and then waits (as a client does
    for a reply), so its socket never becomes readable again. A one-byte budget ends every
    turn, and a small send buffer makes the writes partial."""
    monkeypatch.setattr(splice, "TURN_BUDGET", 1)
    payload = random.Random(3).randbytes(4 * MiB)

    async def scenario() -> None:
        pool = splice.PipePool()
        t = Tunnel(pool)
        t.sides[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t.relay.start()
        await send_all(t.client_end, payload)  # and no end-of-file: it waits for a reply
        loop = asyncio.get_running_loop()
        got = bytearray()
        while len(got) < len(payload):
            chunk = await asyncio.wait_for(loop.sock_recv(t.server_end, MiB), 5)
            assert chunk
            got += chunk
        assert bytes(got) == payload
        t.server_end.shutdown(socket.SHUT_WR)
        assert await t.relay.done is None
        t.close()
        pool.close()

    run(scenario)


def test_no_descriptor_for_a_pipe_ends_the_tunnel_with_a_reset_and_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # EMFILE when the relay needs a pipe: the tunnel ends (as a reset on both sides, so no
    # one mistakes it for a whole transfer) and `done` says why; nothing else breaks.
    def out_of_descriptors(self: splice.PipePool) -> splice.Pipe:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(splice.PipePool, "take", out_of_descriptors)

    async def scenario() -> None:
        pool = splice.PipePool()
        t = Tunnel(pool)
        await send_all(t.server_end, b"data that finds no pipe")
        t.relay.start()
        error = await t.relay.done
        assert isinstance(error, OSError) and error.errno == 24
        with pytest.raises(ConnectionResetError):
            await read_to_end(t.client_end)
        t.close()
        pool.close()

    run(scenario)
