"""Where the client helpers get the proxy's address and the partner's credentials.

The password never has to be on a command line (other local users see those in `ps`): it
comes from `PROXYD_PASSWORD` or from a credentials file that only its owner can read.
"""

from __future__ import annotations

import errno
import os
import stat
import string
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from proxy.core.addresses import url_port
from proxy.core.errors import BadDestination, ProxydError

PASSWORD_ENV = "PROXYD_PASSWORD"  # noqa: S105 - a variable name
PROXY_ENVS = ("PROXYD_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")
DEFAULT_PROXY_PORT = 3128
MAX_CREDENTIALS_FILE = 64 * 1024


class CredentialsError(ProxydError):
    """No usable proxy address or credentials; the message says what to do."""


# RFC 3986 userinfo: unreserved, pct-encoded, sub-delims and ":". Anything else in a
# password ("/", "?", "#", "[", "]", "@", a space, non-ASCII) makes urllib end the host
# early, and pieces of the password would come back as a host, a port or an error text.
_USERINFO_CHARS = frozenset(string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:")
REDACTED = "***"


def _password_span(url: str) -> slice | None:
    """Where a password can be in `url`: after the user's ":" up to the last "@". Wider
    than urllib's reading on purpose (see _USERINFO_CHARS): redaction errs on hiding."""
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    at = url.rfind("@")
    colon = url.find(":", start, at) if at > start else -1
    return slice(colon + 1, at) if colon >= 0 else None


def redact_url(url: str) -> str:
    """`url` fit for a message or a log, its password (if any) replaced by `***`. The one
    place that knows where a URL keeps its password: every message showing a URL uses it."""
    span = _password_span(url)
    return url if span is None else f"{url[: span.start]}{REDACTED}{url[span.stop :]}"


def scrub_password(text: str, url: str) -> str:
    """`text` (a parser's or fetcher's error about `url`) with the URL's password, as
    written and percent-decoded, replaced by `***`: urllib quotes the netloc in some."""
    span = _password_span(url)
    if span is None:
        return text
    for secret in sorted({url[span], unquote(url[span])}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class ProxyEndpoint(NamedTuple):
    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # str() too: a log line or traceback must not show it
        password = None if self.password is None else REDACTED
        return (
            f"ProxyEndpoint(host={self.host!r}, port={self.port!r}, user={self.user!r}, "
            f"password={password!r})"
        )


class Credentials(NamedTuple):
    user: str
    password: str

    def __repr__(self) -> str:  # str() too
        return f"Credentials(user={self.user!r}, password={REDACTED!r})"


def parse_proxy_url(
    url: str, *, from_command_line: bool, allow_zero_port: bool = False
) -> ProxyEndpoint:
    """`http://[user@]host[:port]`; a password in it is refused on the command line.
    `allow_zero_port` is for `relay --listen`, where port 0 means any free port.
    Messages show the URL redacted: one from the environment may carry the password."""
    shown = redact_url(url)
    span = _password_span(url)
    if span is not None and from_command_line:
        raise CredentialsError(
            "a password in --proxy would be visible to other users in ps: "
            f"set {PASSWORD_ENV} or use a credentials file (mode 0600)"
        )
    if span is not None and not set(url[span]) <= _USERINFO_CHARS:
        raise CredentialsError(
            f"bad proxy URL {shown!r}: percent-encode the password (only letters, digits "
            "and -._~!$&'()*+,;=:% may stand as they are)"
        )
    text = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(text)
        port = url_port(parts, DEFAULT_PROXY_PORT, allow_zero=allow_zero_port)
    except (ValueError, BadDestination) as e:
        raise CredentialsError(f"bad proxy URL {shown!r}: {scrub_password(str(e), url)}") from None
    if parts.scheme != "http":
        raise CredentialsError(
            f"bad proxy URL {shown!r}: only http:// proxies (the tunnel itself carries TLS)"
        )
    if not parts.hostname:
        raise CredentialsError(f"bad proxy URL {shown!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise CredentialsError(f"bad proxy URL {shown!r}: a proxy URL has no path")
    return ProxyEndpoint(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def proxy_from(option: str | None, environ: Mapping[str, str]) -> ProxyEndpoint:
    if option:
        return parse_proxy_url(option, from_command_line=True)
    for name in PROXY_ENVS:
        if environ.get(name):
            return parse_proxy_url(environ[name], from_command_line=False)
    raise CredentialsError(f"no proxy: give --proxy http://HOST:PORT or set {PROXY_ENVS[0]}")


def default_credentials_file(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or os.path.expanduser("~")
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(base, "proxyd", "credentials")


def read_credentials_file(path: str) -> dict[str, str]:
    """NAME:PASSWORD lines (# comments). The file must be a regular file of ours, 0600 or
    stricter: a password others can read is refused, not used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW: a link could point anywhere
            raise CredentialsError(f"credentials file {path}: a symbolic link, refused") from None
        raise CredentialsError(f"credentials file {path}: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CredentialsError(f"credentials file {path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_uid != os.geteuid():
            raise CredentialsError(f"credentials file {path}: not owned by you")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise CredentialsError(
                f"credentials file {path}: mode {mode:04o} lets others read it; "
                f"run: chmod 600 {path}"
            )
        raw = f.read(MAX_CREDENTIALS_FILE + 1)
    if len(raw) > MAX_CREDENTIALS_FILE:
        raise CredentialsError(f"credentials file {path}: larger than {MAX_CREDENTIALS_FILE}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"credentials file {path}: not UTF-8") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        # Never echo the line: it holds a password.
        if not sep or not name or not password:
            raise CredentialsError(f"{path}:{number}: expected NAME:PASSWORD")
        if name in entries:
            raise CredentialsError(f"{path}:{number}: {name!r} appears twice")
        entries[name] = password
    return entries


def resolve(
    proxy: ProxyEndpoint,
    user_option: str | None,
    credentials_file: str | None,
    environ: Mapping[str, str],
) -> Credentials:
    """User: --user, else the proxy URL, else the file's only entry. Password:
    PROXYD_PASSWORD, else the credentials file, else a password in a proxy URL from the
    environment."""
    explicit_file = credentials_file is not None
    path = credentials_file or default_credentials_file(environ)
    entries = read_credentials_file(path) if explicit_file or os.path.exists(path) else {}
    user = user_option or proxy.user
    if user is None:
        if len(entries) != 1:
            raise CredentialsError("no user: give --user NAME or put it in the proxy URL")
        user = next(iter(entries))
    if not user or any(not c.isprintable() or c in ':"\\' for c in user):
        raise CredentialsError(f"bad user name {user!r}")
    password = environ.get(PASSWORD_ENV)
    if password is None:
        password = entries.get(user)
    if password is None and proxy.user == user:
        password = proxy.password
    if not password:
        raise CredentialsError(
            f"no password for {user!r}: set {PASSWORD_ENV} or put {user}:PASSWORD "
            f"in {path} (mode 0600)"
        )
    return Credentials(user, password)
