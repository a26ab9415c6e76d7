"""The users file as the running proxy sees it: loaded once, re-read when it changes.

A stat every `interval` seconds at most. Whatever goes wrong with the file while serving
(a broken edit, a permission error, a symlink loop, the file gone, dangling or truncated
to nothing, as in a half-done kubelet `..data` swap) is logged as an error once and
counted, and the users already loaded keep working: an operator's slip must neither lock
everyone out nor let anyone in. Only a file that `proxyd users` wrote may hold no users.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from proxy.core.digest import UserSecrets
from proxy.core.errors import ConfigError
from proxy.core.users import HEADER, format_users, parse_users, written_by_proxyd
from proxy.effects.files import atomic_write, create_if_missing, locked

log = logging.getLogger("proxyd.users")

# What identifies one version of the file (inode, mtime, ctime, size: a chmod that makes it
# readable again changes ctime), or the text of the error that stat gave.
Stamp = tuple[int, int, int, int] | str


def read_users(path: Path) -> dict[str, UserSecrets]:
    """The users in `path`, or none if it does not exist (for `proxyd users`, which
    creates it); ConfigError if it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from e
    return parse_users(text, str(path))


def edit_users(
    path: Path, change: Callable[[dict[str, UserSecrets]], None]
) -> dict[str, UserSecrets]:
    """Read, change and rewrite the users file under its lock; nothing written on error.
    `proxyd users` edits it so, and the proxy itself when it locks a user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        users = read_users(path)
        change(users)
        atomic_write(path, format_users(users.values()).encode("utf-8"))
    return users


def lock_user(path: Path, name: str) -> bool:
    """Lock `name` until a new password is set; False if there is no such user or it
    was locked already."""
    changed = False

    def change(users: dict[str, UserSecrets]) -> None:
        nonlocal changed
        user = users.get(name)
        if user is not None and not user.locked:
            users[name] = dataclasses.replace(user, locked=True)
            changed = True

    edit_users(path, change)
    return changed


def create_users_file(path: Path) -> None:
    """At a first start: an empty users file, as `proxyd users` writes it, so that the file
    exists from then on (a reload to a config whose users file is missing is refused)."""
    create_if_missing(path, HEADER.encode())


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError([f"{path}: does not exist"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 ({e.reason} at byte {e.start})"]) from None


class UserFile:
    def __init__(
        self,
        path: Path,
        realm: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Loads the file now; ConfigError if it is missing, unreadable or broken."""
        self.path = path
        self.realm = realm
        self.interval = interval
        self.clock = clock
        self._users: dict[str, UserSecrets] = {}
        self._stamp: Stamp | None = None
        self._next_check = 0.0
        self.on_reload: Callable[[bool], None] = lambda ok: None  # metrics hook
        self._load(_stamp(self.path))

    def _load(self, stamp: Stamp) -> None:
        """Replace the users with the file's; ConfigError (users unchanged) if it can't be
        read or parsed, or if it lost every user without `proxyd users` having written it."""
        self._stamp = stamp  # a failure is reported once, until the file changes again
        text = _read_text(self.path)
        users = parse_users(text, str(self.path))
        if not users and self._users and not written_by_proxyd(text):
            raise ConfigError(
                [
                    f"{self.path}: no users in it and not written by `proxyd users` "
                    "(truncated, or replaced half-way?); use `proxyd users remove` to "
                    "remove users"
                ]
            )
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

    def maybe_reload(self) -> None:
        """Re-read the file if it changed since the last look (at most once per interval)."""
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.interval
        self.check_now()

    def check_now(self) -> None:
        """Re-read the file if it changed, now (the revocation sweep looks more often)."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        try:
            self._load(stamp)
        except ConfigError as e:
            log.error("users file not reloaded, keeping %d users: %s", len(self._users), e)
            self.on_reload(False)
            return
        self.on_reload(True)
        log.info("users file reloaded: %d users", len(self._users))

    def lookup(self, name: str) -> UserSecrets | None:
        self.maybe_reload()
        return self._users.get(name)

    def all(self) -> list[UserSecrets]:
        self.maybe_reload()
        return list(self._users.values())

    def __len__(self) -> int:
        return len(self._users)
