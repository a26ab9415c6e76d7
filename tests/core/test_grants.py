"""Grant states and the grant metrics (issue 17)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest

from proxy.core.digest import UserSecrets
from proxy.core.grants import state_of
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
    register_process_metrics(registry, lambda: users)
    text = generate_latest(registry).decode()
    assert "proxyd_users 4.0" in text
    assert 'proxyd_grant_expiry_timestamp_seconds{kind="user",name="alice"} ' in text
    assert 'name="dave"' not in text  # no expiry, no series
    for state, count in (("active", 2), ("expired", 1), ("locked", 1), ("expiring", 0)):
        assert f'proxyd_grants{{kind="user",state="{state}"}} {count}.0' in text
