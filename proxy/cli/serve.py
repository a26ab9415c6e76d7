"""`proxyd serve`."""

from __future__ import annotations

import argparse
import asyncio

from .. import config
from ..errors import ConfigError
from .main import configure_logging


def run(args: argparse.Namespace) -> int:
    configure_logging()
    cfg = config.load(args.config)
    # Imported here: mitmproxy takes ~0.5 s to import, which no other subcommand should pay.
    from ..master import serve
    from ..runtime import build_runtime

    try:
        runtime = build_runtime(cfg)
    except (OSError, ValueError) as e:
        raise ConfigError([str(e)]) from e
    return asyncio.run(serve(args.config, runtime, args.first_run_hint))
