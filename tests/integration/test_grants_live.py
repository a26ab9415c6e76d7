"""Grants over time against a real proxyd and the real CLI (issue 17): last use of users
and trusted sources, `proxyd grants` in both formats, and the audit lines the proxy writes
itself (a trusted source's expiry passing, trusted-source changes at a reload and at the
next start)."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from harness import IO_TIMEOUT, Origins, ProxydHandle, RawConnection, clean_env, proxyd_bin

SOURCE = "127.0.0.77"  # the partner's "static egress address", on loopback


def _cli(proxy: ProxydHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(proxyd_bin()), *args, "--config", str(proxy.config_path)],
        text=True,
        env=clean_env(),
        capture_output=True,
        timeout=60,
    )


def _audit(proxy: ProxydHandle) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for_audit(proxy: ProxydHandle, action: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        for record in _audit(proxy):
            if (record["action"], record["name"]) == (action, name):
                return record
        time.sleep(0.1)
    raise AssertionError(f"no audit line {action} {name}: {_audit(proxy)}")


def _trusted(expires: str, reason: str = "ticket 42") -> dict[str, Any]:
    return {
        "name": "acme-office",
        "cidr": f"{SOURCE}/32",
        "owner": "ACME",
        "reason": reason,
        "expires": expires,
    }


def _rewrite(proxy: ProxydHandle, **changes: Any) -> None:
    config = yaml.safe_load(proxy.config_path.read_text())
    config.update(changes)
    proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _soon(seconds: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return moment.isoformat(timespec="seconds")


def test_last_use_and_the_grants_listing(proxyd_factory: Any, origins: Origins) -> None:
    in_30 = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    host, port = origins.http
    proxy = proxyd_factory(
        users={"alice": "wonderland", "bob": "bobsecret1"},
        extra_rules=[
            {
                "name": "office",
                "from": ["acme-office"],
                "to": ["testzone"],
                "ports": [port],
                "auth": "none",
            }
        ],
        trusted_sources=[_trusted(in_30)],
    )
    started = time.time()
    alice = RawConnection(proxy.address)
    _, answer = alice.request_with_digest("GET", f"http://{host}:{port}/a", "alice", "wonderland")
    assert answer is not None and answer.status == 200
    office = RawConnection(proxy.address, source=SOURCE)
    office.send(f"GET http://{host}:{port}/o HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert office.read_response().status == 200
    for conn in (alice, office):
        conn.close()
    proxy.proc.send_signal(signal.SIGTERM)  # the last uses are written at shutdown too
    proxy.proc.wait(timeout=IO_TIMEOUT)

    listed = _cli(proxy, "grants", "--json")
    assert listed.returncode == 0, listed.stderr
    grants = {(g["kind"], g["name"]): g for g in json.loads(listed.stdout)}
    assert set(grants) == {
        ("user", "alice"),
        ("user", "bob"),
        ("trusted_source", "acme-office"),
    }
    for key in (("user", "alice"), ("trusted_source", "acme-office")):
        used = datetime.datetime.fromisoformat(grants[key]["last_use"]).timestamp()
        assert started - 1 <= used <= time.time() + 1, grants[key]
    assert grants["user", "bob"]["last_use"] is None
    office_grant = grants["trusted_source", "acme-office"]
    assert office_grant["owner"] == "ACME" and office_grant["reason"] == "ticket 42"
    assert office_grant["cidr"] == f"{SOURCE}/32" and office_grant["state"] == "active"
    assert grants["user", "alice"]["state"] == "active"
    assert grants["user", "alice"]["expires"] == in_30

    table = _cli(proxy, "grants")
    assert table.returncode == 0
    rows = {tuple(line.split()[:3]) for line in table.stdout.splitlines()[1:]}
    assert ("trusted_source", "acme-office", "active") in rows
    assert ("user", "bob", "active") in rows
    # 30 days out: inside --expiring 31d, outside --expiring 29d (and then "active").
    soon = json.loads(_cli(proxy, "grants", "--json", "--expiring", "31d").stdout)
    assert {g["name"] for g in soon} == {"alice", "bob", "acme-office"}
    assert {g["state"] for g in soon} == {"expiring"}
    assert json.loads(_cli(proxy, "grants", "--json", "--expiring", "29d").stdout) == []
    bad = _cli(proxy, "grants", "--expiring", "soon")
    assert bad.returncode == 2 and "not a duration like 14d" in bad.stderr


def test_the_proxy_audits_trusted_source_expiry_and_changes(
    proxyd_factory: Any, origins: Origins
) -> None:
    in_30 = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    proxy = proxyd_factory(trusted_sources=[_trusted(_soon(3))])
    expired = _wait_for_audit(proxy, "expire", "acme-office")
    assert expired["kind"] == "trusted_source" and expired["via"] == "clock"
    assert expired["owner"] == "ACME" and expired["reason"] == "ticket 42"
    assert expired["cidr"] == f"{SOURCE}/32"
    # A reload with a new expiry, then one with a new reason.
    _rewrite(proxy, trusted_sources=[_trusted(in_30)])
    proxy.proc.send_signal(signal.SIGHUP)
    renewed = _wait_for_audit(proxy, "renew", "acme-office")
    assert renewed["via"] == "reload" and renewed["expires"].startswith(in_30)
    _rewrite(proxy, trusted_sources=[_trusted(in_30, reason="ticket 43")])
    proxy.proc.send_signal(signal.SIGHUP)
    changed = _wait_for_audit(proxy, "change", "acme-office")
    assert changed["reason"] == "ticket 43"
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(timeout=IO_TIMEOUT)
    # Removed while the proxy was down: the next start says so.
    _rewrite(proxy, trusted_sources=[])
    again = subprocess.Popen(
        [str(proxyd_bin()), "serve", "--config", str(proxy.config_path)],
        cwd=proxy.config_path.parent,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        removed = _wait_for_audit(proxy, "remove", "acme-office")
        assert removed["via"] == "start"
    finally:
        again.terminate()
        again.wait(timeout=IO_TIMEOUT)
    actions = [r["action"] for r in _audit(proxy) if r["name"] == "acme-office"]
    assert actions == ["expire", "renew", "change", "remove"], actions
    assert Path(proxy.config_path.parent / "audit.log").stat().st_mode & 0o077 == 0
