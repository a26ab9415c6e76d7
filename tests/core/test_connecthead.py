"""The CONNECT head grammar: examples, and h11 (an independent parser) as the oracle."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.connecthead import BadHead, head_end, is_connect, parse_head

LIMIT = 8192


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_a_connect_head_and_what_follows_it() -> None:
    data = head(
        b"CONNECT 127.0.0.2:443 HTTP/1.1",
        b"Host: 127.0.0.2:443",
        b'Proxy-Authorization: Digest username="a b", x=1  ',
    )
    parsed = parse_head(data + b"\x16\x03early", LIMIT)
    assert parsed is not None
    assert (parsed.method, parsed.target, parsed.version) == (b"CONNECT", b"127.0.0.2:443", (1, 1))
    assert parsed.values(b"proxy-authorization") == (b'Digest username="a b", x=1',)
    assert parsed.size == len(data)
    assert parsed.keep_alive


def test_incomplete_heads_wait_for_more() -> None:
    data = head(b"CONNECT a:1 HTTP/1.1", b"Host: a:1")
    for cut in range(len(data)):
        assert parse_head(data[:cut], LIMIT) is None
    assert parse_head(data, LIMIT) is not None


def test_bare_lf_and_leading_empty_lines_are_accepted() -> None:
    parsed = parse_head(b"\r\n\nCONNECT a:1 HTTP/1.0\nHost: a:1\n\n", LIMIT)
    assert parsed is not None and parsed.values(b"host") == (b"a:1",)
    assert not parsed.keep_alive  # HTTP/1.0 without keep-alive


@pytest.mark.parametrize(
    ("fields", "keep"),
    [
        ([], True),
        ([b"Proxy-Connection: close"], False),
        ([b"Connection: keep-alive, Close"], False),
        ([b"Proxy-Connection: Keep-Alive"], True),
    ],
)
def test_keep_alive(fields: list[bytes], keep: bool) -> None:
    parsed = parse_head(head(b"CONNECT a:1 HTTP/1.1", *fields), LIMIT)
    assert parsed is not None and parsed.keep_alive is keep


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (head(b"CONNECT a:1 HTTP/1.1", b" folded"), 400),
        (head(b"CONNECT a:1 HTTP/1.1", b"Name : value"), 400),
        (head(b"CONNECT a:1 HTTP/1.1", b"Name: a\x00b"), 400),
        (head(b"CONNECT a:1 HTTP/1.1", b"Name: a\rb"), 400),
        (head(b"CONNECT a:1 HTTP/1.1", b"no colon"), 400),
        (head(b"CONNECT  a:1 HTTP/1.1"), 400),
        (head(b"CONNECT a:1 HTTP/2.0"), 505),
        (head(b"CONNECT a:1"), 400),
        (head(b"CONNECT a:1 HTTP/1.1", b"Content-Length: 3"), 400),
        (head(b"CONNECT a:1 HTTP/1.1", b"Transfer-Encoding: chunked"), 400),
    ],
)
def test_outside_the_grammar(data: bytes, status: int) -> None:
    with pytest.raises(BadHead) as e:
        parse_head(data, LIMIT)
    assert e.value.status == status


def test_content_length_zero_is_no_content() -> None:
    assert parse_head(head(b"CONNECT a:1 HTTP/1.1", b"Content-Length: 0"), LIMIT) is not None


def test_the_size_limit() -> None:
    line = b"CONNECT a:1 HTTP/1.1\r\nX: " + b"x" * 100
    with pytest.raises(BadHead) as e:
        head_end(line, 64)
    assert e.value.status == 431
    assert head_end(line[:60], 64) is None
    fits = head(b"CONNECT a:1 HTTP/1.1", b"X: " + b"x" * 20)
    assert head_end(fits, len(fits)) == len(fits)


def test_is_connect() -> None:
    assert is_connect(b"\r\nCONNECT a:1 HTTP/1.1\r\n\r\n")
    assert not is_connect(b"GET / HTTP/1.1\r\n\r\n")


# --- h11 as the oracle ---------------------------------------------------------------------

_token = st.text("!#$%&'*+-.^_`|~abcXYZ019", min_size=1, max_size=8).map(str.encode)
_value = st.binary(max_size=12)
_line = st.one_of(
    st.tuples(_token, _value).map(lambda t: t[0] + b": " + t[1]),
    st.binary(max_size=16),
)


def h11_reading(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return event.target, [(k, v) for k, v in event.headers.raw_items()]


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=4), st.sampled_from([b"a:1", b"[::1]:22", b"x y", b"\xff:1"]))
def test_where_h11_reads_a_head_we_read_the_same_one(lines: list[bytes], target: bytes) -> None:
    data = head(b"CONNECT " + target + b" HTTP/1.1", b"Host: a", *lines)
    try:
        ours = parse_head(data, LIMIT)
    except BadHead:
        ours = None
    theirs = h11_reading(data)
    if ours is not None:
        # Everything we accept, h11 accepts too, with the same target and the same fields
        # (h11 lower-cases names, as we do, and strips the same whitespace).
        assert theirs is not None, data
        assert ours.target == theirs[0]
        assert [(k.lower(), v) for k, v in theirs[1]] == list(ours.fields)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=128))
def test_any_bytes_give_a_head_a_wait_or_a_bad_head_never_another_error(
    data: bytes, limit: int
) -> None:
    for candidate in (data, b"CONNECT " + data, b"CONNECT a:1 HTTP/1.1\r\n" + data + b"\r\n\r\n"):
        try:
            parsed = parse_head(candidate, limit)
        except BadHead as e:
            assert e.status in (400, 431, 505)
        else:
            assert parsed is None or parsed.size <= len(candidate)
