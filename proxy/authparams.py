"""The auth-param grammar of RFC 7235 section 2.1, written once for both sides of Digest.

Kept apart from `digest` (the server side) so that `proxyd connect`, which ssh starts for
every connection, imports only this and hashlib.
"""

from __future__ import annotations

from .errors import MalformedCredentials

# auth-param = token BWS "=" BWS ( token / quoted-string ); params are comma separated.
# A plain split(",") breaks on a quoted cnonce or uri holding a comma, so we scan.

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = " \t"


def _skip_ows(text: str, i: int) -> int:
    while i < len(text) and text[i] in _OWS:
        i += 1
    return i


def _token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] in _TCHAR:
        i += 1
    return text[start:i], i


def _quoted_string(text: str, i: int) -> tuple[str, int]:
    # text[i] is the opening quote; quoted-pair is "\" followed by any visible char.
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(text):
                break
            c = text[i + 1]
            i += 1
        if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            raise MalformedCredentials("control character in quoted string")
        out.append(c)
        i += 1
    raise MalformedCredentials("unterminated quoted string")


def parse_auth_params(text: str) -> dict[str, str]:
    """Parse `a=b, c="d"` into a dict with lower-cased names; duplicates are an error."""
    params: dict[str, str] = {}
    i = _skip_ows(text, 0)
    while i < len(text) and text[i] == ",":  # empty list elements are allowed, leading too
        i = _skip_ows(text, i + 1)
    while i < len(text):
        name, i = _token(text, i)
        if not name:
            raise MalformedCredentials(f"expected a parameter name at offset {i}")
        i = _skip_ows(text, i)
        if i >= len(text) or text[i] != "=":
            raise MalformedCredentials(f"parameter {name!r} has no value")
        i = _skip_ows(text, i + 1)
        if i < len(text) and text[i] == '"':
            value, i = _quoted_string(text, i)
        else:
            value, i = _token(text, i)
            if not value:
                raise MalformedCredentials(f"parameter {name!r} has an empty value")
        key = name.lower()
        if key in params:
            raise MalformedCredentials(f"parameter {key!r} given twice")
        params[key] = value
        i = _skip_ows(text, i)
        if i < len(text):
            if text[i] != ",":
                raise MalformedCredentials(f"expected ',' at offset {i}")
            i = _skip_ows(text, i + 1)
            while i < len(text) and text[i] == ",":  # empty list elements are allowed
                i = _skip_ows(text, i + 1)
    return params
