"""The answers proxyd writes itself, as bytes (sans-IO): one status line, its headers and
its body, made to leave in one write (a client that reads the head and the body in two
reads can hang: stock https-proxy-agent did).

The refusal's headers are written here once, for both fronts: mitmproxy's HTTP layer
sends them in its own response object, the tunnel front as these bytes.
"""

from __future__ import annotations

from http import HTTPStatus

from proxy.core.admission import Refuse

Headers = list[tuple[bytes, bytes]]

TEXT = (b"Content-Type", b"text/plain; charset=utf-8")
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def refusal_headers(refusal: Refuse, challenges: list[str]) -> Headers:
    headers: Headers = [TEXT]
    if refusal.status == 429:
        headers.append((b"Retry-After", b"60"))
        if refusal.cause == "connections":
            headers.append((b"Connection", b"close"))
    for value in challenges:
        headers.append((b"Proxy-Authenticate", value.encode("ascii")))
    return headers


def text_body(reason: str) -> bytes:
    return f"proxyd: {reason}\n".encode("ascii", "backslashreplace")


def encode(status: int, headers: Headers, body: bytes, *, close: bool) -> bytes:
    """A whole HTTP/1.1 response: status line, headers, Content-Length, body."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in headers if name.lower() != b"connection"]
    lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    if close or any(name.lower() == b"connection" for name, _ in headers):
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def plain(status: int, reason: str, *, close: bool = True) -> tuple[bytes, bytes]:
    """A text answer, and its body (for the access log's byte count)."""
    body = text_body(reason)
    return encode(status, [TEXT], body, close=close), body
