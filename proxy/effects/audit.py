"""The audit log file: one JSON line appended per grant change (core/audit.py)."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path


def operator() -> str:
    """Who runs this command: the sudo caller, else the login name, else the uid's name."""
    for variable in ("SUDO_USER", "LOGNAME"):
        if value := os.environ.get(variable, "").strip():
            # Bytes that are not UTF-8 arrive as surrogates: record them replaced.
            return os.fsencode(value).decode("utf-8", "replace")
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, str]) -> None:
        """Append one line (O_APPEND: lines from several processes never interleave)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
