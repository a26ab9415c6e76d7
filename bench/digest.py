"""Just enough client Digest (RFC 7616, qop=auth) for the load generators.

Challenges are read with proxyd's own client parser (`proxy.core.digest_client`); the signer
precomputes everything but nc and the response, so each header costs one MD5 (and wrk's
Lua can append the two).
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from proxy.core.digest_client import parse_challenges

USER = "bench"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account in a throwaway users file
REALM = "proxyd"


@dataclass(frozen=True)
class Challenge:
    nonce: str
    opaque: str | None
    realm: str


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def parse_md5_challenge(head: bytes) -> Challenge:
    """The MD5 Digest challenge among a 407 response head's Proxy-Authenticate fields."""
    values = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "proxy-authenticate":
            values.append(value.strip())
    for challenge in parse_challenges(values):
        if challenge.scheme == "digest" and challenge.algorithm == "MD5":
            params = challenge.params
            return Challenge(params["nonce"], params.get("opaque"), params.get("realm", REALM))
    raise ValueError(f"no MD5 Digest challenge in:\n{head.decode('latin-1')}")


def read_head(sock: socket.socket, limit: int = 65536) -> tuple[bytes, bytes]:
    """A response head (through the blank line) and whatever bytes followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} bytes: {data[:200]!r}")
        data += chunk
        if len(data) > limit:
            raise ValueError("response head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def status_of(head: bytes) -> int:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def fetch_challenge(
    proxy: tuple[str, int],
    request: bytes,
    connect: Callable[[], socket.socket] | None = None,
) -> Challenge:
    """Send `request` without credentials; the proxy's 407 carries a fresh nonce.
    `connect`: how to reach the proxy (a TLS listener: a TLS connection); default plain TCP."""
    opened = connect() if connect is not None else socket.create_connection(proxy, timeout=10)
    with opened as sock:
        sock.sendall(request)
        head, _ = read_head(sock)
    if status_of(head) != 407:
        raise ValueError(f"expected 407 from {proxy}, got:\n{head.decode('latin-1')}")
    return parse_md5_challenge(head)


class DigestSigner:
    """Proxy-Authorization values for one nonce, nc counting up from 1.

    HA1 and HA2 are fixed per (user, method, uri), so each value costs one MD5.
    """

    def __init__(self, challenge: Challenge, method: str, uri: str) -> None:
        self.challenge = challenge
        self.uri = uri
        self.cnonce = secrets.token_hex(8)
        self.nc = 0
        ha1 = md5_hex(f"{USER}:{challenge.realm}:{PASSWORD}")
        ha2 = md5_hex(f"{method}:{uri}")
        self._prefix = f"{ha1}:{challenge.nonce}:"
        self._suffix = f":{self.cnonce}:auth:{ha2}"
        opaque = f', opaque="{challenge.opaque}"' if challenge.opaque is not None else ""
        # Every field but nc and response, which come last so wrk's Lua can append them.
        self.fixed_part = (
            f'Digest username="{USER}", realm="{challenge.realm}", nonce="{challenge.nonce}", '
            f'uri="{uri}", algorithm=MD5, qop=auth, cnonce="{self.cnonce}"{opaque}'
        )

    def response(self, nc: int) -> str:
        return md5_hex(f"{self._prefix}{nc:08x}{self._suffix}")

    def header(self) -> str:
        self.nc += 1
        return f'{self.fixed_part}, nc={self.nc:08x}, response="{self.response(self.nc)}"'
