"""`proxyd relay`: a local, auth-free proxy for tools that can't answer Digest."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys

from proxy.client.credentials import (
    ProxyEndpoint,
    parse_proxy_url,
    proxy_from,
    redact_url,
    resolve,
)
from proxy.client.pacroute import PacRouter, fetch
from proxy.client.relay import Relay, Router
from proxy.client.upstream import UpstreamProxy
from proxy.core.digest_client import DigestClient
from proxy.core.errors import ProxydError

HELP = "local proxy without auth that forwards through a Digest proxy (for pip, wget, …)"
log = logging.getLogger("proxyd.relay")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP
    parser.add_argument(
        "--listen",
        default="127.0.0.1:3129",
        metavar="HOST:PORT",
        help="where the relay listens (default 127.0.0.1:3129; loopback only "
        "unless --allow-remote)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --listen: anyone reaching it uses your account",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="the Digest proxy, http://[USER@]HOST:PORT (default: $PROXYD_PROXY)",
    )
    parser.add_argument("--user", metavar="NAME")
    parser.add_argument(
        "--credentials",
        metavar="FILE",
        help="NAME:PASSWORD lines, mode 0600 (default ~/.config/proxyd/credentials)",
    )
    parser.add_argument(
        "--pac",
        metavar="URL",
        help="send through the upstream only what this PAC proxies; the rest DIRECT",
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.set_defaults(func=run)


def listen_address(text: str, allow_remote: bool) -> tuple[str, int]:
    try:
        # Port 0 (any free port) is fine to listen on, though not in a proxy URL.
        endpoint: ProxyEndpoint = parse_proxy_url(
            text, from_command_line=True, allow_zero_port=True
        )
    except ProxydError as e:
        raise ProxydError(f"bad --listen {redact_url(text)!r}: {e}") from None
    host = endpoint.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        if not allow_remote:
            raise ProxydError(
                f"--listen {text}: not a loopback address; the relay needs no password, so "
                "anyone who reaches it would use your account. Add --allow-remote to mean it."
            )
        print(
            f"proxyd relay: warning: listening on {host}: everyone who can reach it uses "
            "the upstream proxy as you",
            file=sys.stderr,
        )
    return host, endpoint.port


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s proxyd relay: %(message)s",
    )
    host, port = listen_address(args.listen, args.allow_remote)
    endpoint = proxy_from(args.upstream, os.environ)
    credentials = resolve(endpoint, args.user, args.credentials, os.environ)
    router: Router = lambda url, host: True  # noqa: E731 - without a PAC, all goes upstream
    pac: PacRouter | None = None
    if args.pac:
        pac = PacRouter(fetch(args.pac, args.timeout))
        router = pac
    upstream = UpstreamProxy(
        endpoint, DigestClient(credentials.user, credentials.password), args.timeout
    )
    relay = Relay(upstream, router, args.timeout)
    try:
        return asyncio.run(_serve(relay, host, port, endpoint))
    finally:
        if pac is not None:
            pac.close()


async def _serve(relay: Relay, host: str, port: int, endpoint: ProxyEndpoint) -> int:
    try:
        server = await asyncio.start_server(relay.handle, host, port, backlog=1024)
    except OSError as e:
        raise ProxydError(f"can't listen on {host}:{port}: {e.strerror or e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(
        f"proxyd relay: listening on {bound[0]}:{bound[1]}, upstream {endpoint.hostport}",
        file=sys.stderr,
        flush=True,
    )
    async with server:
        await stop.wait()
    await relay.upstream.close()
    return 0
