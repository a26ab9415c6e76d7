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
from dataclasses import dataclass
from urllib.parse import SplitResult

from proxy.core.errors import BadDestination

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


# 65535 has five digits; a longer string can only be leading zeros or out of range, and
# int() refuses over 4300 digits with ValueError, which would surface as a bug.
MAX_PORT_DIGITS = 5


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A TCP port written as ASCII digits, 1-65535: the one port parser, which every
    `host:port`, URL and option in proxyd goes through.

    `str.isdigit` alone takes "²" (which int() then refuses), and int() takes " 1", "+1",
    "1_0" and other scripts' digits ("٢٢"): each would be a second grammar. `allow_zero`
    is for a listener, where port 0 means "any free port"; a destination is never port 0.
    """
    low = 0 if allow_zero else 1
    shown = repr(text[:16]) + ("..." if len(text) > 16 else "")
    if not (0 < len(text) <= MAX_PORT_DIGITS and text.isascii() and text.isdigit()):
        raise BadDestination(f"invalid port: {shown} (expected {low}-65535 in digits 0-9)")
    port = int(text)
    if not low <= port <= 65535:
        raise BadDestination(f"invalid port: {shown} (expected {low}-65535)")
    return port


def url_port(parts: SplitResult, default: int, *, allow_zero: bool = False) -> int:
    """The port of a split URL, read by `parse_port` rather than urllib's `.port`.

    The host part is found as urllib finds `.hostname` (after the last "@", brackets for
    IPv6), so the two agree on where the host ends; text around the brackets, which urllib
    drops, is refused.
    """
    hostinfo = parts.netloc.rpartition("@")[2]
    before, bracket, bracketed = hostinfo.partition("[")
    after_host = bracketed.partition("]")[2] if bracket else hostinfo
    if bracket and (before or after_host[:1] not in ("", ":")):
        raise BadDestination(f"text around an [IPv6] address: {hostinfo[:64]!r}")
    text = after_host.partition(":")[2]
    return parse_port(text, allow_zero=allow_zero) if text else default


def format_hostport(address: IPAddress | str, port: int) -> str:
    """`host:port`, with IPv6 in brackets however it is given."""
    if isinstance(address, ipaddress.IPv6Address) or ":" in str(address):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def split_hostport(
    text: str, default_port: int | None = None, *, allow_zero: bool = False
) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (the port optional with `default_port`) -> (host, port),
    brackets removed. BadDestination otherwise; the host is not validated here beyond
    bracketed text having to be an IPv6 address. `allow_zero`: a listener's port 0."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BadDestination(f"invalid host:port: {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadDestination(f"not an IPv6 address in brackets: {host!r}") from None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = text.rpartition(":")
        if not colon:
            host, port_text = text, None
        elif ":" in host:
            raise BadDestination(f"IPv6 address without brackets: {text!r}")
        else:
            port_text = port_text_or_empty
    if port_text is None:
        if default_port is None:
            raise BadDestination(f"no port in {text!r}")
        return host, default_port
    if not host:
        raise BadDestination(f"no host in {text!r}")
    return host, parse_port(port_text, allow_zero=allow_zero)


@dataclass(frozen=True)
class Target:
    """A destination host as written, parsed: an IP literal (normalised) or a name."""

    host: str  # as the client wrote it
    port: int
    literal: IPAddress | None  # set when host is an IP literal
    name: str | None = None  # set when host is a name to resolve


def parse_target(host: str, port: int) -> Target:
    literal = parse_ip_literal(host)
    if literal is not None:
        return Target(host, port, literal)
    return Target(host, port, None, validate_hostname(host))
