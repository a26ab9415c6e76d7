"""The last-use file (core/lastuse.py): merged under a lock, written atomically 0600, so
several workers can each add what they saw and none loses another's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from proxy.core.lastuse import Uses, format_uses, merge, parse_uses
from proxy.effects.files import atomic_write, locked


class LastUseFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> Uses:
        """{} when there is no file yet; OSError or ValueError (naming the file) else."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return parse_uses(data)
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None

    def add(self, uses: Mapping[tuple[str, str], float]) -> str | None:
        """Merge `uses` into the file. A file that cannot be read as one is replaced, and
        said (the message returned, for the caller to log): last use is a hint, never a
        reason to stop."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem = None
        with locked(self.path):
            try:
                before = self.read()
            except ValueError as e:
                before, problem = {}, f"{e}: replaced"
            atomic_write(self.path, format_uses(merge(before, uses)))
        return problem
