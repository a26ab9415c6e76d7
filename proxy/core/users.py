"""The users file format, sans-IO: parse and format, names and passwords checked.

One line per user, `name:realm:md5-ha1:sha256-ha1[:expires[:note[:groups]]]`, HA1 =
H(name:realm:password) in hex, expires an ISO date (the first day the user is refused),
the note percent-encoded and groups comma-separated. A `!` before the MD5 field locks the
user (as in /etc/shadow) until a new password is set: proxyd locks a user whose password
crossed the wire in clear.
It is a superset of Apache's htdigest format (`name:realm:md5-ha1`), so an htdigest file
reads as a users file whose users can do MD5 only. HA1 values are password equivalents for
that realm: the file is written 0600 and never logged.
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Iterable

from passlib.hash import htdigest

from proxy.core.digest import UserSecrets, ha1
from proxy.core.errors import ConfigError

HEADER = (
    "# proxyd users file: name:realm:md5-ha1:sha256-ha1[:expires[:note[:groups]]]"
    " (written by `proxyd users`)\n"
)


def written_by_proxyd(text: str) -> bool:
    """Whether `text` is a users file `proxyd users` wrote (it always starts with HEADER):
    such a file with no users in it is meant, not a truncation or a half-done swap."""
    return text.startswith(HEADER)


# Percent-encode what would break the line format (':' '%', controls) and non-ASCII.
_NOTE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ":%")
MAX_NOTE = 500
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HEX = {"MD5": re.compile(r"^[0-9a-f]{32}$"), "SHA-256": re.compile(r"^[0-9a-f]{64}$")}
LOCK_MARK = "!"
GROUP_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # also what config's `groups:` allows
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class BadUserInput(ValueError):
    """A user name or password the operator typed is refused."""


def check_username(name: str) -> str:
    if not USERNAME_RE.fullmatch(name):
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


def check_note(note: str) -> str:
    if len(note) > MAX_NOTE:
        raise BadUserInput(f"note too long: at most {MAX_NOTE} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in note):
        raise BadUserInput("note contains control characters")
    return note


def parse_date(text: str) -> float:
    """`2027-03-31` -> the instant that day starts (UTC): the first moment it is refused."""
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise BadUserInput(f"not a date like 2027-03-31: {text!r}") from None
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()


def format_date(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).date().isoformat()


def make_user(
    name: str, realm: str, password: str, expires: float | None = None, note: str = ""
) -> UserSecrets:
    check_username(name)
    check_password(password)
    return UserSecrets(
        expires=expires,
        note=check_note(note),
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
        if not 3 <= len(fields) <= 7:
            errors.append(
                f"{where}: expected name:realm:md5-ha1[:sha256-ha1[:expires[:note[:groups]]]]"
            )
            continue
        name, realm, *hashes = fields[:4]
        expires: float | None = None
        if len(fields) > 4 and fields[4]:
            try:
                expires = parse_date(fields[4])
            except BadUserInput as e:
                errors.append(f"{where}: user {name!r}: expires: {e}")
        note = urllib.parse.unquote(fields[5]) if len(fields) > 5 else ""
        groups = tuple(g for g in fields[6].split(",") if g) if len(fields) > 6 else ()
        for group in groups:
            if not GROUP_RE.fullmatch(group):
                errors.append(f"{where}: user {name!r}: invalid group name {group!r}")
        if not USERNAME_RE.fullmatch(name):
            errors.append(f"{where}: invalid user name {name!r}")
            continue
        locked = hashes[0].startswith(LOCK_MARK)
        hashes[0] = hashes[0].removeprefix(LOCK_MARK)
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
        users[name] = UserSecrets(name, realm, secrets, expires, note, locked, groups)
    if errors:
        raise ConfigError(errors)
    return users


def format_users(users: Iterable[UserSecrets]) -> str:
    lines = [HEADER]
    for u in sorted(users, key=lambda u: u.name):
        md5 = (LOCK_MARK if u.locked else "") + u.ha1.get("MD5", "")
        fields = [u.name, u.realm, md5, u.ha1.get("SHA-256", "")]
        if u.expires is not None or u.note or u.groups:
            fields.append(format_date(u.expires) if u.expires is not None else "")
        if u.note or u.groups:
            fields.append(urllib.parse.quote(u.note, safe=_NOTE_SAFE))
        if u.groups:
            fields.append(",".join(u.groups))
        lines.append(":".join(fields) + "\n")
    return "".join(lines)


def format_htdigest(users: Iterable[UserSecrets]) -> str:
    """Apache htdigest lines (`name:realm:md5-ha1`), which Squid's digest_file_auth -c
    reads. Locked users are left out: htdigest has no lock, so they would be unlocked."""
    return "".join(
        f"{u.name}:{u.realm}:{u.ha1['MD5']}\n"
        for u in sorted(users, key=lambda u: u.name)
        if "MD5" in u.ha1 and not u.locked
    )
