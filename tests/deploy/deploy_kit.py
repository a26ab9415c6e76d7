"""Helpers shared by the deployment tests: finding tools, reading the deploy files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from harness import require_tool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """An executable from this venv (pip-installed tools such as hadolint, which are not on
    PATH when pytest runs as .venv/bin/pytest), else from PATH, else skip (fail under CI)."""
    local = VENV_BIN / name
    if local.is_file():
        return str(local)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    return str(require_tool(name))


def proxyd_argv_ok(argv: list[str]) -> str | None:
    """None if `argv` (after the `proxyd` program name) parses in proxyd's own argparse
    tree, else why not. The tree is the one place every subcommand and option is defined."""
    import contextlib
    import io

    from proxy.cli.main import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return f"proxyd {' '.join(argv)}: refused by the CLI (exit {e.code}): {err.getvalue()}"
    return None


def uncommented_tls(config_text: str) -> tuple[str, dict[str, Any]]:
    """The shipped container config with its commented-out TLS keys turned on: the
    `# tls_listen:` line and the `# tls:` block right under it lose their "# ". Returns the
    new text and those keys as parsed, so a test checks what an operator would get."""
    lines = config_text.splitlines(keepends=True)
    starts = [n for n, line in enumerate(lines) if line.startswith("# tls_listen:")]
    assert len(starts) == 1, "one commented-out `# tls_listen:` line"
    start = end = starts[0]
    while end < len(lines) and lines[end].startswith("# "):
        end += 1
    block = [line[2:] for line in lines[start:end]]
    keys = yaml.safe_load("".join(block))
    assert isinstance(keys, dict) and set(keys) == {"tls_listen", "tls"}, keys
    return "".join(lines[:start] + block + lines[end:]), keys
