"""The relay's side toward the Digest proxy: kept-alive connections and one shared nonce.

Every request reuses the nonce of the last challenge with the next `nc`, so a busy relay
pays one 407 round trip per nonce lifetime instead of one per request. Idle connections
are pooled; one that the proxy closed while idle is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import h11

from proxy.client.credentials import ProxyEndpoint
from proxy.client.h11io import HttpConnection
from proxy.core.digest_client import ChallengeError, CredentialsRejected, DigestClient
from proxy.core.errors import ProxydError

MAX_ATTEMPTS = 3
MAX_IDLE = 16


class UpstreamError(ProxydError):
    """The proxy can't be reached, or won't take our credentials: the relay answers 502."""


@dataclass
class Answer:
    """The proxy's final response head, on the connection its body is to be read from."""

    response: h11.Response
    connection: HttpConnection


class UpstreamProxy:
    def __init__(
        self, endpoint: ProxyEndpoint, client: DigestClient, connect_timeout: float
    ) -> None:
        self.endpoint = endpoint
        self.client = client
        self.connect_timeout = connect_timeout
        self._idle: list[HttpConnection] = []
        self.challenges = 0  # 407s answered: what nonce reuse saves

    async def _open(self) -> HttpConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.endpoint.host, self.endpoint.port),
                self.connect_timeout,
            )
        except (TimeoutError, OSError) as e:
            raise UpstreamError(f"can't reach proxy {self.endpoint.hostport}: {e}") from None
        return HttpConnection(h11.CLIENT, reader, writer)

    async def _take(self) -> tuple[HttpConnection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.reader.at_eof():
                return connection, True
            await connection.close()
        return await self._open(), False

    async def release(self, connection: HttpConnection) -> None:
        """Back to the pool if the exchange ended cleanly, else closed."""
        if connection.reusable() and len(self._idle) < MAX_IDLE:
            connection.h11.start_next_cycle()
            self._idle.append(connection)
        else:
            await connection.close()

    async def request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        """Send with credentials and answer 407s; the first non-407 response comes back.

        A CONNECT opens a connection of its own, as curl and browsers do (proxyd serves a
        tunnel only as the first request of a connection), and answers its 407 on it."""
        refused_once = False
        tunnel = method == b"CONNECT"
        retry_on: HttpConnection | None = None
        for _ in range(MAX_ATTEMPTS):
            if retry_on is not None:
                connection, pooled, retry_on = retry_on, False, None
            elif tunnel:
                connection, pooled = await self._open(), False
            else:
                connection, pooled = await self._take()
            authorization = self.client.authorization(method.decode("ascii"), target.decode())
            sent_nonce = self.client.nonce if authorization else None
            sent = list(headers)
            if authorization:
                sent.append((b"Proxy-Authorization", authorization.encode("utf-8")))
            if body or method not in (b"GET", b"HEAD", b"CONNECT", b"OPTIONS", b"DELETE"):
                sent.append((b"Content-Length", str(len(body)).encode()))
            try:
                await connection.send(h11.Request(method=method, target=target, headers=sent))
                if body:
                    await connection.send(h11.Data(data=body))
                await connection.send(h11.EndOfMessage())
                response = await self._response(connection)
            except (TimeoutError, OSError, h11.ProtocolError) as e:
                await connection.close()
                if pooled:
                    continue  # the proxy closed it while it sat idle: one fresh try
                raise UpstreamError(
                    f"proxy {self.endpoint.hostport}: {e or type(e).__name__}"
                ) from None
            if response.status_code != 407:
                return Answer(response, connection)
            if tunnel:
                retry_on = await self._drained(connection)
            else:
                await self._drain(connection)
            self.challenges += 1
            values = [
                v.decode("latin-1") for k, v in response.headers if k == b"proxy-authenticate"
            ]
            try:
                self.client.challenged(values, sent_nonce)
            except ChallengeError as e:
                raise UpstreamError(str(e)) from None
            except CredentialsRejected as e:
                if refused_once:
                    raise UpstreamError(str(e)) from None
                refused_once = True  # once more with the fresh nonce (strict nc checks)
        raise UpstreamError("the proxy kept answering 407; giving up")

    async def _response(self, connection: HttpConnection) -> h11.Response:
        while True:
            event = await connection.next_event(self.connect_timeout)
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the proxy closed the connection")
            # InformationalResponse (100 Continue): the body has gone already; skip it.

    async def _drain(self, connection: HttpConnection) -> None:
        with contextlib.suppress(OSError, h11.ProtocolError, asyncio.TimeoutError):
            if await connection.read_body(1 << 20, self.connect_timeout) is not None:
                await self.release(connection)
                return
        await connection.close()

    async def _drained(self, connection: HttpConnection) -> HttpConnection | None:
        """The connection after its 407's body, ready for the next request; None (and
        closed) if it can't carry one."""
        with contextlib.suppress(OSError, h11.ProtocolError, asyncio.TimeoutError):
            body = await connection.read_body(1 << 20, self.connect_timeout)
            if body is not None and connection.reusable():
                connection.h11.start_next_cycle()
                return connection
        await connection.close()
        return None

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


def header_list(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in headers]
