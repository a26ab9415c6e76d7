"""A bound on the size of a request head, which mitmproxy does not have.

mitmproxy buffers a request head until it sees the blank line, however long that takes:
one client sending an endless header can grow that buffer without limit. The engine's
reader (`mitm_internals`) asks `head_too_large` on every read and answers 431 and closes.
"""

from __future__ import annotations


class HeaderLimit:
    bytes = 32 * 1024  # set from the config at start and on reload


def head_too_large(buffered: bytes | bytearray, limit: int) -> bool:
    if len(buffered) <= limit:
        return False
    end = buffered.find(b"\r\n\r\n", 0, limit + 4)
    if end == -1:
        end = buffered.find(b"\n\n", 0, limit + 2)
    return end == -1


def too_large_answer(limit: int) -> bytes:
    body = f"proxyd: request header fields larger than {limit} bytes\n"
    return (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()
