"""Destination host parsing: IP literals in every form a resolver accepts, normalised.

Access control must see the address the connection will really go to. glibc's resolver
accepts the old BSD forms (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`), so a string
match on "127.0.0.1" is trivially bypassed. We normalise with the same rules
(`inet_aton`), map IPv4-mapped IPv6 to IPv4, and later connect to the normalised address.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from .errors import BadDestination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 1123 host names (with optional trailing dot); labels of letters, digits, hyphen,
# and underscore, which real-world DNS names carry (SRV-like and some cloud names).
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_BSD_IPV4_RE = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}$")


def canonical_ip(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address: police it as such."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, or None if it is a name to resolve."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in text:
        raise BadDestination(f"scoped IPv6 address not allowed: {host!r}")
    if ":" in text:
        try:
            return canonical_ip(ipaddress.IPv6Address(text))
        except ValueError as e:
            raise BadDestination(f"invalid IPv6 address: {host!r}") from e
    if _BSD_IPV4_RE.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError as e:
            raise BadDestination(f"invalid IPv4 address: {host!r}") from e
    return None


def validate_hostname(host: str) -> str:
    """A DNS name fit to resolve, lower-cased; anything else is refused before any lookup."""
    bare = host.removesuffix(".")  # the root label's dot doesn't count toward 253
    if len(bare) > 253 or not _HOSTNAME_RE.fullmatch(host):
        raise BadDestination(f"invalid host name: {host!r}")
    return bare.lower()


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadDestination(f"invalid port: {text!r}")
    return int(text)


def format_hostport(address: IPAddress | str, port: int) -> str:
    """`host:port`, with IPv6 in brackets however it is given."""
    if isinstance(address, ipaddress.IPv6Address) or ":" in str(address):
        return f"[{address}]:{port}"
    return f"{address}:{port}"
