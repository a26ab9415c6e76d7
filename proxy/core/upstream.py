"""What a client is told when its upstream fails: connect refused, connect or read timeout,
or an upstream that closed or broke the exchange. Plain values in, (status, reason) out.

The engine only has an error string; proxyd knows the address it checked and connected to,
and which of its own timers fired, so the answer says that instead of the engine's advice.
"""

from __future__ import annotations

import os
import re
from enum import Enum

from proxy.core.addresses import format_hostport

CONNECT_TIMEOUT = "proxyd: connect timeout"  # the cancel message of the connect timer
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_MAX_DETAIL = 200


class Failure(Enum):
    CONNECT = "connect"  # no connection was made
    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"  # connected, sent the request, no response head in time
    BROKEN = "broken"  # connected, then closed or an invalid response


def classify(message: str, *, connected: bool, read_timed_out: bool) -> Failure:
    if read_timed_out:
        return Failure.READ_TIMEOUT
    if message == CONNECT_TIMEOUT:
        return Failure.CONNECT_TIMEOUT
    return Failure.BROKEN if connected else Failure.CONNECT


def explain(
    failure: Failure,
    address: str,
    port: int,
    message: str,
    *,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[int, str]:
    """The status and the one-line reason for the client (and the access log)."""
    where = format_hostport(address, port)
    if failure is Failure.CONNECT_TIMEOUT:
        return 504, f"no connection to {where} (the checked address) within {connect_timeout:g} s"
    if failure is Failure.READ_TIMEOUT:
        return 504, f"{where} sent no response within {read_timeout:g} s"
    if failure is Failure.CONNECT:
        return 502, f"could not connect to {where} (the checked address): {_detail(message)}"
    return 502, f"{where} ended the exchange without a valid response: {_detail(message)}"


def _detail(message: str) -> str:
    """`[Errno 111] Connect call failed ('1.2.3.4', 80)` -> `connection refused`; any other
    text kept, printable and bounded (it may quote bytes the upstream sent)."""
    if m := _ERRNO.search(message):
        return os.strerror(int(m.group(1))).lower()
    text = "".join(c if c.isascii() and c.isprintable() else "?" for c in message)
    text = text or "connection closed"
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
