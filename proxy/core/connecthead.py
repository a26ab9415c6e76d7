"""A CONNECT request head, parsed from the client's bytes (sans-IO, RFC 9112).

The tunnel front reads request heads itself; this is the grammar it reads them with.
Bytes stay bytes: the method, the target and every field value come out as the client
sent them, checked against the grammar, for the admission core to judge. Anything
outside the grammar is a `BadHead` that carries the answer (400, or 431 past the limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(\d)\.(\d)\r?")  # ASCII target
_VCHAR = rb"[\x21-\x7e\x80-\xff]"  # a visible character or obs-text
_FIELD_LINE = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:" + _VCHAR + rb"|[ \t]+(?=" + _VCHAR + rb"))*)[ \t]*\r?"
)
_END = re.compile(rb"\r?\n\r?\n")


class BadHead(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Head:
    method: bytes
    target: bytes
    version: tuple[int, int]
    fields: tuple[tuple[bytes, bytes], ...]  # names lower-cased, values as sent
    size: int  # bytes of the head, the empty line included (what follows is not ours)

    def values(self, name: bytes) -> tuple[bytes, ...]:
        return tuple(v for k, v in self.fields if k == name)

    @property
    def keep_alive(self) -> bool:
        """RFC 9112 9.3: HTTP/1.1 persists unless `close`; 1.0 only with `keep-alive`.
        `Proxy-Connection` is the non-standard twin clients still send to proxies."""
        tokens = {
            t.strip().lower()
            for name in (b"connection", b"proxy-connection")
            for v in self.values(name)
            for t in v.split(b",")
        }
        if b"close" in tokens:
            return False
        return self.version >= (1, 1) or b"keep-alive" in tokens


def head_end(buffer: bytes | bytearray, limit: int) -> int | None:
    """Where the head in `buffer` ends (after its empty line), None while it may still
    come; `BadHead(431)` once `limit` bytes hold no end."""
    start = 0
    while buffer.startswith((b"\r\n", b"\n"), start):  # RFC 9112 2.2: skip empty lines
        start += 2 if buffer.startswith(b"\r\n", start) else 1
    m = _END.search(buffer, start, start + limit + 4)
    if m is not None:
        return m.end()
    if len(buffer) - start > limit:
        raise BadHead(431, f"request header fields larger than {limit} bytes")
    return None


def is_connect(buffer: bytes | bytearray) -> bool:
    """Does the request at the start of `buffer` (its head complete) say CONNECT?"""
    return bytes(buffer[:64]).lstrip(b"\r\n").startswith(b"CONNECT ")


def parse_head(buffer: bytes | bytearray, limit: int) -> Head | None:
    """The CONNECT head at the start of `buffer`, or None if it is not complete yet."""
    end = head_end(buffer, limit)
    if end is None:
        return None
    lines = bytes(buffer[:end]).lstrip(b"\r\n").split(b"\n")[:-2]
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise BadHead(400, "malformed request line")
    method, target, major, minor = m.groups()
    if major != b"1":
        raise BadHead(505, "HTTP version not supported")
    fields = []
    for line in lines[1:]:
        f = _FIELD_LINE.fullmatch(line)
        if f is None:
            if line[:1] in (b" ", b"\t"):
                raise BadHead(400, "obsolete line folding in a header field")
            raise BadHead(400, "malformed header field")
        fields.append((f.group(1).lower(), f.group(2)))
    head = Head(method, target, (1, int(minor)), tuple(fields), end)
    if head.values(b"transfer-encoding") or any(
        v.strip() != b"0" for v in head.values(b"content-length")
    ):
        # RFC 9110 9.3.6: content in a CONNECT has no meaning; framing it wrongly is how
        # requests are smuggled, so none is accepted.
        raise BadHead(400, "a CONNECT request carries no content")
    return head
