"""The auth-param grammar of RFC 7235 section 2.1, written once for both sides of Digest.

Kept apart from `digest` (the server side) so that `proxyd connect`, which ssh starts for
every connection, imports only this and hashlib.
"""

from __future__ import annotations

import re

from proxy.core.errors import MalformedCredentials

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


# The same grammar as one compiled pattern per list element, for speed (a header is parsed
# on every request and every CONNECT): the scanner below stays the reference and the one
# that explains a refusal, and tests/core/test_authparams.py holds the two to each other.
_TCHARS_RE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CTL = r"\x00-\x08\x0a-\x1f\x7f"
_ELEMENT = re.compile(
    rf"({_TCHARS_RE})[ \t]*=[ \t]*"
    rf'(?:"((?:[^"\\{_CTL}]|\\[^{_CTL}])*)"|({_TCHARS_RE}))'
    r"[ \t]*(?:,[ \t,]*|\Z)"
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_auth_params(text: str) -> dict[str, str]:
    """Parse `a=b, c="d"` into a dict with lower-cased names; duplicates are an error."""
    params: dict[str, str] = {}
    i = len(text) - len(text.lstrip(" \t,"))  # empty list elements are allowed, leading too
    end = len(text)
    while i < end:
        element = _ELEMENT.match(text, i)
        if element is None:
            return _scan_auth_params(text)  # raises, saying where and why
        name, quoted, token = element.groups()
        key = name.lower()
        if key in params:
            raise MalformedCredentials(f"parameter {key!r} given twice")
        if token is not None:
            params[key] = token
        elif "\\" in quoted:
            params[key] = _QUOTED_PAIR.sub(r"\1", quoted)
        else:
            params[key] = quoted
        i = element.end()
    return params


def _scan_auth_params(text: str) -> dict[str, str]:
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
