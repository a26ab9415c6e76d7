"""The grant watch (service/grantwatch.py) with real files: a user's expiry passing is one
audit line, written once and by the auditing process only; last uses merge into the file
across writers and survive a broken file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from proxy.core import config
from proxy.core.accesslog import AccessRecord
from proxy.core.digest import UserSecrets
from proxy.effects.lastusefile import LastUseFile
from proxy.effects.logfile import LogFile
from proxy.service.grantwatch import FLUSH_INTERVAL, GrantWatch
from proxy.service.metrics import Metrics
from proxy.service.recorder import Recorder

T0 = 1_800_000_000.0


def _setup(tmp_path: Path, audits: bool = True) -> tuple[GrantWatch, Any, Recorder]:
    cfg = config.parse(
        "auth: {users_file: u, nonce_secret_file: s}\n"
        "audit_log: audit.log\n"
        "grants: {last_use_file: state/last-use.json}\n",
        tmp_path / "proxyd.yaml",
        now=T0,
    )
    alice = UserSecrets("alice", "proxyd", {"MD5": "a" * 32}, expires=T0 + 5, owner="ACME")
    bob = UserSecrets("bob", "proxyd", {"MD5": "b" * 32}, expires=None)
    runtime = SimpleNamespace(config=cfg, users=SimpleNamespace(all=lambda: [alice, bob]))
    recorder = Recorder(Metrics(), LogFile(tmp_path / "access.log"), "json")
    return GrantWatch(recorder, audits, T0), runtime, recorder


def _audit(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_expiry_is_audited_once_when_it_passes(tmp_path: Path) -> None:
    watch, runtime, _ = _setup(tmp_path)
    for now in (T0 + 1, T0 + 4, T0 + 5, T0 + 6, T0 + 60):
        watch.look(runtime, now)
    (line,) = _audit(tmp_path)
    assert (line["kind"], line["action"], line["name"]) == ("user", "expire", "alice")
    assert line["owner"] == "ACME" and line["expires"] == "2027-01-15"


def test_only_the_auditing_process_writes_audit_lines(tmp_path: Path) -> None:
    watch, runtime, _ = _setup(tmp_path, audits=False)
    watch.look(runtime, T0 + 60)
    assert _audit(tmp_path) == []


def _record(user: str | None, client: str, when: float) -> AccessRecord:
    return AccessRecord(when, 1, client, user, "GET", "http://x/", 200, 0, 0, "r", "ok")


def test_last_uses_merge_across_writers_and_a_broken_file_is_replaced(tmp_path: Path) -> None:
    watch, runtime, recorder = _setup(tmp_path)
    recorder.record(_record("alice", "127.0.0.1", T0 + 1), "allow")
    recorder.record(_record("bob", "127.0.0.1", T0 + 2), "deny")  # refused: not a use
    assert watch.look(runtime, T0 + 2) is None  # not time yet
    uses = watch.look(runtime, T0 + FLUSH_INTERVAL)
    assert uses == {("user", "alice"): T0 + 1}
    watch.write_uses(runtime.config, uses)
    path = runtime.config.last_use_file
    other = LastUseFile(path)  # another worker: an older alice, a newer bob
    other.add({("user", "alice"): T0, ("user", "bob"): T0 + 3})
    assert LastUseFile(path).read() == {("user", "alice"): T0 + 1, ("user", "bob"): T0 + 3}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.write_text('{"user": {"alice": "yesterday"}}')
    assert "replaced" in (other.add({("user", "bob"): T0 + 4}) or "")
    assert LastUseFile(path).read() == {("user", "bob"): T0 + 4}


def test_an_unwritable_last_use_file_is_said_once(tmp_path: Path, caplog: Any) -> None:
    watch, runtime, _ = _setup(tmp_path)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    cfg = dataclasses.replace(runtime.config, last_use_file=blocked / "last-use.json")
    for second in range(3):
        watch.write_uses(cfg, {("user", "alice"): T0 + second})
    assert sum("last use not recorded" in r.message for r in caplog.records) == 1
