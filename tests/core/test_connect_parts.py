"""`proxyd connect`'s sans-IO parts: the proxy's answer head and the CONNECT authority."""

from __future__ import annotations

import pytest

from proxy.client.httphead import (
    MAX_HEAD,
    MAX_HEADERS,
    BadResponse,
    ResponseHead,
    parse_head,
    split_head,
    summary,
)
from proxy.client.tunnel import BadTarget, ConnectExit, authority

# --------------------------------------------------------------------------- split_head


def test_split_head_waits_for_the_blank_line_and_keeps_the_rest() -> None:
    assert split_head(b"HTTP/1.1 200 OK\r\nA: b\r\n") is None
    assert split_head(b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-x\r\n") == (
        b"HTTP/1.1 200 OK",
        b"SSH-2.0-x\r\n",
    )
    # LF-only line ends are not HTTP/1.1: never taken for the end of the head.
    assert split_head(b"HTTP/1.1 200 OK\n\nrest") is None


def test_split_head_over_64_kib_is_refused() -> None:
    filler = b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD
    with pytest.raises(BadResponse, match="longer than"):
        split_head(filler)  # no blank line yet, already too long
    with pytest.raises(BadResponse, match="longer than"):
        split_head(filler + b"\r\n\r\n")  # the blank line came too late
    exact = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD - 20)
    assert len(exact) == MAX_HEAD
    assert split_head(exact + b"\r\n\r\n") == (exact, b"")


# --------------------------------------------------------------------------- parse_head


def test_parse_head_fields() -> None:
    head = parse_head(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Digest realm="proxyd", nonce="a,b", algorithm=MD5\r\n'
        b"proxy-authenticate:  Digest realm=proxyd, nonce=c, algorithm=SHA-256 \t\r\n"
        b"Content-Length: 12"
    )
    assert head.status == 407
    assert head.reason == "Proxy Authentication Required"
    assert head.version == "HTTP/1.1"
    assert head.get_all("Proxy-Authenticate") == [
        'Digest realm="proxyd", nonce="a,b", algorithm=MD5',
        "Digest realm=proxyd, nonce=c, algorithm=SHA-256",
    ]
    assert head.get("content-length") == "12" and head.get("X-Missing") is None


def test_parse_head_http_1_0_and_an_empty_reason() -> None:
    assert parse_head(b"HTTP/1.0 200 Connection established") == ResponseHead(
        200, "Connection established", (), "HTTP/1.0"
    )
    assert parse_head(b"HTTP/1.1 200").reason == ""


@pytest.mark.parametrize(
    "status_line",
    [
        b"",
        b"SSH-2.0-OpenSSH_9.2",
        b"HTTP/2 200 OK",
        b"HTTP/1.2 200 OK",
        b"http/1.1 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 2x0 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1\t200 OK",
        b" HTTP/1.1 200 OK",
        b"HTTP/1.1 \xb2\xb2\xb2 OK",  # latin-1 superscript digits
        b"HTTP/1.1 +20 OK",
    ],
)
def test_bad_status_lines_are_refused(status_line: bytes) -> None:
    with pytest.raises(BadResponse, match="not an HTTP response"):
        parse_head(status_line + b"\r\nContent-Length: 0")


@pytest.mark.parametrize(
    "line",
    [
        b"Content-Length : 0",  # space before the colon (a smuggling classic)
        b"Content-Length\t: 0",
        b" Folded: continuation",  # obs-fold
        b"\tFolded: continuation",
        b"Two Words: x",
        b"NoColon",
        b": no name",
        b"",  # an empty line inside the head
    ],
)
def test_malformed_header_lines_are_refused(line: bytes) -> None:
    with pytest.raises(BadResponse, match="malformed header line"):
        parse_head(b"HTTP/1.1 407 Auth\r\nA: b\r\n" + line)


def test_malformed_header_line_message_is_printable() -> None:
    with pytest.raises(BadResponse) as caught:
        parse_head(b"HTTP/1.1 200 OK\r\nBad\x1b[31m Name: x")
    assert "\x1b" not in str(caught.value)


def test_too_many_header_lines_are_refused() -> None:
    ok = b"HTTP/1.1 200 OK" + b"\r\nA: b" * MAX_HEADERS
    assert len(parse_head(ok).headers) == MAX_HEADERS
    with pytest.raises(BadResponse, match="header lines"):
        parse_head(ok + b"\r\nA: b")


# --------------------------------------------------------------------------- body length


def head(status: int = 407, *headers: tuple[str, str], version: str = "HTTP/1.1") -> ResponseHead:
    return ResponseHead(status, "Reason", tuple(headers), version)


@pytest.mark.parametrize(
    ("status", "headers", "length"),
    [
        (407, [("Content-Length", "42")], 42),
        (407, [("Content-Length", "0")], 0),
        (407, [], None),  # until the connection closes
        (403, [("Transfer-Encoding", "chunked"), ("Content-Length", "5")], None),
        (204, [], 0),
        (304, [], 0),
        (100, [], 0),
        (200, [], None),
    ],
)
def test_content_length(status: int, headers: list[tuple[str, str]], length: int | None) -> None:
    assert head(status, *headers).content_length() == length


@pytest.mark.parametrize("value", ["", "-1", "+5", "1e3", "0x10", "1 2", "\xb2", "9" * 19])
def test_bad_content_length_is_refused(value: str) -> None:
    with pytest.raises(BadResponse, match="bad Content-Length"):
        head(407, ("Content-Length", value)).content_length()


def test_content_length_is_read_from_the_parsed_head() -> None:
    parsed = parse_head(b"HTTP/1.1 407 Auth\r\nContent-Length:  17 ")
    assert parsed.content_length() == 17
    superscript = parse_head(b"HTTP/1.1 407 Auth\r\nContent-Length: \xb9")
    with pytest.raises(BadResponse):
        superscript.content_length()


@pytest.mark.parametrize(
    ("version", "headers", "alive"),
    [
        ("HTTP/1.1", [], True),
        ("HTTP/1.1", [("Connection", "keep-alive")], True),
        ("HTTP/1.1", [("Connection", "close")], False),
        ("HTTP/1.1", [("Connection", "Keep-Alive, Close")], False),
        ("HTTP/1.1", [("Connection", "te"), ("connection", "close")], False),
        ("HTTP/1.1", [("Proxy-Connection", "close")], False),
        ("HTTP/1.0", [], False),  # HTTP/1.0 closes unless it says otherwise
        ("HTTP/1.0", [("Proxy-Connection", "keep-alive")], True),
        ("HTTP/1.0", [("Connection", "Keep-Alive")], True),
        ("HTTP/1.0", [("Connection", "keep-alive"), ("Proxy-Connection", "close")], False),
    ],
)
def test_keeps_alive(version: str, headers: list[tuple[str, str]], alive: bool) -> None:
    assert head(407, *headers, version=version).keeps_alive() is alive


# --------------------------------------------------------------------------- summary


def test_summary_prefers_the_first_line_of_a_text_plain_body() -> None:
    refused = head(403, ("Content-Type", "text/plain; charset=utf-8"), ("X-Squid-Error", "ERR"))
    body = b"\n  proxyd: no rule allows 127.0.0.1 to 127.0.0.3 port 22\nsecond line\n"
    assert summary(refused, body) == "proxyd: no rule allows 127.0.0.1 to 127.0.0.3 port 22"


def test_summary_falls_back_to_x_squid_error_then_the_reason() -> None:
    html = head(403, ("Content-Type", "text/html"), ("X-Squid-Error", "ERR_ACCESS_DENIED 0"))
    assert summary(html, b"<html>denied</html>") == "ERR_ACCESS_DENIED 0"
    blank_text = head(403, ("Content-Type", "text/plain"))
    assert summary(blank_text, b" \r\n ") == "Reason"  # empty text body: not a reason
    assert summary(ResponseHead(502, "Bad Gateway", ()), b"") == "Bad Gateway"
    assert summary(ResponseHead(418, "", ()), b"") == "no reason given"


def test_summary_replaces_control_characters_and_bounds_the_length() -> None:
    text = head(403, ("Content-Type", "TEXT/PLAIN"))
    assert summary(text, b"denied\x1b[2J\x07 now") == "denied?[2J? now"
    assert len(summary(text, b"x" * 5000)) == 200
    assert summary(text, b"caf\xc3\xa9 \xff") == "caf\xe9 \ufffd"
    assert summary(ResponseHead(403, "No\x1b]0;pwned\x07", ()), b"") == "No?]0;pwned?"
    squid = head(403, ("X-Squid-Error", "ERR\r\x00"))
    assert summary(squid, b"") == "ERR??"


# --------------------------------------------------------------------------- authority


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("example.com", "22", "example.com:22"),
        ("Example.COM.", 22, "Example.COM.:22"),
        ("a", "1", "a:1"),
        ("host_name-1.internal", "65535", "host_name-1.internal:65535"),
        ("127.0.0.2", "2222", "127.0.0.2:2222"),
        ("::1", "22", "[::1]:22"),
        ("[::1]", "22", "[::1]:22"),
        ("2001:db8::1", "443", "[2001:db8::1]:443"),
        ("[::ffff:127.0.0.1]", "22", "[::ffff:127.0.0.1]:22"),
        ("fe80::1", "00022", "[fe80::1]:22"),
        ("x" * 254, "22", "x" * 254 + ":22"),
    ],
)
def test_authority(host: str, port: str | int, expected: str) -> None:
    assert authority(host, port) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "[]",
        "host\r\nX-Injected: 1",
        "host\nX: 1",
        "host\r",
        "two words",
        "host\t",
        "host\x00",
        "-leading-dash",
        "trailing-dash-",
        "x" * 255,
        "user@host",
        "host/path",
        "host:22",  # a colon makes it IPv6, and this is no IPv6 address
        "[::1",
        "::1]",
        "[::1]:22",
        "[fe80::1%eth0]",
        "caf\xe9.example",
        "\u0661\u0662\u0667.0.0.1",
    ],
)
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(BadTarget, match="bad host") as caught:
        authority(host, "22")
    assert caught.value.exit == ConnectExit.LOCAL


@pytest.mark.parametrize(
    "port",
    [
        *("", "0", "00", "65536", "99999", "-1", "+22", "22 ", " 22", "2 2", "0x16", "ssh"),
        *("22\r\n", "\xb2\xb2", "\u0662\u0662", "\uff12\uff12", "9" * 5000, "000022"),
    ],
)
def test_bad_ports_are_refused(port: str) -> None:
    with pytest.raises(BadTarget, match="invalid port") as caught:
        authority("example.com", port)
    assert caught.value.exit == ConnectExit.LOCAL


def test_integer_ports() -> None:
    assert authority("h", 1) == "h:1"
    with pytest.raises(BadTarget):
        authority("h", 0)
    with pytest.raises(BadTarget):
        authority("h", 65536)
    with pytest.raises(BadTarget):
        authority("h", -22)
