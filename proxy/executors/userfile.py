"""The users file as the running proxy sees it: loaded once, re-read when it changes.

A stat every `interval` seconds at most; a broken file after an edit is logged and the
users already loaded keep working (an operator's typo must not lock everyone out).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..digest import UserSecrets
from ..errors import ConfigError
from ..users import parse_users

log = logging.getLogger("proxyd.users")


def read_users(path: Path) -> dict[str, UserSecrets]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from e
    return parse_users(text, str(path))


class UserFile:
    def __init__(
        self,
        path: Path,
        realm: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.realm = realm
        self.interval = interval
        self.clock = clock
        self._users: dict[str, UserSecrets] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.on_reload: Callable[[bool], None] = lambda ok: None  # metrics hook
        self.reload(strict=True)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self, strict: bool = False) -> bool:
        """Re-read the file; True if the users changed. strict: raise instead of logging."""
        stamp = self._file_stamp()
        try:
            users = read_users(self.path)
        except ConfigError as e:
            if strict:
                raise
            log.error("users file not reloaded, keeping %d users: %s", len(self._users), e)
            self._stamp = stamp  # don't re-log the same broken file every second
            return False
        other = sorted(u.name for u in users.values() if u.realm != self.realm)
        if other:
            log.warning(
                "%s: %d user(s) have another realm than %r and cannot log in: %s",
                self.path,
                len(other),
                self.realm,
                ", ".join(other),
            )
        self._users = {n: u for n, u in users.items() if u.realm == self.realm}
        self._stamp = stamp
        return True

    def maybe_reload(self) -> None:
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.interval
        if self._file_stamp() != self._stamp:
            ok = self.reload()
            self.on_reload(ok)
            if ok:
                log.info("users file reloaded: %d users", len(self._users))

    def lookup(self, name: str) -> UserSecrets | None:
        self.maybe_reload()
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)
