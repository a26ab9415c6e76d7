"""`python -m proxy`: the `proxyd` command (how the supervisor starts its workers)."""

from proxy.cli.main import entry

entry()
