"""`proxyd` entry point: one argparse tree, dispatch, and one place that maps errors to exits."""

from __future__ import annotations

import argparse
import enum
import re
import sys
from collections.abc import Sequence

from proxy.core.errors import ProxydError


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1  # expected failure: bad config, bad input, refused
    USAGE = 2  # argparse's own
    BUG = 3
    INTERRUPTED = 130


def method_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{1,20}", text):
        raise argparse.ArgumentTypeError(f"not a method such as CONNECT or GET: {text!r}")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    from proxy.cli import check, connect, grants, jump, relay, serve, users
    from proxy.core.config import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(
        prog="proxyd", description="Digest-authenticating forward proxy with CIDR zones."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument(
        "--workers",
        type=serve.workers_count,
        default=1,
        metavar="N",
        help="proxy processes sharing the port (SO_REUSEPORT); about one per core",
    )
    p.add_argument("--first-run-hint", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-of", type=serve.worker_role, help=argparse.SUPPRESS)
    p.set_defaults(func=serve.run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=check.run_check)

    p = sub.add_parser("explain", help="show the decision for a source, destination and user")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--from", dest="source", required=True, metavar="IP")
    p.add_argument("--to", dest="target", required=True, metavar="HOST:PORT")
    p.add_argument("--user", metavar="NAME")
    p.add_argument(
        "--method",
        default="CONNECT",
        type=method_name,
        help="the request's method (default CONNECT; GET, ...)",
    )
    p.set_defaults(func=check.run_explain)

    p = sub.add_parser("reload", help="make the running proxy re-read its config (SIGHUP)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.set_defaults(func=check.run_reload)

    p = sub.add_parser("pac", help="print the proxy.pac generated from the policy")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.set_defaults(func=check.run_pac)

    users.add_parser(sub)
    grants.add_parser(sub)
    jump.add_parser(sub)
    connect.configure(sub.add_parser("connect", help=connect.HELP))
    relay.configure(sub.add_parser("relay", help=relay.HELP))
    return parser


def configure_logging() -> None:
    import logging

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["connect"]:
        # ssh starts `proxyd connect` for every connection: skip the server's imports.
        from proxy.cli import connect

        return connect.main(arguments[1:])
    import logging

    from proxy.core.jump import JumpError
    from proxy.core.users import BadUserInput

    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        return int(args.func(args))
    except (ProxydError, BadUserInput, JumpError) as e:
        print(f"proxyd: error: {e}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        return Exit.ERROR
    except Exception:
        logging.getLogger("proxyd").exception("proxyd: internal error (a bug, please report)")
        return Exit.BUG


def entry() -> None:
    sys.exit(main())
