"""The relay's sans-IO pieces: request targets and hop-by-hop headers."""

from __future__ import annotations

import pytest

from proxy.cli.relay import listen_address
from proxy.client.h11io import end_to_end
from proxy.client.relay import ClientError, parse_absolute, parse_authority
from proxy.core.errors import ProxydError


def test_absolute_form_targets() -> None:
    d = parse_absolute("http://example.net/a/b?c=1")
    assert (d.host, d.port, d.authority, d.path) == (
        "example.net",
        80,
        "example.net:80",
        "/a/b?c=1",
    )
    d = parse_absolute("http://[2001:db8::1]:8080")
    assert (d.host, d.port, d.authority, d.path) == ("2001:db8::1", 8080, "[2001:db8::1]:8080", "/")


@pytest.mark.parametrize(
    "target",
    [
        *(
            "/",
            "https://example.net/",
            "http:///x",
            "http://exa mple/",
            "http://h:0/",
            "http://h:x/",
        ),
        *("http://h:\u00b2/", "http://h:\uff18\uff10/", "http://h:+80/", "http://[::1]x:80/"),
    ],
)
def test_bad_absolute_targets_are_400(target: str) -> None:
    with pytest.raises(ClientError) as info:
        parse_absolute(target)
    assert info.value.status == 400


def test_connect_authorities() -> None:
    assert parse_authority("example.net:443").authority == "example.net:443"
    d = parse_authority("[::1]:22")
    assert (d.host, d.port, d.authority) == ("::1", 22, "[::1]:22")


@pytest.mark.parametrize(
    "target",
    [
        *("example.net", "h:", ":443", "h:70000", "a b:1", "h\r\n:1"),
        *("h:\u00b2", "h:\uff18\uff10", "h:+443", "h: 443", "h:0", "h:" + "4" * 5000),
    ],
)
def test_bad_connect_authorities_are_400(target: str) -> None:
    with pytest.raises(ClientError) as info:
        parse_authority(target)
    assert info.value.status == 400


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        (b"Host", b"h"),
        (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"X-Secret-Hop", b"1"),
        (b"Proxy-Authorization", b"Basic eA=="),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"3"),
    ]
    kept = end_to_end(headers, drop=frozenset({b"content-length"}))
    assert kept == [(b"Host", b"h"), (b"Accept", b"*/*")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3129", ("127.0.0.1", 3129)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),  # any free port: fine for a listener
        ("localhost:00", ("localhost", 0)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_relay_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert listen_address(text, allow_remote=False) == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1:\u00b2", "127.0.0.1:\uff10", "127.0.0.1:+1", "127.0.0.1:65536"]
)
def test_bad_relay_listen_ports_are_refused(text: str) -> None:
    with pytest.raises(ProxydError, match=r"bad --listen.*invalid port"):
        listen_address(text, allow_remote=False)
