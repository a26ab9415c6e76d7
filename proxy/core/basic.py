"""Basic proxy credentials (RFC 7617), sans-IO: accepted only inside TLS.

The password is checked against the users file's Digest HA1, H(name:realm:password), so
Basic needs no second secret per user. The header's bytes are parsed by the grammar: the
base64 must be canonical, the user name one the users file allows, the password UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from proxy.core.digest import UserSecrets, ha1, refuse_unusable
from proxy.core.errors import AuthFailure, MalformedCredentials

# The strongest hash a user has is the one compared (the users file may hold MD5 only).
_PREFERENCE = ("SHA-256", "MD5")


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self.username!r}, password='***')"


def parse_basic(token68: str) -> BasicCredentials:
    """The part after `Basic `: base64 of `user-id ":" password`."""
    try:
        raw = base64.b64decode(token68.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCredentials("Basic credentials are not base64") from None
    user, colon, password = raw.partition(b":")
    if not colon:
        raise MalformedCredentials("Basic credentials without a ':'")
    try:
        return BasicCredentials(user.decode("utf-8"), password.decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedCredentials("Basic credentials are not UTF-8") from None


def password_matches(creds: BasicCredentials, realm: str, user: UserSecrets | None) -> bool:
    """Whether `creds` hold `user`'s password, in constant time; for an unknown user
    (None) a hash is computed all the same, so timing doesn't reveal which names exist."""
    algorithm = next((a for a in _PREFERENCE if user is not None and a in user.ha1), "SHA-256")
    stored = user.ha1[algorithm] if user is not None else "0" * 64
    offered = ha1(algorithm, creds.username, realm, creds.password)
    matches = hmac.compare_digest(offered.encode(), stored.encode())
    return matches and user is not None and user.realm == realm


def verify_basic(
    creds: BasicCredentials,
    realm: str,
    lookup: Callable[[str], UserSecrets | None],
    now: float,
) -> str:
    """The user name, or AuthFailure with the reason (as Digest's verifier names them)."""
    user = lookup(creds.username) if creds.username else None
    matches = password_matches(creds, realm, user)
    if user is None:
        raise AuthFailure("unknown_user")
    if not matches:
        raise AuthFailure("bad_password")
    refuse_unusable(user, now)
    return user.name
