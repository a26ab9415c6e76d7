"""`proxyd serve`: one proxy process, or a supervisor and `--workers N` of them."""

from __future__ import annotations

import argparse
import asyncio

from proxy.cli.main import configure_logging
from proxy.core import config
from proxy.core.errors import ConfigError
from proxy.service.workers import WorkerRole, parse_workers, supervise


def workers_count(text: str) -> int:
    try:
        return parse_workers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def worker_role(text: str) -> WorkerRole:
    try:
        return WorkerRole.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    configure_logging()
    role: WorkerRole | None = args.worker_of
    cfg = config.load(args.config)
    if role is not None:
        role.follow_parent()
        cfg = role.apply(cfg)
    # Imported here: mitmproxy takes ~0.5 s to import, which no other subcommand should pay.
    from proxy.service.runtime import build_runtime

    try:
        runtime = build_runtime(cfg, first_start=True)
    except (OSError, ValueError) as e:
        raise ConfigError([str(e)]) from e
    if role is None and args.workers > 1:
        # The supervisor: checked config, nonce secret created once, before any worker.
        return supervise(args.config, runtime, args.workers, args.first_run_hint)
    from proxy.engine.master import serve

    return asyncio.run(serve(args.config, runtime, args.first_run_hint, role))
