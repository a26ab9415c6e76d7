"""The client side of HTTP Digest proxy authentication (RFC 7616), sans-IO.

`proxyd connect` and `proxyd relay` answer a Digest proxy's 407 with this module: values in
(the `Proxy-Authenticate` header values, method, URI), header values out. It keeps one
nonce and counts `nc` up on it, so a connection or a relay pays one 407 round trip, not one
per request. No sockets, no clock: the random source for cnonces is a parameter.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple
from urllib.parse import quote

from proxy.core.authparams import _quoted_string, _skip_ows, _token
from proxy.core.errors import MalformedCredentials, ProxydError

# hashlib constructors by RFC 7616 algorithm name; the "-sess" variants hash the same way.
_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data),
}
SUPPORTED_ALGORITHMS = frozenset([name for name in _HASHES] + [f"{name}-SESS" for name in _HASHES])


class ChallengeError(ProxydError):
    """The proxy's 407 can't be answered: malformed, or no scheme/algorithm we speak."""


class CredentialsRejected(ProxydError):
    """The proxy refused credentials that were sent with its current nonce."""


class Challenge(NamedTuple):
    """One challenge of a `Proxy-Authenticate` header: scheme (lower-case) and params."""

    scheme: str
    params: Mapping[str, str]

    @property
    def algorithm(self) -> str:
        return self.params.get("algorithm", "MD5").upper()

    @property
    def qops(self) -> frozenset[str]:
        return frozenset(q.strip().lower() for q in self.params.get("qop", "").split(",") if q)

    @property
    def stale(self) -> bool:
        return self.params.get("stale", "").lower() == "true"

    def usable(self) -> bool:
        """A Digest challenge we can answer: known algorithm, a nonce, qop auth (or none)."""
        return (
            self.scheme == "digest"
            and self.algorithm in SUPPORTED_ALGORITHMS
            and "nonce" in self.params
            and "realm" in self.params
            and (not self.qops or "auth" in self.qops)
        )


def _parse_param_value(text: str, i: int) -> tuple[str, int]:
    if i < len(text) and text[i] == '"':
        return _quoted_string(text, i)
    return _token(text, i)


def _is_token68_padding(text: str, i: int) -> bool:
    """At an '=' that ends a token68 (`Negotiate abc==`) rather than starting a value."""
    while i < len(text) and text[i] == "=":
        i += 1
    i = _skip_ows(text, i)
    return i >= len(text) or text[i] == ","


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse every challenge of one or more `Proxy-Authenticate` values (RFC 7235 2.1).

    One value may hold several challenges (`Digest a=1, b=2, Basic realm=x`): a token that
    is not followed by '=' starts a new challenge. A comma split breaks on quoted commas,
    so this scans with the same grammar pieces the server side uses.
    """
    found: list[tuple[str, dict[str, str]]] = []
    for text in values:
        try:
            _scan_challenges(text, found)
        except MalformedCredentials as e:
            raise ChallengeError(f"malformed Proxy-Authenticate header: {e}") from None
    return [Challenge(scheme, params) for scheme, params in found]


def _scan_challenges(text: str, found: list[tuple[str, dict[str, str]]]) -> None:
    current: dict[str, str] | None = None
    i = 0
    while True:
        while i < len(text) and text[i] in " \t,":
            i += 1
        if i >= len(text):
            return
        name, j = _token(text, i)
        if not name:
            raise MalformedCredentials(f"unexpected {text[i]!r} at offset {i}")
        k = _skip_ows(text, j)
        if current is not None and k < len(text) and text[k] == "=":
            if _is_token68_padding(text, k):  # token68 of a scheme we don't speak: skip it
                i = k
                while i < len(text) and text[i] != ",":
                    i += 1
                continue
            value, i = _parse_param_value(text, _skip_ows(text, k + 1))
            current.setdefault(name.lower(), value)
            i = _skip_ows(text, i)
            if i < len(text) and text[i] != ",":
                raise MalformedCredentials(f"expected ',' at offset {i}")
            continue
        current = {}
        found.append((name.lower(), current))
        i = k


def choose(challenges: Iterable[Challenge]) -> Challenge:
    """The first usable Digest challenge: the proxy lists them in its order of preference
    (RFC 7616 3.7), whichever of MD5 and SHA-256 comes first."""
    offered = list(challenges)
    for candidate in offered:
        if candidate.usable():
            return candidate
    if not offered:
        raise ChallengeError("the proxy asked for authentication but offered no scheme")
    described = ", ".join(
        f"Digest {c.algorithm}" if c.scheme == "digest" else c.scheme.capitalize() for c in offered
    )
    raise ChallengeError(f"the proxy offers no Digest challenge we can answer ({described})")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestClient:
    """Answers one proxy's Digest challenges for one user, reusing the nonce it was given.

    `authorization()` gives the header value for the next request (None before the first
    challenge); `challenged()` takes a 407's challenges and decides whether a retry can
    succeed. A 407 to credentials sent with the current nonce means they are wrong unless
    the proxy says `stale=true`.
    """

    def __init__(
        self,
        username: str,
        password: str,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.username = username
        self.password = password
        self._random = random
        self._challenge: Challenge | None = None
        self._nc = 0
        self._ha1 = ""
        self._sess_cnonce = ""
        self.challenges_seen = 0

    @property
    def nonce(self) -> str | None:
        return self._challenge.params["nonce"] if self._challenge else None

    @property
    def algorithm(self) -> str | None:
        return self._challenge.algorithm if self._challenge else None

    def challenged(self, header_values: Iterable[str], sent_nonce: str | None) -> None:
        """Adopt the challenge of a 407. `sent_nonce` is the nonce the refused request's
        credentials used (None if it had none). Raises ChallengeError when the challenge
        can't be answered, and CredentialsRejected (after adopting the new challenge) when
        credentials sent with the current nonce were refused without `stale=true`: wrong,
        unless a concurrent request on the same nonce confused a strict proxy's nc check."""
        self.challenges_seen += 1
        picked = choose(parse_challenges(header_values))
        rejected = sent_nonce is not None and not picked.stale and sent_nonce == self.nonce
        self._adopt(picked)
        if rejected:
            raise CredentialsRejected(f"the proxy refused the credentials of {self.username!r}")

    def _adopt(self, challenge: Challenge) -> None:
        self._challenge = challenge
        self._nc = 0
        realm = challenge.params["realm"]
        algorithm = challenge.algorithm
        self._ha1 = self._hash(f"{self.username}:{realm}:{self.password}")
        if algorithm.endswith("-SESS"):
            # RFC 7616 3.4.2: the session HA1 folds in the nonce and one cnonce, fixed for
            # as long as this nonce is used.
            self._sess_cnonce = self._random(16).hex()
            self._ha1 = self._hash(f"{self._ha1}:{challenge.params['nonce']}:{self._sess_cnonce}")

    def _hash(self, text: str) -> str:
        assert self._challenge is not None
        base = self._challenge.algorithm.removesuffix("-SESS")
        return _HASHES[base](text.encode("utf-8")).hexdigest()

    def authorization(self, method: str, uri: str) -> str | None:
        """The `Proxy-Authorization` value for the next request, or None before any 407."""
        challenge = self._challenge
        if challenge is None:
            return None
        params = challenge.params
        nonce = params["nonce"]
        realm = params["realm"]
        ha2 = self._hash(f"{method}:{uri}")
        self._nc += 1
        nc = f"{self._nc:08x}"
        sess = challenge.algorithm.endswith("-SESS")
        cnonce = self._sess_cnonce if sess else self._random(16).hex()
        if challenge.qops:
            response = self._hash(f"{self._ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        else:  # RFC 2069 servers: no qop, no nc, no cnonce
            response = self._hash(f"{self._ha1}:{nonce}:{ha2}")
        parts = [self._username_param(realm), f"realm={_quote(realm)}"]
        parts += [f"nonce={_quote(nonce)}", f"uri={_quote(uri)}"]
        parts += [f"algorithm={challenge.algorithm}", f"response={_quote(response)}"]
        if challenge.qops:
            parts += ["qop=auth", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
        if "opaque" in params:
            parts.append(f"opaque={_quote(params['opaque'])}")
        if params.get("userhash", "").lower() == "true":
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)

    def _username_param(self, realm: str) -> str:
        assert self._challenge is not None
        if self._challenge.params.get("userhash", "").lower() == "true":
            return f"username={_quote(self._hash(f'{self.username}:{realm}'))}"
        if self.username.isascii() and self.username.isprintable():
            return f"username={_quote(self.username)}"
        # RFC 7616 3.4.4: names outside ASCII go in username* (RFC 8187 encoding).
        return f"username*=UTF-8''{quote(self.username, safe='')}"


__all__ = [
    "SUPPORTED_ALGORITHMS",
    "Challenge",
    "ChallengeError",
    "CredentialsRejected",
    "DigestClient",
    "choose",
    "parse_challenges",
]
