"""Open a CONNECT tunnel through a Digest proxy on a blocking socket (`proxyd connect`).

Each failure is a typed error carrying the exit status the command returns, so a script
around ssh can tell a wrong password from a refused destination.
"""

from __future__ import annotations

import enum
import re
import socket

from proxy import __version__
from proxy.client.credentials import ProxyEndpoint
from proxy.client.httphead import BadResponse, ResponseHead, parse_head, split_head, summary
from proxy.core.addresses import parse_port
from proxy.core.digest_client import ChallengeError, CredentialsRejected, DigestClient
from proxy.core.errors import BadDestination, ProxydError

MAX_ERROR_BODY = 64 * 1024
MAX_ATTEMPTS = 3  # no credentials, then the challenge's nonce, then once more if stale
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")


class ConnectExit(enum.IntEnum):
    OK = 0
    LOCAL = 1  # bad arguments, credentials file, target
    USAGE = 2
    PROXY_UNREACHABLE = 4  # can't reach the proxy, or it doesn't speak HTTP
    AUTH_FAILED = 5  # 407: wrong user or password, or no Digest challenge we can answer
    DENIED = 6  # 403: the proxy's policy refuses this destination
    UPSTREAM_FAILED = 7  # 502/503/504: the proxy could not reach the destination
    REFUSED = 8  # any other refusal


class TunnelError(ProxydError):
    exit: ConnectExit = ConnectExit.REFUSED


class ProxyUnreachable(TunnelError):
    exit = ConnectExit.PROXY_UNREACHABLE


class AuthFailed(TunnelError):
    exit = ConnectExit.AUTH_FAILED


class Refused(TunnelError):
    def __init__(self, head: ResponseHead, body: bytes) -> None:
        super().__init__(f"proxy answered {head.status}: {summary(head, body)}")
        self.status = head.status
        if head.status == 403:
            self.exit = ConnectExit.DENIED
        elif head.status in (502, 503, 504):
            self.exit = ConnectExit.UPSTREAM_FAILED


class BadTarget(TunnelError):
    exit = ConnectExit.LOCAL


def authority(host: str, port: str | int) -> str:
    """`host:port` for the CONNECT line, refusing anything that could inject a header."""
    try:
        number = parse_port(str(port))  # an int too: str(-22) is refused like "-22"
    except BadDestination as e:
        raise BadTarget(str(e)) from None
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        if not _IPV6.fullmatch(bare):
            raise BadTarget(f"bad host {host!r}")
        return f"[{bare}]:{number}"
    if not _HOSTNAME.fullmatch(bare):
        raise BadTarget(f"bad host {host!r}")
    return f"{bare}:{number}"


def _request(target: str, credentials: str | None) -> bytes:
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: proxyd/{__version__}"]
    if credentials is not None:
        lines.append(f"Proxy-Authorization: {credentials}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _read_head(sock: socket.socket, buffer: bytes) -> tuple[ResponseHead, bytes]:
    while True:
        found = split_head(buffer)
        if found is not None:
            head, rest = found
            return parse_head(head), rest
        chunk = sock.recv(65536)
        if not chunk:
            raise BadResponse("the proxy closed the connection without answering")
        buffer += chunk


def _read_body(sock: socket.socket, head: ResponseHead, rest: bytes) -> tuple[bytes, bool]:
    """The error body (bounded) and whether the connection can carry the next attempt."""
    length = head.content_length()
    reusable = head.keeps_alive() and length is not None and length <= MAX_ERROR_BODY
    want = MAX_ERROR_BODY if length is None else min(length, MAX_ERROR_BODY)
    body = rest
    while len(body) < want:
        try:
            chunk = sock.recv(min(65536, want - len(body)))
        except OSError:
            return body, False
        if not chunk:
            return body, False
        body += chunk
    return body[:want], reusable and len(body) == length


def open_tunnel(
    proxy: ProxyEndpoint, target: str, client: DigestClient, timeout: float
) -> tuple[socket.socket, bytes]:
    """The connected socket after a 2xx to CONNECT, and whatever the destination already
    sent after the proxy's head (a speak-first server's banner)."""
    sock: socket.socket | None = None
    try:
        for _ in range(MAX_ATTEMPTS):
            if sock is None:
                sock = _connect(proxy, timeout)
            credentials = client.authorization("CONNECT", target)
            sent_nonce = client.nonce if credentials is not None else None
            try:
                sock.sendall(_request(target, credentials))
                head, rest = _read_head(sock, b"")
            except OSError as e:
                raise ProxyUnreachable(f"proxy {proxy.hostport}: {e.strerror or e}") from None
            except BadResponse as e:
                raise ProxyUnreachable(f"proxy {proxy.hostport}: {e}") from None
            if 200 <= head.status < 300:
                sock.settimeout(None)
                tunnel, sock = sock, None
                return tunnel, rest
            body, reusable = _read_body(sock, head, rest)
            if head.status != 407:
                raise Refused(head, body)
            try:
                client.challenged(head.get_all("Proxy-Authenticate"), sent_nonce)
            except CredentialsRejected as e:
                raise AuthFailed(f"{e} (407: {summary(head, body)})") from None
            except ChallengeError as e:
                raise AuthFailed(str(e)) from None
            if not reusable:
                sock.close()
                sock = None
        raise AuthFailed("the proxy kept answering 407 (stale nonces); giving up")
    finally:
        if sock is not None:
            sock.close()


def _connect(proxy: ProxyEndpoint, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as e:
        raise ProxyUnreachable(f"can't reach proxy {proxy.hostport}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
