"""`proxy.front.dial` against real loopback listeners: refused, blackholed, and RFC 8305 racing."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import pytest
from harness import ORIGIN_HOST, syn_dropper

from proxy.core.upstream import Failure
from proxy.front.dial import ATTEMPT_DELAY, DialFailed, dial, interleave

A = ipaddress.ip_address


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_interleave_alternates_families_from_the_first_ones() -> None:
    v4a, v4b, v6a, v6b = A("10.0.0.1"), A("10.0.0.2"), A("2001:db8::1"), A("2001:db8::2")
    assert interleave([v6a, v6b, v4a, v4b]) == [v6a, v4a, v6b, v4b]
    assert interleave([v4a, v4b, v6a]) == [v4a, v6a, v4b]
    assert interleave([v4a]) == [v4a]


def test_a_refused_address_is_a_connect_failure_at_once() -> None:
    with socket.create_server((ORIGIN_HOST, 0)) as s:
        port = s.getsockname()[1]
    begun = time.monotonic()
    with pytest.raises(DialFailed) as e:
        run(dial([A(ORIGIN_HOST)], port, 5))
    assert e.value.failure is Failure.CONNECT and "111" in e.value.message
    assert time.monotonic() - begun < 1


@pytest.mark.parametrize("count", [1, 2])
def test_blackholed_addresses_time_out_within_the_connect_timeout(count: int) -> None:
    with syn_dropper(ORIGIN_HOST) as port, syn_dropper("127.0.0.6", port):
        addresses = [A(ORIGIN_HOST), A("127.0.0.6")][:count]
        begun = time.monotonic()
        with pytest.raises(DialFailed) as e:
            run(dial(addresses, port, 1.0))
        took = time.monotonic() - begun
    assert e.value.failure is Failure.CONNECT_TIMEOUT and e.value.address == A(ORIGIN_HOST)
    assert 1.0 <= took < 1.5


def test_the_second_address_starts_after_the_attempt_delay_and_wins() -> None:
    with syn_dropper(ORIGIN_HOST) as port, socket.create_server(("127.0.0.5", port)) as live:
        begun = time.monotonic()
        sock = run(dial([A(ORIGIN_HOST), A("127.0.0.5")], port, 5))
        took = time.monotonic() - begun
        assert isinstance(sock, socket.socket)
        with sock:
            assert sock.getpeername() == ("127.0.0.5", port)
        live.accept()[0].close()
    assert ATTEMPT_DELAY <= took < ATTEMPT_DELAY + 0.5


def test_a_failed_first_address_starts_the_next_at_once() -> None:
    with socket.create_server((ORIGIN_HOST, 0)) as probe:
        port = probe.getsockname()[1]
    with socket.create_server(("127.0.0.5", port)) as live:
        begun = time.monotonic()
        sock = run(dial([A(ORIGIN_HOST), A("127.0.0.5")], port, 5))
        took = time.monotonic() - begun
        assert isinstance(sock, socket.socket)
        sock.close()
        live.accept()[0].close()
    assert took < ATTEMPT_DELAY  # refused at once: no waiting for the delay
