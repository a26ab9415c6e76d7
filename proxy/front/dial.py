"""Connecting to a checked destination: every address the policy allowed, RFC 8305 style.

The addresses come from the admission core, all of them checked; none is resolved again.
They are tried in turn, alternating families (RFC 8305 4: a v6 and a v4 address take
turns), each attempt started `ATTEMPT_DELAY` after the one before unless that one has
already failed, the first to connect wins and the others are closed. The whole dial is
bounded by the connect timeout: a destination that drops SYNs is answered, not waited for.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Sequence

from proxy.core.addresses import IPAddress
from proxy.core.upstream import Failure

ATTEMPT_DELAY = 0.25  # RFC 8305 5: "Connection Attempt Delay", recommended 250 ms


class DialFailed(Exception):
    def __init__(self, failure: Failure, address: IPAddress, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.address = address  # the first checked address, the one the client is told of
        self.message = message


def interleave(addresses: Sequence[IPAddress]) -> list[IPAddress]:
    """RFC 8305 4: keep the resolver's order within a family, alternate the families,
    starting with the family of the first address."""
    if not addresses:
        return []
    first = addresses[0].version
    same = [a for a in addresses if a.version == first]
    other = [a for a in addresses if a.version != first]
    out: list[IPAddress] = []
    for i in range(max(len(same), len(other))):
        out += same[i : i + 1] + other[i : i + 1]
    return out


async def _attempt(address: IPAddress, port: int) -> socket.socket:
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def dial(addresses: Sequence[IPAddress], port: int, timeout: float) -> socket.socket:
    """A connected non-blocking socket to one of `addresses`, or `DialFailed`."""
    order = interleave(addresses)
    if not order:
        raise ValueError("no address to dial")
    if len(order) == 1:  # the common case (an address literal): no race to run
        try:
            async with asyncio.timeout(timeout):
                return await _attempt(order[0], port)
        except TimeoutError:
            raise DialFailed(Failure.CONNECT_TIMEOUT, order[0], "connect timeout") from None
        except OSError as e:
            raise DialFailed(Failure.CONNECT, order[0], _describe(e)) from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts: list[asyncio.Task[socket.socket]] = []
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[OSError] = []
    winner: socket.socket | None = None
    try:
        for index, address in enumerate(order):
            latest = loop.create_task(_attempt(address, port))
            attempts.append(latest)
            pending.add(latest)
            is_last = index == len(order) - 1
            # Wait for a winner, for this attempt's failure (then the next starts at once),
            # or for the attempt delay; after the last address, until the deadline.
            while pending and winner is None:
                left = deadline - loop.time()
                wait = left if is_last else min(ATTEMPT_DELAY, left)
                if wait <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for finished in done:
                    error = finished.exception()
                    if error is None and winner is None:
                        winner = finished.result()
                    elif error is None:
                        finished.result().close()  # a second winner in the same turn
                    else:
                        assert isinstance(error, OSError)
                        errors.append(error)
                if not done or latest in done:
                    break  # the delay passed, or this attempt failed: the next address
            if winner is not None:
                return winner
            if loop.time() >= deadline:
                break
        if len(errors) == len(order):
            raise DialFailed(Failure.CONNECT, order[0], _describe(errors[-1]))
        raise DialFailed(Failure.CONNECT_TIMEOUT, order[0], "connect timeout")
    finally:
        for task in pending:
            task.cancel()  # its socket is closed as the cancellation reaches it


def _describe(error: OSError) -> str:
    if error.errno is not None:
        return f"[Errno {error.errno}] {error.strerror or errno.errorcode.get(error.errno, '')}"
    return str(error) or type(error).__name__
