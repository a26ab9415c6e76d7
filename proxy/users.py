"""The users file format, sans-IO: parse and format, names and passwords checked.

One line per user, `name:realm:md5-ha1:sha256-ha1`, HA1 = H(name:realm:password) in hex.
It is a superset of Apache's htdigest format (`name:realm:md5-ha1`), so an htdigest file
reads as a users file whose users can do MD5 only. HA1 values are password equivalents for
that realm: the file is written 0600 and never logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from passlib.hash import htdigest

from .digest import UserSecrets, ha1
from .errors import ConfigError

HEADER = "# proxyd users file: name:realm:md5-ha1:sha256-ha1 (written by `proxyd users`)\n"
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HEX = {"MD5": re.compile(r"^[0-9a-f]{32}$"), "SHA-256": re.compile(r"^[0-9a-f]{64}$")}
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class BadUserInput(ValueError):
    """A user name or password the operator typed is refused."""


def check_username(name: str) -> str:
    if not _USERNAME_RE.match(name):
        raise BadUserInput(
            f"invalid user name {name!r}: 1-64 of letters, digits and ._@-, "
            "starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise BadUserInput(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadUserInput(f"password too long: at most {MAX_PASSWORD} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise BadUserInput("password contains control characters (a stray newline?)")
    return password


def make_user(name: str, realm: str, password: str) -> UserSecrets:
    check_username(name)
    check_password(password)
    return UserSecrets(
        name=name,
        realm=realm,
        ha1={
            # passlib's htdigest is exactly Apache's HA1; SHA-256 is the same shape.
            "MD5": htdigest.hash(password, user=name, realm=realm),
            "SHA-256": ha1("SHA-256", name, realm, password),
        },
    )


def parse_users(text: str, filename: str) -> dict[str, UserSecrets]:
    """All users of a file; ConfigError listing every bad line (no line is half-read)."""
    users: dict[str, UserSecrets] = {}
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{filename}:{number}"
        fields = line.rstrip("\r").split(":")
        if len(fields) not in (3, 4):
            errors.append(f"{where}: expected name:realm:md5-ha1[:sha256-ha1]")
            continue
        name, realm, *hashes = fields
        if not _USERNAME_RE.match(name):
            errors.append(f"{where}: invalid user name {name!r}")
            continue
        secrets: dict[str, str] = {}
        for algorithm, value in zip(("MD5", "SHA-256"), hashes, strict=False):
            value = value.lower()
            if value and not _HEX[algorithm].match(value):
                errors.append(f"{where}: user {name!r}: malformed {algorithm} hash")
            elif value:
                secrets[algorithm] = value
        if not secrets:
            errors.append(f"{where}: user {name!r} has no hash")
        if name in users:
            errors.append(f"{where}: user {name!r} listed twice")
        users[name] = UserSecrets(name=name, realm=realm, ha1=secrets)
    if errors:
        raise ConfigError(errors)
    return users


def format_users(users: Iterable[UserSecrets]) -> str:
    lines = [HEADER]
    for u in sorted(users, key=lambda u: u.name):
        lines.append(f"{u.name}:{u.realm}:{u.ha1.get('MD5', '')}:{u.ha1.get('SHA-256', '')}\n")
    return "".join(lines)
