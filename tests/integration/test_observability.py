"""Metrics, health and the access log of a real `proxyd serve`, driven by real curl."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from harness import BANNER, ORIGIN_HOST, Origins, ProxydHandle, RawConnection, curl, require_tool
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
ADMIN_RE = re.compile(r"admin listening on ([\d.]+):(\d+)")


def admin_get(handle: ProxydHandle, path: str) -> tuple[int, str]:
    match = handle.wait_for_log(ADMIN_RE)
    url = f"http://{match.group(1)}:{match.group(2)}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def tunnel_through(proxyd: ProxydHandle, origins: Origins, payload: bytes) -> None:
    """A CONNECT to the speak-first echo server; `payload` goes up and comes back."""
    host, port = origins.speak_first
    with RawConnection(proxyd.address) as conn:
        _, reply = conn.request_with_digest("CONNECT", f"{host}:{port}", USER, PASSWORD)
        assert reply is not None and reply.status == 200
        assert conn.recv_exact(len(BANNER)) == BANNER
        conn.send(payload)
        assert conn.recv_exact(len(payload)) == payload


@pytest.fixture
def observed(proxyd_factory, tmp_path: Path) -> ProxydHandle:
    return proxyd_factory(admin_listen="127.0.0.1:0")


def test_health_and_readiness(observed: ProxydHandle) -> None:
    assert admin_get(observed, "/healthz") == (200, "ok\n")
    assert admin_get(observed, "/readyz") == (200, "ready\n")
    assert admin_get(observed, "/nope")[0] == 404


def test_metrics_count_requests_failures_tunnels_and_bytes(
    observed: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    host, port = origins.http
    url = f"http://{host}:{port}/anything"
    ok = curl(["--proxy-digest", "-U", f"{USER}:{PASSWORD}", "-x", observed.url, url], client_env)
    assert ok.transfers[0].code == 200
    bad = curl(
        ["--proxy-digest", "-U", f"{USER}:wrongpassword", "-x", observed.url, url], client_env
    )
    assert bad.transfers[0].code == 407
    payload = b"x" * 100_000
    tunnel_through(observed, origins, payload)
    # A tunnel is counted when proxyd sees it end, which may be after the client did.
    observed.wait_for_log(r"TCP_TUNNEL/200 .* up=100000")

    status, text = admin_get(observed, "/metrics")
    assert status == 200
    promtool = require_tool("promtool")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    m = samples(text)
    assert (
        value(
            m, "proxyd_requests_total", kind="http", decision="allow", status="200", listener="http"
        )
        == 1
    )
    assert (
        value(
            m,
            "proxyd_requests_total",
            kind="tunnel",
            decision="allow",
            status="200",
            listener="http",
        )
        == 1
    )
    assert value(m, "proxyd_auth_failures_total", reason="bad_response") == 1
    assert value(m, "proxyd_tunnels_active") == 0
    assert value(m, "proxyd_bytes_total", direction="up") >= len(payload)
    assert value(m, "proxyd_bytes_total", direction="down") >= len(payload) + len(BANNER)
    assert value(m, "proxyd_users") == 1
    assert value(m, "proxyd_build_info", version="0.1.0") == 1
    assert value(m, "proxyd_request_duration_seconds_count") == 1
    assert value(m, "proxyd_tunnel_setup_seconds_count") == 1


def test_access_log_squid_format_and_no_secrets(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    host, port = origins.http
    url = f"http://{host}:{port}/anything"
    curl(["--proxy-digest", "-U", f"{USER}:{PASSWORD}", "-x", proxyd.url, url], client_env)
    curl(["--proxy-digest", "-U", f"{USER}:wrongpassword", "-x", proxyd.url, url], client_env)
    line = proxyd.wait_for_log(r"TCP_MISS/200 .* GET ").string
    fields = line.split()
    # Squid's native fields: time elapsed client code/status bytes method URL user hier type
    assert re.fullmatch(r"\d+\.\d{3}", fields[0])
    assert fields[2] == "127.0.0.1"
    assert fields[3] == "TCP_MISS/200"
    assert fields[5:8] == ["GET", url, USER]
    assert fields[8] == f"HIER_DIRECT/{ORIGIN_HOST}"
    assert "rule=partners" in fields and "auth=ok" in fields
    failure = proxyd.wait_for_log(r"TCP_DENIED/407 .*auth=bad_response").string
    assert "127.0.0.1" in failure.split()  # fail2ban needs the client address on the line
    log = proxyd.log()
    assert PASSWORD not in log and "wrongpassword" not in log
    users_file = (proxyd.config_path.parent / "users.digest").read_text()
    for secret in re.findall(r"[0-9a-f]{32,64}", users_file):
        assert secret not in log
    assert "Proxy-Authorization" not in log and "response=" not in log


def test_access_log_json_file_reopened_on_sigusr1(
    proxyd_factory, origins: Origins, client_env: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    handle = proxyd_factory(access_log={"path": str(log_path), "format": "json"})
    host, port = origins.http
    url = f"http://{host}:{port}/anything"
    args = ["--proxy-digest", "-U", f"{USER}:{PASSWORD}", "-x", handle.url, url]
    assert curl(args, client_env).transfers[0].code == 200
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["status"], r["user"]) for r in records] == [(407, None), (200, USER)]
    assert records[1]["rule"] == "partners" and records[1]["target"] == url
    assert records[1]["bytes_down"] > 0

    rotated = log_path.with_suffix(".log.1")
    log_path.rename(rotated)
    handle.proc.send_signal(signal.SIGUSR1)
    handle.wait_for_log("access log reopened")
    assert curl(args, client_env).transfers[0].code == 200
    assert len(rotated.read_text().splitlines()) == 2
    assert [json.loads(line)["status"] for line in log_path.read_text().splitlines()] == [407, 200]
