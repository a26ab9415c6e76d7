"""`proxyd connect HOST PORT`: an ssh ProxyCommand through a Digest proxy.

ssh runs it once per connection, so it imports nothing of the server (no mitmproxy, no
YAML, no passlib): `proxyd connect` is dispatched before the rest of the CLI is built.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from proxy.client.credentials import CredentialsError, proxy_from, resolve
from proxy.client.tunnel import ConnectExit, TunnelError, authority, open_tunnel
from proxy.core.digest_client import DigestClient
from proxy.core.errors import ProxydError
from proxy.effects.stdio import relay_stdio

HELP = "tunnel stdin/stdout through a Digest proxy (ssh ProxyCommand)"
EPILOG = """\
password: PROXYD_PASSWORD, or NAME:PASSWORD in the credentials file (mode 0600).
exit status: 0 ok, 1 local error, 2 usage, 4 proxy unreachable, 5 authentication failed,
6 destination denied (403), 7 proxy could not reach the destination, 8 other refusal.
example: ssh -o ProxyCommand="proxyd connect --proxy http://proxy:3128 %h %p" user@host"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("host")
    parser.add_argument("port")
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="http://[USER@]HOST:PORT (default: $PROXYD_PROXY, "
        "then $https_proxy/$HTTPS_PROXY/$http_proxy/$HTTP_PROXY)",
    )
    parser.add_argument("--user", metavar="NAME", help="proxy user (default: from the URL)")
    parser.add_argument(
        "--credentials",
        metavar="FILE",
        help="NAME:PASSWORD lines, mode 0600 (default: ~/.config/proxyd/credentials if present)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="for reaching the proxy and its answer (default 30)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="say what was negotiated")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        proxy = proxy_from(args.proxy, os.environ)
        credentials = resolve(proxy, args.user, args.credentials, os.environ)
        target = authority(args.host, args.port)
        client = DigestClient(credentials.user, credentials.password)
        sock, early = open_tunnel(proxy, target, client, args.timeout)
    except TunnelError as e:
        return _fail(str(e), e.exit)
    except (CredentialsError, ProxydError) as e:
        return _fail(str(e), ConnectExit.LOCAL)
    if args.verbose:
        how = f"Digest {client.algorithm}" if client.algorithm else "no authentication"
        print(f"proxyd connect: tunnel to {target} via {proxy.hostport} ({how})", file=sys.stderr)
    try:
        if early:
            os.write(1, early)
        relay_stdio(sock)
    except BrokenPipeError:
        pass  # ssh went away first: nothing left to deliver
    except OSError as e:
        return _fail(f"tunnel to {target}: {e.strerror or e}", ConnectExit.REFUSED)
    return ConnectExit.OK


def _fail(message: str, status: ConnectExit) -> int:
    print(f"proxyd connect: {message}", file=sys.stderr)
    return int(status)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="proxyd connect")
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
