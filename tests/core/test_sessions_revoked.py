"""core/revocation.py and service/sessions.py: which sessions end, and why."""

from __future__ import annotations

import dataclasses

from proxy.core.digest import UserSecrets
from proxy.core.revocation import revoked
from proxy.service.sessions import Sessions

NOW = 1_800_000_000.0
ALICE = UserSecrets("alice", "proxyd", {"MD5": "a" * 32, "SHA-256": "b" * 64})


def test_reasons() -> None:
    assert revoked(ALICE, ALICE, NOW) is None
    assert revoked(ALICE, dataclasses.replace(ALICE, note="renewed"), NOW) is None
    assert revoked(ALICE, None, NOW) == "removed"
    assert revoked(ALICE, dataclasses.replace(ALICE, locked=True), NOW) == "locked"
    assert revoked(ALICE, dataclasses.replace(ALICE, expires=NOW), NOW) == "expired"
    assert revoked(ALICE, dataclasses.replace(ALICE, expires=NOW + 1), NOW) is None
    other = dataclasses.replace(ALICE, ha1={"MD5": "c" * 32, "SHA-256": "b" * 64})
    assert revoked(ALICE, other, NOW) == "password_changed"
    assert revoked(ALICE, dataclasses.replace(ALICE, ha1={"MD5": "a" * 32}), NOW) == (
        "password_changed"
    )


def test_sweep_ends_only_what_must_end_and_survives_a_failing_end() -> None:
    sessions = Sessions()
    ended: list[tuple[str, str]] = []

    def failing(reason: str) -> None:
        raise RuntimeError("boom")

    sessions.add("t1", ALICE, lambda r: ended.append(("t1", r)))
    sessions.add("t0", ALICE, failing)
    sessions.add("t2", dataclasses.replace(ALICE, name="bob"), lambda r: ended.append(("t2", r)))
    sessions.add("anon", None, lambda r: ended.append(("anon", r)))  # not tracked
    users = {"bob": dataclasses.replace(ALICE, name="bob")}
    assert sessions.sweep(users.get, NOW) == 2
    assert ended == [("t1", "removed")]
    assert set(sessions.open) == {"t2"}
