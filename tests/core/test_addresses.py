"""Destination host parsing: every IP-literal spelling normalised, names validated."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import pytest

from proxy.core.addresses import (
    parse_ip_literal,
    parse_port,
    split_hostport,
    url_port,
    validate_hostname,
)
from proxy.core.errors import BadDestination

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", LOOPBACK),
        ("2130706433", LOOPBACK),
        ("0x7f000001", LOOPBACK),
        ("0X7F000001", LOOPBACK),
        ("0177.0.0.1", LOOPBACK),
        ("0177.0000.0.01", LOOPBACK),
        ("127.1", LOOPBACK),
        ("127.0.1", LOOPBACK),
        ("0x7f.1", LOOPBACK),
        ("0x7f.0.0.0x1", LOOPBACK),
        ("::ffff:127.0.0.1", LOOPBACK),
        ("[::ffff:127.0.0.1]", LOOPBACK),
        ("[::ffff:7f00:1]", LOOPBACK),
        ("80.158.0.10", ipaddress.IPv4Address("80.158.0.10")),
        ("0", ipaddress.IPv4Address("0.0.0.0")),
        ("4294967295", ipaddress.IPv4Address("255.255.255.255")),
        ("[::1]", ipaddress.IPv6Address("::1")),
        ("::1", ipaddress.IPv6Address("::1")),
        ("[2001:DB8::1]", ipaddress.IPv6Address("2001:db8::1")),
        ("[2001:db8:0:0:0:0:0:1]", ipaddress.IPv6Address("2001:db8::1")),
    ],
)
def test_ip_literals_are_normalised(host: str, expected: ipaddress.IPv4Address) -> None:
    address = parse_ip_literal(host)
    assert address == expected
    assert type(address) is type(expected)


@pytest.mark.parametrize(
    "host, message",
    [
        ("fe80::1%eth0", "scoped"),
        ("[fe80::1%25eth0]", "scoped"),
        ("[fe80::1%eth0]", "scoped"),
        ("999.1.1.1", "invalid IPv4"),
        ("1.2.3.256", "invalid IPv4"),
        ("4294967296", "invalid IPv4"),
        ("08.1.1.1", "invalid IPv4"),
        ("1.2.65536", "invalid IPv4"),
        ("[::1", "invalid IPv6"),
        ("[:::1]", "invalid IPv6"),
        ("[1::2::3]", "invalid IPv6"),
        ("[::ffff:999.0.0.1]", "invalid IPv6"),
    ],
)
def test_bad_ip_literals_are_refused(host: str, message: str) -> None:
    with pytest.raises(BadDestination, match=message):
        parse_ip_literal(host)


@pytest.mark.parametrize(
    "host",
    ["example.com", "localhost", "api.preprod.test", "1.2.3.4.5", "0x7g", "1e100.net", "a-1.b"],
)
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "host, expected",
    [
        ("example.com", "example.com"),
        ("EXAMPLE.Com", "example.com"),
        ("example.com.", "example.com"),
        ("x", "x"),
        ("_sip._tcp.example.com", "_sip._tcp.example.com"),
        ("a-b.c-d", "a-b.c-d"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
    ],
)
def test_valid_hostnames(host: str, expected: str) -> None:
    assert validate_hostname(host) == expected


def test_longest_name_with_trailing_dot() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert validate_hostname(host + ".") == host


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="only-dot"),
        pytest.param("a..b", id="empty-label"),
        pytest.param(".a", id="leading-dot"),
        pytest.param("a.com..", id="two-trailing-dots"),
        pytest.param("-a.com", id="leading-hyphen"),
        pytest.param("a.-b.com", id="label-leading-hyphen"),
        pytest.param("a-.com", id="trailing-hyphen"),
        pytest.param("a" * 64 + ".test", id="label-too-long"),
        pytest.param(".".join(["a" * 63] * 3 + ["b" * 62]), id="254-chars"),
        pytest.param("a b.test", id="space"),
        pytest.param("a/b.test", id="slash"),
        pytest.param("a:b", id="colon"),
        pytest.param("user@host", id="at"),
        pytest.param("évil.test", id="non-ascii"),
        pytest.param("evil.test\r\nX: y", id="crlf-injection"),
        pytest.param("evil.test\x00.good", id="nul"),
        pytest.param(
            "evil.test\n",
            id="trailing-newline",
        ),
    ],
)
def test_invalid_hostnames(host: str) -> None:
    with pytest.raises(BadDestination, match="invalid host name"):
        validate_hostname(host)


# --- ports: the one parser every host:port, URL and option goes through ---------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("80", 80), ("65535", 65535), ("00080", 80), ("08080", 8080)],
)
def test_ports(text: str, expected: int) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\u00b2", id="superscript-two"),  # str.isdigit says yes, int() says no
        pytest.param("\u00b2\u00b2", id="superscripts"),
        pytest.param("\uff18\uff10", id="full-width-80"),  # int() reads these as 80
        pytest.param("\u0668\u0660", id="arabic-indic-80"),
        pytest.param("+1", id="plus"),
        pytest.param("-1", id="minus"),
        pytest.param(" 1", id="leading-space"),
        pytest.param("1 ", id="trailing-space"),
        pytest.param("1\n", id="trailing-newline"),
        pytest.param("1_0", id="underscore"),
        pytest.param("0x50", id="hex"),
        pytest.param("", id="empty"),
        pytest.param("0", id="zero"),
        pytest.param("00000", id="zeros"),
        pytest.param("65536", id="65536"),
        pytest.param("99999", id="99999"),
        pytest.param("000080", id="six-digits"),
        pytest.param("9" * 5000, id="over-int-digit-limit"),
        pytest.param("https", id="name"),
    ],
)
def test_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(BadDestination, match=r"^invalid port: ") as info:
        parse_port(text)
    assert len(str(info.value)) < 80  # a 5000-digit string is not echoed whole


def test_port_zero_only_where_a_listener_allows_it() -> None:
    assert parse_port("0", allow_zero=True) == 0
    assert parse_port("00", allow_zero=True) == 0
    with pytest.raises(BadDestination, match=r"expected 0-65535"):
        parse_port("65536", allow_zero=True)
    with pytest.raises(BadDestination, match=r"expected 0-65535"):
        parse_port("\u00b2", allow_zero=True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h/", 3128),
        ("http://h:/", 3128),  # RFC 3986: an empty port is the default
        ("http://h:8080/", 8080),
        ("http://user:pw@h:8080/", 8080),
        ("http://user:1@h/", 3128),  # the password is not the port
        ("http://[::1]/", 3128),
        ("http://[::1]:22/", 22),
    ],
)
def test_url_ports(url: str, expected: int) -> None:
    assert url_port(urlsplit(url), 3128) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://h:\u00b2/",
        "http://h:\uff18\uff10/",
        "http://h:+80/",
        "http://h:0/",
        "http://h:65536/",
        "http://h:1:2/",
        "http://[::1]x:80/",  # urllib drops the "x"
        "http://h[::1]:80/",  # and the "h"
    ],
)
def test_bad_url_ports_are_refused(url: str) -> None:
    with pytest.raises(BadDestination):
        url_port(urlsplit(url), 3128)


# --- the one host:port splitter (admission, config, explain, the relay) -----------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host:80", ("host", 80)),
        ("1.2.3.4:443", ("1.2.3.4", 443)),
        ("[2001:db8::1]:22", ("2001:db8::1", 22)),
    ],
)
def test_split_hostport(text: str, expected: tuple[str, int]) -> None:
    assert split_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[1.2.3.4]:80", "not an IPv6 address in brackets: '1.2.3.4'"),
        ("[garbage]:443", "not an IPv6 address in brackets"),
        ("::1:22", "IPv6 address without brackets"),
        (":80", "no host"),
        ("host", "no port"),
        ("host:\u00b2", "invalid port"),
        ("host:0", "invalid port"),
        ("[::1]x:80", "invalid host:port"),
    ],
)
def test_split_hostport_refuses(text: str, says: str) -> None:
    with pytest.raises(BadDestination, match=re.escape(says)):
        split_hostport(text)


def test_split_hostport_port_zero_only_for_a_listener_and_a_default_port() -> None:
    assert split_hostport("127.0.0.1:0", allow_zero=True) == ("127.0.0.1", 0)
    assert split_hostport("host", 80) == ("host", 80)
