"""A bound on the size of a request head, which mitmproxy 11.0 does not have.

mitmproxy buffers a request head until it sees the blank line, however long that takes:
one client sending an endless header can grow that buffer without limit. We wrap
`Http1Server.read_headers` (pinned: mitmproxy 11.0.x) to answer 431 and close once the
buffered head passes the limit.
"""

from __future__ import annotations

from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import _http1

_original_read_headers = _http1.Http1Server.read_headers


class HeaderLimit:
    bytes = 32 * 1024  # set from the config at start and on reload


def head_too_large(buffered: bytes | bytearray, limit: int) -> bool:
    if len(buffered) <= limit:
        return False
    end = buffered.find(b"\r\n\r\n", 0, limit + 4)
    if end == -1:
        end = buffered.find(b"\n\n", 0, limit + 2)
    return end == -1


def _read_headers_bounded(
    self: _http1.Http1Server, event: events.ConnectionEvent
) -> layer.CommandGenerator[None]:
    if isinstance(event, events.DataReceived) and head_too_large(self.buf._data, HeaderLimit.bytes):
        body = f"proxyd: request header fields larger than {HeaderLimit.bytes} bytes\n"
        yield commands.SendData(
            self.conn,
            (
                "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
            ).encode(),
        )
        yield commands.CloseConnection(self.conn)
        self.state = self.done
        return
    yield from _original_read_headers(self, event)


def install() -> None:
    _http1.Http1Server.read_headers = _read_headers_bounded  # type: ignore[method-assign]
