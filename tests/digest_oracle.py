"""Digest computed the way a client does (RFC 7616), independent of proxy/digest.py.

The one independent implementation the tests check proxyd against: an oracle must not be
the code under test, and one copy of it is enough.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

HASHES: dict[str, Callable[[bytes], Any]] = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def hash_hex(algorithm: str, text: str) -> str:
    return str(HASHES[algorithm.upper()](text.encode("utf-8")).hexdigest())


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    return hash_hex(algorithm, f"{user}:{realm}:{password}")


def response(
    algorithm: str,
    *,
    user: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """RFC 7616 3.4.1 with qop=auth: H(H(A1):nonce:nc:cnonce:qop:H(A2))."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(
        algorithm, f"{ha1(algorithm, user, realm, password)}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"
    )
