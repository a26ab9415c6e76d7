"""trusted_sources: validation (breadth, fields, names) and expiry by the given clock."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from proxy.core import config
from proxy.core.errors import ConfigError

BASE = """
auth: {users_file: u, nonce_secret_file: s}
zones: {test: [192.0.2.0/24]}
trusted_sources:
%s
rules:
  - {name: t, from: [%s], to: [test], ports: [443], auth: none}
"""
EXPIRES = 1_900_000_000.0  # 2030-03-17T17:46:40Z
NOW = 1_895_000_000.0  # 2030-01-18: the dates here lie within grants.max_lifetime


def parse(entries: str, sources: str = "p") -> config.Config:
    return config.parse(BASE % (entries, sources), Path("t.yaml"), now=NOW)


def errors(entries: str, sources: str = "p") -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(entries, sources)
    return e.value.problems


ENTRY = (
    "  - {name: p, cidr: %s, owner: o@x.example, reason: r, expires: '2030-03-17T17:46:40+00:00'%s}"
)


def test_matches_until_expiry_then_stops() -> None:
    policy = parse(ENTRY % ("198.51.100.7/32", "")).policy
    src, dst = ipaddress.ip_address("198.51.100.7"), ipaddress.ip_address("192.0.2.1")
    assert policy.decide(src, [dst], 443, None, now=EXPIRES - 1).allowed
    assert not policy.decide(src, [dst], 443, None, now=EXPIRES).allowed
    other = ipaddress.ip_address("198.51.100.8")
    assert not policy.decide(other, [dst], 443, None, now=EXPIRES - 1).allowed


def test_date_expiry_means_start_of_that_day_utc() -> None:
    cfg = config.parse(
        BASE
        % ("  - {name: p, cidr: 198.51.100.7/32, owner: o, reason: r, expires: 2030-01-02}", "p"),
        Path("t.yaml"),
        now=NOW,
    )
    assert cfg.trusted_sources[0].expires == 1893542400.0  # 2030-01-02T00:00:00Z


@pytest.mark.parametrize(
    ("cidr", "extra", "broad"),
    [
        ("198.51.100.0/28", "", False),
        ("198.51.100.0/27", "", True),
        ("2001:db8::/56", "", False),
        ("2001:db8::/48", "", True),
        ("198.51.100.0/24", ", allow_broad: true", False),
    ],
)
def test_broad_segments_need_allow_broad(cidr: str, extra: str, broad: bool) -> None:
    if broad:
        (problem,) = errors(ENTRY % (cidr, extra))
        assert problem.startswith("t.yaml:5: trusted_sources[0].cidr: ")
        assert "allow_broad" in problem
    else:
        parse(ENTRY % (cidr, extra))


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ("  - {name: p, cidr: 198.51.100.7/32, reason: r, expires: 2030-01-01}", "owner: required"),
        ("  - {name: p, cidr: 198.51.100.7/32, owner: o, expires: 2030-01-01}", "reason: required"),
        ("  - {name: p, cidr: 198.51.100.7/32, owner: o, reason: r}", "expires: required"),
        (
            "  - {name: p, cidr: 198.51.100.7/32, owner: o, reason: r, expires: soon}",
            "expires: must be a date",
        ),
        (
            "  - {name: test, cidr: 198.51.100.7/32, owner: o, reason: r, expires: 2030-01-01}",
            "already a zone",
        ),
        (
            "  - {name: p, cidr: 198.51.100.7/33, owner: o, reason: r, expires: 2030-01-01}",
            "invalid CIDR",
        ),
        (
            "  - {name: p, cidr: 198.51.100.7/32, owner: o, reason: r, expires: 2030-01-01, x: 1}",
            "unknown key",
        ),
    ],
)
def test_bad_entries_are_located(entries: str, expected: str) -> None:
    assert any(expected in p for p in errors(entries)), errors(entries)


def test_trusted_source_cannot_be_a_destination() -> None:
    text = BASE % (ENTRY % ("198.51.100.7/32", ""), "any")
    text = text.replace("to: [test]", "to: [p]")
    with pytest.raises(ConfigError) as e:
        config.parse(text, Path("t.yaml"), now=NOW)
    assert "rules[0].to[0]: unknown zone 'p'" in e.value.problems[0]
