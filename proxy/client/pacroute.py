"""`proxyd relay --pac URL`: route like a browser would, from the proxy's own PAC.

pacparser (a PAC engine on SpiderMonkey, the PyPI wheel) runs the script: writing our own
JavaScript interpreter is out of the question, and it is the engine the PAC tests use.
It is one global per process, which suits the relay's single event loop.
"""

from __future__ import annotations

import http.client
import urllib.parse
import urllib.request
from typing import Any

from proxy.client.credentials import redact_url, scrub_password
from proxy.core.errors import ProxydError

MAX_PAC = 1024 * 1024


class PacError(ProxydError):
    """The PAC can't be fetched or evaluated."""


def fetch(url: str, timeout: float = 30.0) -> str:
    """The PAC's text, fetched without any proxy (a PAC lives where every client reaches it)."""
    shown = redact_url(url)
    if not url.startswith(("http://", "https://")):
        raise PacError(f"bad PAC URL {shown!r}: http:// or https:// only")
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError as e:
        raise PacError(f"bad PAC URL {shown!r}: {scrub_password(str(e), url)}") from None
    # urllib sends no userinfo: it reads "user:pw@host" as a host with the port "pw@host"
    # and quotes that in its error. Refused here, so what follows never sees a password.
    if shown != url or "@" in netloc:
        raise PacError(f"bad PAC URL {shown!r}: no user or password (it is fetched without)")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            data: bytes = response.read(MAX_PAC + 1)
    except (OSError, ValueError, http.client.HTTPException) as e:  # InvalidURL: a bad port
        raise PacError(f"can't fetch PAC {url}: {e}") from None
    if len(data) > MAX_PAC:
        raise PacError(f"PAC {url} is larger than {MAX_PAC} bytes")
    return data.decode("utf-8", "replace")


class PacRouter:
    """Answers True where the PAC's first choice is a proxy, False for DIRECT."""

    def __init__(self, script: str) -> None:
        import pacparser

        self._pp: Any = pacparser
        pacparser.init()
        pacparser.enable_microsoft_extensions()  # isInNetEx/dnsResolveEx for IPv6 zones
        try:
            pacparser.parse_pac_string(script)
        except Exception as e:  # pacparser raises a bare Exception on script errors
            pacparser.cleanup()
            raise PacError(f"PAC does not evaluate: {e}") from None

    def __call__(self, url: str, host: str) -> bool:
        try:
            answer = str(self._pp.find_proxy(url, host))
        except Exception:
            return True  # a script error: the proxy is the safe default for our zones
        first = answer.split(";", 1)[0].strip().upper()
        return first != "DIRECT"

    def close(self) -> None:
        self._pp.cleanup()
