"""The users file format, sans-IO: parse and format, names and passwords checked.

One line per user,
`name:realm:md5-ha1:sha256-ha1[:expires[:note[:groups[:owner:created_by:created_at]]]]`,
HA1 = H(name:realm:password) in hex, expires an ISO date (the first day the user is
refused), note (the reason), owner and created_by percent-encoded, groups comma-separated,
created_at an ISO 8601 instant in the basic format (20261205T060000Z: no colons).
A `!` before the MD5 field locks the user (as in /etc/shadow) until a new password is set:
proxyd locks a user whose password crossed the wire in clear.
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

LINE_FORMAT = (
    "name:realm:md5-ha1[:sha256-ha1[:expires[:note[:groups[:owner:created_by:created_at]]]]]"
)
HEADER_START = "# proxyd users file: "
HEADER = f"{HEADER_START}{LINE_FORMAT} (written by `proxyd users`)\n"


def written_by_proxyd(text: str) -> bool:
    """Whether `text` is a users file `proxyd users` wrote (it always starts with the
    header's first words; older versions wrote a shorter format after them): such a file
    with no users in it is meant, not a truncation or a half-done swap."""
    return text.startswith(HEADER_START)


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
    if any(0xD800 <= ord(c) <= 0xDFFF for c in note):  # argv's undecodable bytes
        raise BadUserInput("note is not valid UTF-8")
    return note


def check_owner(owner: str | None, default: str) -> str:
    """Who a grant is for (--owner), checked like a note; by default `default` (the
    person it is granted to, or the owner on record)."""
    if owner is None or not owner.strip():
        return default
    try:
        return check_note(owner.strip())
    except BadUserInput as e:
        raise BadUserInput(f"owner: {e}") from None


def parse_date(text: str) -> float:
    """`2027-03-31` -> the instant that day starts (UTC): the first moment it is refused."""
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise BadUserInput(f"not a date like 2027-03-31: {text!r}") from None
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()


def format_date(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).date().isoformat()


_INSTANT = "%Y%m%dT%H%M%SZ"


def format_instant(moment: float) -> str:
    """An instant for the users file: ISO 8601 basic format, UTC, whole seconds."""
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime(_INSTANT)


def parse_instant(text: str) -> float:
    try:
        when = datetime.datetime.strptime(text, _INSTANT).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise BadUserInput(f"not an instant like 20261205T060000Z: {text!r}") from None
    return when.timestamp()


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe=_NOTE_SAFE)


def make_user(
    name: str, realm: str, password: str, expires: float | None = None, note: str = ""
) -> UserSecrets:
    """A user with a new password; the grant's other facts are the caller's to set."""
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
        if not 3 <= len(fields) <= 10 or len(fields) in (8, 9):
            errors.append(f"{where}: expected {LINE_FORMAT}")
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
        owner = created_by = ""
        created_at: float | None = None
        if len(fields) == 10:
            owner, created_by = (urllib.parse.unquote(f) for f in fields[7:9])
            try:
                created_at = parse_instant(fields[9]) if fields[9] else None
            except BadUserInput as e:
                errors.append(f"{where}: user {name!r}: created_at: {e}")
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
        users[name] = UserSecrets(
            name, realm, secrets, expires, note, locked, groups, owner, created_by, created_at
        )
    if errors:
        raise ConfigError(errors)
    return users


def format_users(users: Iterable[UserSecrets]) -> str:
    lines = [HEADER]
    for u in sorted(users, key=lambda u: u.name):
        md5 = (LOCK_MARK if u.locked else "") + u.ha1.get("MD5", "")
        fields = [u.name, u.realm, md5, u.ha1.get("SHA-256", "")]
        made = (
            _quote(u.owner),
            _quote(u.created_by),
            format_instant(u.created_at) if u.created_at is not None else "",
        )
        optional = [
            format_date(u.expires) if u.expires is not None else "",
            _quote(u.note),
            ",".join(u.groups),
            *made,
        ]
        if any(made):
            fields.extend(optional)
        else:  # the shortest line that says it all (an htdigest line where it can be)
            while optional and not optional[-1]:
                optional.pop()
            fields.extend(optional[:3])
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
