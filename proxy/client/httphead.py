"""Parse the head of a proxy's answer to CONNECT, sans-IO.

`proxyd connect` starts once per ssh connection, so it avoids importing a full HTTP library:
it only needs the status, the headers and how long the body is. Bounded and strict: a head
over MAX_HEAD bytes or one that is not HTTP/1.x is an error, never a guess.
"""

from __future__ import annotations

from typing import NamedTuple

from proxy.core.errors import ProxydError

MAX_HEAD = 64 * 1024
MAX_HEADERS = 200


class BadResponse(ProxydError):
    """What the proxy sent is not an HTTP/1.x response head."""


class ResponseHead(NamedTuple):
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    version: str = "HTTP/1.1"

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def content_length(self) -> int | None:
        """The body length, or None when only the connection's close ends it."""
        if self.get("Transfer-Encoding") is not None:
            return None
        value = self.get("Content-Length")
        if value is None:
            return 0 if self.status in (204, 304) or 100 <= self.status < 200 else None
        text = value.strip()
        # ASCII digits only (str.isdigit takes "²", which int() refuses), and few enough of
        # them for int() (it refuses over 4300 digits)
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise BadResponse(f"bad Content-Length {_printable(value)!r}")
        return int(text)

    def keeps_alive(self) -> bool:
        connection = ",".join(self.get_all("Connection") + self.get_all("Proxy-Connection"))
        tokens = {token.strip().lower() for token in connection.split(",")}
        if self.version == "HTTP/1.0":  # HTTP/1.0 closes unless it says keep-alive
            return "keep-alive" in tokens and "close" not in tokens
        return "close" not in tokens


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) once the blank line has arrived; None while more is needed."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadResponse(f"response head longer than {MAX_HEAD} bytes")
        return None
    if end > MAX_HEAD:
        raise BadResponse(f"response head longer than {MAX_HEAD} bytes")
    return buffer[:end], buffer[end + 4 :]


def parse_head(head: bytes) -> ResponseHead:
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadResponse("undecodable response head") from None
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    digits = code.isascii() and code.isdigit()  # not "²²²", which int() refuses
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not digits:
        raise BadResponse(f"not an HTTP response: {_printable(lines[0])!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadResponse(f"more than {MAX_HEADERS} header lines")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise BadResponse(f"malformed header line {_printable(line)!r}")
        headers.append((name, value.strip(" \t")))
    return ResponseHead(int(code), reason, tuple(headers), version)


def _printable(text: str, limit: int = 120) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def summary(head: ResponseHead, body: bytes) -> str:
    """One line saying why the proxy refused: its text/plain body's first line, Squid's
    X-Squid-Error, or the reason phrase; control characters replaced, length bounded."""
    content_type = (head.get("Content-Type") or "").lower()
    if content_type.startswith("text/plain") and body.strip():
        first = body.decode("utf-8", "replace").strip().splitlines()[0]
        return _printable(first, 200)
    squid = head.get("X-Squid-Error")
    if squid:
        return _printable(squid, 200)
    return _printable(head.reason, 200) or "no reason given"
