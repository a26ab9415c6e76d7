"""Where access log lines go: a file (reopened on SIGUSR1 for logrotate) or stdout."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO


class LogFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: stdout
        self._stream: TextIO = self._open()

    def _open(self) -> TextIO:
        if self.path is None:
            return sys.stdout
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def write(self, line: str) -> None:
        self._stream.write(line + "\n")
        if self.path is None:
            self._stream.flush()

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the same path."""
        if self.path is None:
            return
        old, self._stream = self._stream, self._open()
        old.close()

    def close(self) -> None:
        if self.path is not None:
            self._stream.close()
