"""proxyd's own answers: whole, framed, in one piece."""

from __future__ import annotations

import h11

from proxy.core import answers
from proxy.core.admission import Refuse


def read(data: bytes) -> tuple[h11.Response, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="CONNECT", target="a:1", headers=[("Host", "a:1")]))
    conn.receive_data(data)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)  # the body is all there, in this one piece
    return response, body


def test_a_407_with_two_challenges() -> None:
    refusal = Refuse(407, "authentication required", "no_credentials")
    data = answers.encode(
        407,
        answers.refusal_headers(refusal, ['Digest realm="proxyd", a=1', "Digest b=2"]),
        answers.text_body(refusal.reason),
        close=False,
    )
    response, body = read(data)
    assert response.status_code == 407
    assert [v for k, v in response.headers if k == b"proxy-authenticate"] == [
        b'Digest realm="proxyd", a=1',
        b"Digest b=2",
    ]
    assert body == b"proxyd: authentication required\n"
    assert b"connection" not in dict(response.headers)


def test_a_429_for_connections_closes() -> None:
    refusal = Refuse(429, "more than 2 connections from your address", "connections")
    data = answers.encode(
        429, answers.refusal_headers(refusal, []), answers.text_body(refusal.reason), close=False
    )
    response, _ = read(data)
    headers = dict(response.headers)
    assert headers[b"connection"] == b"close" and headers[b"retry-after"] == b"60"
    assert data.count(b"Connection:") == 1


def test_plain_and_a_reason_outside_ascii() -> None:
    data, body = answers.plain(502, "could not connect to \u00e9")
    response, got = read(data)
    assert response.status_code == 502 and got == body == b"proxyd: could not connect to \\xe9\n"
