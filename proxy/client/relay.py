"""`proxyd relay`: a local proxy without auth that forwards through a Digest proxy.

For the tools that can't answer a Digest proxy challenge (pip, requests, wget, Node…):
they talk to the relay on loopback, and the relay adds Digest credentials upstream. Plain
requests (absolute-form) go over kept-alive upstream connections; CONNECT becomes one
upstream tunnel each. With a PAC, the relay sends DIRECT what the PAC says, as a browser
would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from proxy.client.h11io import HttpConnection, end_to_end, splice_streams
from proxy.client.tunnel import BadTarget, authority
from proxy.client.upstream import UpstreamError, UpstreamProxy
from proxy.core.addresses import split_hostport, url_port
from proxy.core.errors import BadDestination, ProxydError

log = logging.getLogger("proxyd.relay")

MAX_BODY = 64 * 1024 * 1024  # request bodies are buffered: a 407 retry must resend them
IDLE_TIMEOUT = 300.0
# Router: (URL as a PAC sees it, host) -> True to go through the upstream proxy.
Router = Callable[[str, str], bool]


class ClientError(ProxydError):
    """What the relay's own client got wrong: answered with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    authority: str  # host:port, brackets for IPv6
    path: str  # origin-form, for a DIRECT request


def parse_absolute(target: str) -> Destination:
    """`http://host[:port]/path` of a plain proxy request."""
    try:
        parts = urlsplit(target)
        port = url_port(parts, 80)
    except (ValueError, BadDestination):
        raise ClientError(400, f"bad request target {target[:200]!r}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ClientError(400, "a proxy request needs an absolute http:// URL (or CONNECT)")
    host = parts.hostname
    try:
        hostport = authority(host, port)
    except BadTarget as e:
        raise ClientError(400, str(e)) from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Destination(host, port, hostport, path)


def parse_authority(target: str) -> Destination:
    """`host:port` of a CONNECT."""
    try:
        host, port = split_hostport(target)
        hostport = authority(host, port)
    except (BadDestination, BadTarget) as e:
        raise ClientError(400, f"CONNECT needs host:port: {e}") from None
    return Destination(host, port, hostport, "")


class Relay:
    def __init__(
        self, upstream: UpstreamProxy, through_upstream: Router, connect_timeout: float = 30.0
    ) -> None:
        self.upstream = upstream
        self.through_upstream = through_upstream
        self.connect_timeout = connect_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = HttpConnection(h11.SERVER, reader, writer)
        try:
            await self._serve(client)
        except (TimeoutError, OSError, h11.ProtocolError):
            pass  # the client went away or stalled: nothing to answer
        except Exception:
            log.exception("internal error (a bug, please report)")
        finally:
            await client.close()

    async def _serve(self, client: HttpConnection) -> None:
        while True:
            try:
                event = await client.next_event(IDLE_TIMEOUT)
            except h11.RemoteProtocolError as e:
                await self._answer(client, e.error_status_hint, f"bad request: {e}")
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            try:
                if event.method == b"CONNECT":
                    await self._tunnel(client, event)
                    return
                await self._forward(client, event)
            except ClientError as e:
                await self._answer(client, e.status, str(e))
            except UpstreamError as e:
                log.warning("%s", e)
                await self._answer(client, 502, str(e))
            if not client.reusable():
                return
            client.h11.start_next_cycle()

    async def _answer(self, client: HttpConnection, status: int, message: str) -> None:
        """The relay's own error response; the connection closes after it."""
        if client.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            client.writer.close()  # a response was under way: all we can do is cut it
            return
        body = f"proxyd relay: {message}\n".encode()
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        await client.send(h11.Response(status_code=status, headers=headers))
        await client.send(h11.Data(data=body), h11.EndOfMessage())

    async def _request_body(self, client: HttpConnection) -> bytes:
        if client.h11.client_is_waiting_for_100_continue:
            await client.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = await client.read_body(MAX_BODY, IDLE_TIMEOUT)
        if body is None:
            raise ClientError(413, f"request body larger than {MAX_BODY} bytes")
        return body

    async def _forward(self, client: HttpConnection, request: h11.Request) -> None:
        target = request.target.decode("ascii", "replace")
        destination = parse_absolute(target)
        body = await self._request_body(client)
        headers = end_to_end(request.headers, drop=frozenset({b"content-length", b"expect"}))
        if self.through_upstream(target, destination.host):
            answer = await self.upstream.request(request.method, request.target, headers, body)
            await self._stream_back(client, answer.response, answer.connection)
            await self.upstream.release(answer.connection)
        else:
            origin = await self._open_direct(destination)
            try:
                if body or request.method not in (b"GET", b"HEAD"):
                    headers.append((b"Content-Length", str(len(body)).encode()))
                headers = [(k, v) for k, v in headers if k.lower() != b"host"]
                headers.insert(0, (b"Host", destination.authority.encode("ascii")))
                path = destination.path.encode("ascii")
                await origin.send(h11.Request(method=request.method, target=path, headers=headers))
                await origin.send(h11.Data(data=body), h11.EndOfMessage())
                response = await self._final_response(origin)
                await self._stream_back(client, response, origin)
            finally:
                await origin.close()
        log.info("%s %s", request.method.decode(), target)

    async def _final_response(self, connection: HttpConnection) -> h11.Response:
        while True:
            event = await connection.next_event(self.connect_timeout)
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamError("the origin closed the connection without answering")

    async def _stream_back(
        self, client: HttpConnection, response: h11.Response, source: HttpConnection
    ) -> None:
        headers = end_to_end(response.headers)
        await client.send(
            h11.Response(status_code=response.status_code, headers=headers, reason=response.reason)
        )
        while True:
            event = await source.next_event(IDLE_TIMEOUT)
            if isinstance(event, h11.Data):
                await client.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await client.send(h11.EndOfMessage())
                return
            else:
                raise h11.RemoteProtocolError("upstream closed inside a response")

    async def _open_direct(self, destination: Destination) -> HttpConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(destination.host, destination.port), self.connect_timeout
            )
        except (TimeoutError, OSError) as e:
            raise UpstreamError(f"can't reach {destination.authority}: {e}") from None
        return HttpConnection(h11.CLIENT, reader, writer)

    async def _tunnel(self, client: HttpConnection, request: h11.Request) -> None:
        target = request.target.decode("ascii", "replace")
        destination = parse_authority(target)
        await client.read_body(0, IDLE_TIMEOUT)  # a CONNECT has no body; reach its end
        pac_url = f"https://{destination.authority}/"
        if self.through_upstream(pac_url, destination.host):
            headers = [(b"Host", destination.authority.encode("ascii"))]
            answer = await self.upstream.request(
                b"CONNECT", destination.authority.encode("ascii"), headers, b""
            )
            far = answer.connection
            if not 200 <= answer.response.status_code < 300:
                await self._stream_back(client, answer.response, far)
                await self.upstream.release(far)
                return
        else:
            far = await self._open_direct(destination)
        await client.send(
            h11.Response(status_code=200, headers=[], reason=b"Connection established")
        )
        log.info("CONNECT %s", target)
        if early := far.trailing() if far.h11.our_state is h11.SWITCHED_PROTOCOL else b"":
            client.writer.write(early)
        if pending := client.trailing():
            far.writer.write(pending)
        await splice_streams((client.reader, client.writer), (far.reader, far.writer))
