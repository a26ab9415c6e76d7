"""proxy.core.upstream: what a client is told when its upstream fails."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.upstream import CONNECT_TIMEOUT, Failure, classify, explain

TIMEOUTS = {"connect_timeout": 10.0, "read_timeout": 60.0}


def test_classify() -> None:
    assert (
        classify(CONNECT_TIMEOUT, connected=False, read_timed_out=False) is Failure.CONNECT_TIMEOUT
    )
    assert classify("x", connected=True, read_timed_out=True) is Failure.READ_TIMEOUT
    assert classify("[Errno 111] x", connected=False, read_timed_out=False) is Failure.CONNECT
    assert classify("server closed connection", connected=True, read_timed_out=False) is (
        Failure.BROKEN
    )


def test_explain_names_the_checked_address_and_the_timeout() -> None:
    assert explain(Failure.CONNECT_TIMEOUT, "10.0.0.1", 22, "", **TIMEOUTS) == (
        504,
        "no connection to 10.0.0.1:22 (the checked address) within 10 s",
    )
    assert explain(Failure.READ_TIMEOUT, "::1", 80, "", **TIMEOUTS) == (
        504,
        "[::1]:80 sent no response within 60 s",
    )
    refused = "[Errno 111] Connect call failed ('10.0.0.1', 80)"
    assert explain(Failure.CONNECT, "10.0.0.1", 80, refused, **TIMEOUTS) == (
        502,
        "could not connect to 10.0.0.1:80 (the checked address): connection refused",
    )
    assert explain(Failure.BROKEN, "10.0.0.1", 80, "", **TIMEOUTS)[1].endswith(
        "without a valid response: connection closed"
    )


@given(st.text())
def test_any_engine_message_becomes_a_short_printable_reason(message: str) -> None:
    status, reason = explain(Failure.BROKEN, "10.0.0.1", 80, message, **TIMEOUTS)
    assert status == 502
    assert reason.isascii() and reason.isprintable()
    assert len(reason) < 300
