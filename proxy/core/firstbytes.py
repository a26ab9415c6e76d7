"""What a new connection on the proxy port is, from its first bytes (sans-IO).

The listener peeks at the first bytes of every connection (without consuming them) and
sends it down one of three paths: a CONNECT to proxyd's tunnel front, any other HTTP
request to the engine with its bytes untouched, and anything that cannot start an HTTP
request (binary noise; a TLS ClientHello from a client given an `https://` proxy URL when
no certificate is configured, else it is served as TLS) to an immediate 400 and a close,
instead of a silent wait for the idle timeout. On the TLS listener, a first byte that is
not `TLS_HANDSHAKE` is plain text sent to the TLS port.
"""

from __future__ import annotations

from enum import Enum

CONNECT = b"CONNECT "
PEEK = len(CONNECT)
# RFC 9110 token characters (a method is a token); RFC 9112 2.2 lets a server skip
# empty lines before the request line, so CR and LF may open a request too.
_OPENERS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n"
)
TLS_HANDSHAKE = 0x16  # the record type of a ClientHello


class Path(Enum):
    TUNNEL = "tunnel"  # CONNECT, or bytes that may still become one: proxyd's front
    ENGINE = "engine"  # any other request: mitmproxy's HTTP layer
    TLS = "tls"  # a TLS handshake on the plain-text port
    NOT_HTTP = "not_http"  # a byte that no HTTP request starts with


def classify(first: bytes) -> Path:
    """`first`: at least one byte, up to `PEEK`, as peeked from the socket."""
    if first[0] == TLS_HANDSHAKE:
        return Path.TLS
    if first[0] not in _OPENERS:
        return Path.NOT_HTTP
    if CONNECT.startswith(first[:PEEK]) or first.startswith((b"\r", b"\n")):
        # A short read that may still spell CONNECT (or leading empty lines): the front
        # reads the head and hands anything else to the engine with the bytes it read.
        return Path.TUNNEL
    return Path.ENGINE
