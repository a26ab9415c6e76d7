"""Atomic, private file writes and an advisory lock for read-modify-write of shared files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

SECRET_BYTES = 32


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` so readers see the old file or the new one, never half; mode from birth.

    The temporary file is created 0600 by mkstemp in the same folder (rename is only
    atomic within a file system), fsynced, renamed over the target, then the folder is
    fsynced so the rename survives a crash.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path.lock` so two `proxyd users` runs don't lose an edit."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_if_missing(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, mode 0600, unless it exists.

    Replicas may start at once against one shared folder: the file is written to a
    temporary file and hard-linked into place, which fails if another process won the race,
    and then everyone reads the winner's file.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_or_create_secret(path: Path) -> bytes:
    """The nonce secret; created with random bytes, mode 0600, if it does not exist."""
    create_if_missing(path, secrets.token_bytes(SECRET_BYTES))
    data = path.read_bytes()
    if len(data) < 16:
        raise ValueError(f"{path}: nonce secret too short ({len(data)} bytes, need 16 or more)")
    return data
