"""HTTP Digest access authentication for a proxy (RFC 7616), sans-IO.

Values in, decisions out: the caller passes the header text, the request method and
target, the clock and the random bytes. Nonces are stateless (timestamp, random, HMAC with
a shared secret), so every replica holding the secret verifies every other's nonces.
Replay protection is a per-process sliding window of nonce counts per nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from proxy.core.authparams import _TCHAR, parse_auth_params
from proxy.core.errors import AuthFailure, MalformedCredentials

ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
REQUIRED_PARAMS = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")


def hash_hex(algorithm: str, data: str) -> str:
    return ALGORITHMS[algorithm](data.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what a users file stores per algorithm."""
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


@dataclass(frozen=True)
class DigestCredentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str
    nc: int
    nc_text: str
    cnonce: str


# Bytes a header value may hold once it is inside the auth-param grammar: HTAB, SP and
# VCHAR. RFC 7616 carries non-ASCII user names only as `username*` (an RFC 8187 ext-value,
# itself ASCII), so obs-text (0x80-0xFF) and controls are outside it and refused here,
# before any byte becomes a string: later code (hashing, logs) never sees a surrogate.
_HEADER_BYTES = frozenset(b"\t" + bytes(range(0x20, 0x7F)))


def header_text(value: bytes | str) -> str:
    """The value as ASCII text, or MalformedCredentials naming the first byte outside it."""
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    for offset, byte in enumerate(raw):
        if byte not in _HEADER_BYTES:
            raise MalformedCredentials(f"byte 0x{byte:02x} at offset {offset} is not allowed")
    return raw.decode("ascii")


def split_scheme(header: bytes | str) -> tuple[str, str]:
    """`Digest a=b` -> ("digest", "a=b"): the scheme lower-cased, the rest untouched."""
    text = header_text(header).strip()
    scheme, _, rest = text.partition(" ")
    if not scheme or any(c not in _TCHAR for c in scheme):
        raise MalformedCredentials("no authentication scheme")
    return scheme.lower(), rest.strip()


# RFC 8187 ext-value: charset "'" [ language ] "'" value-chars. Only UTF-8 is taken.
_ATTR_CHAR = frozenset("!#$&+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def decode_ext_value(value: str) -> str:
    """`UTF-8''%c3%a4lice` -> "älice". MalformedCredentials for anything else."""
    charset, quote1, rest = value.partition("'")
    _language, quote2, encoded = rest.partition("'")
    if not (quote1 and quote2) or charset.lower() != "utf-8":
        raise MalformedCredentials("username* must be an RFC 8187 ext-value in UTF-8")
    out = bytearray()
    i = 0
    while i < len(encoded):
        c = encoded[i]
        pair = encoded[i + 1 : i + 3]
        if c == "%" and len(pair) == 2 and set(pair) <= _HEX_DIGITS:
            out.append(int(pair, 16))
            i += 3
        elif c in _ATTR_CHAR:
            out.append(ord(c))
            i += 1
        else:
            raise MalformedCredentials("username* holds a character outside RFC 8187")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("username* is not valid UTF-8") from None


def parse_credentials(header: bytes | str) -> DigestCredentials:
    """Parse a Digest `Proxy-Authorization` value. Raises MalformedCredentials (400)."""
    scheme, rest = split_scheme(header)
    if scheme != "digest":
        raise MalformedCredentials(f"not a Digest header: {scheme[:32]}")
    params = parse_auth_params(rest)
    if "username*" in params:
        if "username" in params:
            raise MalformedCredentials("username and username* given together")
        params["username"] = decode_ext_value(params.pop("username*"))
    missing = [p for p in REQUIRED_PARAMS if p not in params]
    if missing:
        raise MalformedCredentials(f"missing parameter(s): {', '.join(missing)}")
    if params.get("userhash", "false").lower() != "false":
        raise MalformedCredentials("userhash is not supported")
    nc_text = params["nc"]
    if len(nc_text) != 8 or any(c not in _HEX_DIGITS for c in nc_text):
        raise MalformedCredentials("nc must be 8 hex digits")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=params["qop"].lower(),
        nc=int(nc_text, 16),
        nc_text=nc_text,
        cnonce=params["cnonce"],
    )


# --- Nonces -----------------------------------------------------------------------------

_NONCE_MAGIC = b"proxyd-nonce-v1"
_NONCE_RANDOM = 12
_NONCE_MAC = 16
_CLOCK_SKEW = 30  # seconds a nonce may come from the future (replicas' clocks differ)


class NonceCodec:
    """Stateless nonces: base64url(ms timestamp || random || HMAC-SHA256(secret, ...)[:16]).

    The timestamp is in milliseconds so a nonce lives its full lifetime, not up to a
    second less. Decoding is strict: the text must be the canonical encoding, or one
    nonce would have endless aliases (base64 decoders skip unknown characters).
    """

    def __init__(self, secret: bytes, lifetime: int) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _NONCE_MAGIC + payload, hashlib.sha256).digest()[:_NONCE_MAC]

    def issue(self, now: float, random: bytes) -> str:
        issued_ms = int(now * 1000)
        payload = struct.pack(">Q", issued_ms) + random[:_NONCE_RANDOM].ljust(_NONCE_RANDOM, b"\0")
        return _encode(payload + self._mac(payload))

    def issued_at(self, nonce: str) -> float:
        """When we issued the nonce (seconds) if the HMAC is valid; else AuthFailure."""
        try:
            raw = base64.b64decode(nonce + "=" * (-len(nonce) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as e:
            raise AuthFailure("bad_nonce") from e
        if len(raw) != 8 + _NONCE_RANDOM + _NONCE_MAC or _encode(raw) != nonce:
            raise AuthFailure("bad_nonce")
        payload, mac = raw[:-_NONCE_MAC], raw[-_NONCE_MAC:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise AuthFailure("bad_nonce")
        (issued_ms,) = struct.unpack(">Q", payload[:8])
        return float(issued_ms) / 1000

    def is_stale(self, issued: float, now: float) -> bool:
        if issued > now + _CLOCK_SKEW:
            raise AuthFailure("bad_nonce")
        return now > issued + self.lifetime


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class ReplayWindow:
    """Remembers which nonce counts each live nonce has used, in bounded memory.

    Clients reuse one nonce with increasing nc, across parallel connections, so counts
    arrive slightly out of order (Chromium does this). Like IPsec's anti-replay window we
    keep the highest nc seen and a bitmap of the `window` counts below it: a count seen
    before, or older than the window, is a replay. Entries leave when their nonce expires.
    """

    def __init__(self, window: int = 1024, max_nonces: int = 200_000) -> None:
        self.window = window
        self._mask = (1 << window) - 1
        self.max_nonces = max_nonces
        # nonce -> (expires_at, [highest_nc, bitmap]); insertion order ~ issue order.
        self._seen: OrderedDict[str, tuple[float, list[int]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _evict(self, now: float, room_for_one: bool) -> None:
        """Drop expired nonces and, only when a new one needs room, the oldest live one."""
        while self._seen:
            nonce, (expires_at, _) = next(iter(self._seen.items()))
            full = room_for_one and len(self._seen) >= self.max_nonces
            if expires_at > now and not full:
                break
            del self._seen[nonce]

    def accept(self, nonce: str, nc: int, expires_at: float, now: float) -> bool:
        """Record (nonce, nc); False if it was used before (a replay)."""
        seen = self._seen.get(nonce)
        self._evict(now, room_for_one=seen is None)
        if seen is None or nonce not in self._seen:
            self._seen[nonce] = (expires_at, [nc, 1])
            return True
        state = seen[1]
        highest, bitmap = state
        if nc > highest:
            jump = nc - highest
            state[0] = nc
            # A jump past the window forgets every count below it: shifting by the jump
            # itself would cost O(jump) (nc=ffffffff after nc=1: a 4 Gbit integer).
            state[1] = 1 if jump >= self.window else ((bitmap << jump) | 1) & self._mask
            return True
        offset = highest - nc
        if offset >= self.window or bitmap >> offset & 1:
            return False
        state[1] = bitmap | (1 << offset)
        return True


# --- Users, challenges and verification ---------------------------------------------------


@dataclass(frozen=True)
class UserSecrets:
    """A proxy user: what verification needs (HA1 per algorithm, hex, for one realm), and
    the grant's facts (expiry, reason, groups, owner, who created it when)."""

    name: str
    realm: str
    ha1: dict[str, str]
    expires: float | None = None  # seconds since the epoch; refused from then on
    note: str = ""  # who and why, for the operator
    locked: bool = False  # refused until a new password is set
    groups: tuple[str, ...] = ()  # what scoped rules (`groups:`) match
    owner: str = ""  # the partner, organisation or person the grant is for
    created_by: str = ""  # the operator who added the user
    created_at: float | None = None  # seconds since the epoch

    def __repr__(self) -> str:
        # An HA1 answers any challenge of its realm, like the password: a log line, a
        # traceback or a test failure shows only which algorithms there are.
        hidden = ", ".join(f"{algorithm!r}: '***'" for algorithm in self.ha1)
        return (
            f"UserSecrets(name={self.name!r}, realm={self.realm!r}, ha1={{{hidden}}}, "
            f"expires={self.expires!r}, note={self.note!r}, locked={self.locked!r}, "
            f"groups={self.groups!r}, owner={self.owner!r}, created_by={self.created_by!r}, "
            f"created_at={self.created_at!r})"
        )


def challenge(realm: str, algorithm: str, nonce: str, stale: bool) -> str:
    value = f'Digest realm="{realm}", qop="auth", algorithm={algorithm}, nonce="{nonce}"'
    return value + (", stale=true" if stale else "")


def challenges(
    realm: str, algorithms: Sequence[str], new_nonce: Callable[[], str], stale: bool = False
) -> list[str]:
    """One challenge per algorithm, in the configured order, each with a fresh nonce."""
    return [challenge(realm, alg, new_nonce(), stale) for alg in algorithms]


def expected_response(algorithm: str, ha1_hex: str, creds: DigestCredentials, method: str) -> str:
    ha2 = hash_hex(algorithm, f"{method}:{creds.uri}")
    return hash_hex(
        algorithm, f"{ha1_hex}:{creds.nonce}:{creds.nc_text}:{creds.cnonce}:{creds.qop}:{ha2}"
    )


def refuse_unusable(user: UserSecrets, now: float) -> None:
    """For a user whose password was just proven: expired or locked is said only to a
    client that knows the password."""
    if user.expires is not None and now >= user.expires:
        raise AuthFailure("expired")
    if user.locked:
        raise AuthFailure("locked")


class DigestVerifier:
    """Checks credentials against users, nonces and the replay window.

    Order matters: the digest is checked before the nonce's age and the replay window,
    so `stale=true` is only ever said to a client that knows the password, and nobody
    can fill the replay window with counts for a nonce without the password.
    """

    def __init__(
        self,
        realm: str,
        algorithms: Sequence[str],
        nonces: NonceCodec,
        lookup: Callable[[str], UserSecrets | None],
        replay: ReplayWindow | None = None,
    ) -> None:
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self.nonces = nonces
        self.lookup = lookup
        self.replay = replay if replay is not None else ReplayWindow()

    def verify(
        self, creds: DigestCredentials, method: str, request_uris: Collection[str], now: float
    ) -> str:
        """The authenticated user name, or AuthFailure with the reason."""
        if creds.qop != "auth":
            raise AuthFailure("bad_qop")
        if creds.algorithm not in self.algorithms:
            raise AuthFailure("bad_algorithm")
        if creds.realm != self.realm:
            raise AuthFailure("wrong_realm")
        if creds.uri not in request_uris:
            raise AuthFailure("uri_mismatch")
        issued = self.nonces.issued_at(creds.nonce)
        user = self.lookup(creds.username)
        secret = user.ha1.get(creds.algorithm) if user is not None else None
        # Compute a digest even for unknown users so timing doesn't reveal which names exist.
        expected = expected_response(creds.algorithm, secret or "0" * 32, creds, method)
        matches = hmac.compare_digest(expected.encode(), creds.response.encode())
        if user is None:
            raise AuthFailure("unknown_user")
        if secret is None:
            raise AuthFailure("algorithm_unavailable")
        if not matches:
            raise AuthFailure("bad_response")
        refuse_unusable(user, now)
        if self.nonces.is_stale(issued, now):
            raise AuthFailure("stale", stale=True)
        if not self.replay.accept(creds.nonce, creds.nc, issued + self.nonces.lifetime, now):
            raise AuthFailure("replay")
        return user.name
