"""Grant states and the grant metrics (issue 17)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from proxy.core import config
from proxy.core.digest import UserSecrets
from proxy.core.errors import ConfigError
from proxy.core.grants import (
    expired_between,
    format_trusted,
    parse_duration,
    parse_trusted,
    state_of,
    trusted_changes,
)
from proxy.core.lastuse import format_uses, parse_uses
from proxy.core.policy import TrustedSource
from proxy.service.metrics import register_process_metrics

NOW = 1_800_000_000.0
DAY = 86400.0


def test_states() -> None:
    assert state_of(None, False, NOW) == "active"
    assert state_of(NOW + 30 * DAY, False, NOW) == "active"
    assert state_of(NOW + 3 * DAY, False, NOW) == "expiring"
    assert state_of(NOW, False, NOW) == "expired"
    assert state_of(NOW + 30 * DAY, True, NOW) == "locked"


def test_the_grant_metrics() -> None:
    now = time.time()
    users = [
        UserSecrets("alice", "proxyd", {}, expires=now + 30 * DAY),
        UserSecrets("bob", "proxyd", {}, expires=now - DAY),
        UserSecrets("carol", "proxyd", {}, locked=True),
        UserSecrets("dave", "proxyd", {}),
    ]
    registry = CollectorRegistry()
    register_process_metrics(
        registry,
        lambda: users,
        lambda: [_source("office", now + DAY)],
        lambda: {"acme-alice": now + 30 * DAY},
    )
    text = generate_latest(registry).decode()
    assert "proxyd_users 4.0" in text
    assert 'proxyd_grant_expiry_timestamp_seconds{kind="user",name="alice"} ' in text
    assert 'name="dave"' not in text  # no expiry, no series
    for state, count in (("active", 2), ("expired", 1), ("locked", 1), ("expiring", 0)):
        assert f'proxyd_grants{{kind="user",state="{state}"}} {count}.0' in text
    assert 'proxyd_grants{kind="trusted_source",state="expiring"} 1.0' in text
    assert 'proxyd_grants{kind="jump",state="active"} 1.0' in text
    assert 'proxyd_grant_expiry_timestamp_seconds{kind="jump",name="acme-alice"}' in text
    assert 'proxyd_grant_expiry_timestamp_seconds{kind="trusted_source",name="office"}' in text


# --- what the grant watch and `proxyd grants` compute --------------------------------


def _source(name: str = "office", expires: float = NOW + DAY, reason: str = "r") -> TrustedSource:
    return TrustedSource(name, netaddr.IPNetwork("192.0.2.0/28"), "ACME", reason, expires)


def test_expired_between_notices_each_expiry_once() -> None:
    grants = [("a", NOW + 1), ("b", NOW + 10), ("never", None)]
    assert expired_between(grants, NOW, NOW + 1) == ["a"]
    assert expired_between(grants, NOW + 1, NOW + 9) == []
    assert expired_between(grants, NOW + 9, NOW + 100) == ["b"]


def test_trusted_changes() -> None:
    old = [_source("a"), _source("b"), _source("c")]
    new = [
        _source("a"),
        _source("b", expires=NOW + 2 * DAY),
        _source("c", reason="x"),
        _source("d"),
    ]
    assert [(action, s.name) for action, s in trusted_changes(old, new)] == [
        ("renew", "b"),
        ("change", "c"),
        ("add", "d"),
    ]
    assert [(a, s.name) for a, s in trusted_changes(new, [])] == [("remove", n) for n in "abcd"]


def test_trusted_sources_seen_round_trip() -> None:
    sources = (_source("a"), _source("b"))
    assert parse_trusted(format_trusted(sources)) == sources


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_broken_state_files_are_value_errors(data: bytes) -> None:
    for parse in (parse_trusted, parse_uses):
        with contextlib.suppress(ValueError):
            parse(data)


def test_last_use_round_trip_and_bad_times() -> None:
    uses = {("user", "alice"): NOW, ("trusted_source", "office"): NOW + 1.5}
    assert parse_uses(format_uses(uses)) == uses
    for bad in (
        b'{"user": {"a": "x"}}',
        b'{"user": {"a": true}}',
        b'{"user": []}',
        b"[]",
        b'{"user": {"a": NaN}}',
    ):
        with pytest.raises(ValueError):
            parse_uses(bad)
    assert parse_uses(b'{"future_kind": {"x": 1}}') == {}


@pytest.mark.parametrize(
    ("text", "seconds"), [("14d", 14 * DAY), ("36h", 36 * 3600.0), ("2w", 14 * DAY), ("3", 3 * DAY)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "14x", "-1d", "1.5d", "99999999d", "\u0661\u0664d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_trusted_sources_expire_within_max_lifetime() -> None:
    def parse(expires: str, extra: str = "") -> config.Config:
        return config.parse(
            "auth: {users_file: u, nonce_secret_file: s}\n" + extra + "trusted_sources:\n"
            f"  - {{name: o, cidr: 192.0.2.0/28, owner: A, reason: r, expires: {expires}}}\n",
            Path("t.yaml"),
            now=NOW,  # 2027-01-15T08:00Z
        )

    assert parse("2027-04-15").trusted_sources[0].name == "o"  # 90 days on
    with pytest.raises(ConfigError, match=r"trusted_sources\[0\].expires: .*max_lifetime"):
        parse("2027-04-17")
    with pytest.raises(ConfigError, match=r"\(7 days\)"):
        parse("2027-01-30", "grants: {max_lifetime: 7}\n")
    assert parse("2020-01-01").trusted_sources  # expired already: valid, matches nothing
