"""Which path a connection takes, from the bytes it opens with."""

from __future__ import annotations

import pytest

from proxy.core.firstbytes import Path, classify


@pytest.mark.parametrize(
    ("first", "path"),
    [
        (b"CONNECT ", Path.TUNNEL),
        (b"CONNECT", Path.TUNNEL),  # a short read that may still spell it
        (b"C", Path.TUNNEL),
        (b"\r\nCONNEC", Path.TUNNEL),  # empty lines before the request line
        (b"CONNECTX", Path.ENGINE),
        (b"GET http", Path.ENGINE),
        (b"connect ", Path.ENGINE),  # methods are case-sensitive: the engine answers it
        (b"COPY /x ", Path.ENGINE),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01", Path.TLS),
        (b"\x00\x01", Path.NOT_HTTP),
        (b"\xff", Path.NOT_HTTP),
        (b" GET", Path.NOT_HTTP),
        (b"SSH-2.0-", Path.ENGINE),  # a token: the engine's 400 says what is wrong
    ],
)
def test_paths(first: bytes, path: Path) -> None:
    assert classify(first) is path


def test_every_single_byte_has_a_path() -> None:
    for b in range(256):
        assert isinstance(classify(bytes([b])), Path)
