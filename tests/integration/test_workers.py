"""`proxyd serve --workers 2`: real worker processes on one port behind SO_REUSEPORT.

Which worker holds a connection is read from the kernel (`ss -tnp`), so "a nonce issued
by one worker is accepted by the other" is proven on two connections known to sit on two
different processes, not assumed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from conftest import ProxydFactory
from harness import (
    DEFAULT_USERS,
    Origins,
    ProxydHandle,
    RawConnection,
    digest_authorization,
    digest_challenges,
    pick_challenge,
    proxyd_bin,
    require_tool,
)

ADMIN_RE = re.compile(r"admin listening on ([\d.]+):(\d+)")
TIMEOUT = 30.0
ALICE = ("alice", DEFAULT_USERS["alice"])


@pytest.fixture
def workers_proxy(proxyd_factory: ProxydFactory, tmp_path: Path) -> ProxydHandle:
    return proxyd_factory(
        admin_listen="127.0.0.1:0",
        pid_file=str(tmp_path / "proxyd.pid"),
        serve_args=["--workers", "2"],
    )


def worker_pids(proxy: ProxydHandle) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(proxy.proc.pid)], capture_output=True, text=True
    ).stdout
    return sorted(int(p) for p in out.split())


def owner_of(proxy: ProxydHandle, conn: RawConnection) -> int:
    """The pid of the worker holding the proxy's side of `conn`, from the kernel."""
    require_tool("ss")
    local = conn.sock.getsockname()
    query = f"( sport = :{proxy.port} and dport = :{local[1]} )"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", query], capture_output=True, text=True
        ).stdout
        if match := re.search(r"pid=(\d+)", out):
            return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no socket for {local} in ss")


def admin_get(proxy: ProxydHandle, path: str) -> tuple[int, str]:
    match = proxy.wait_for_log(ADMIN_RE)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{match.group(1)}:{match.group(2)}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"")
    match = re.search(rf"^{pattern} (\S+)$", text, re.M)
    assert match, f"{name}{{{labels}}} not in /metrics:\n{text}"
    return float(match.group(1))


@pytest.fixture
def connections_on_both(workers_proxy: ProxydHandle) -> Iterator[dict[int, RawConnection]]:
    """One open connection on each of the two workers (opened until both are hit)."""
    with ExitStack() as stack:
        by_worker: dict[int, RawConnection] = {}
        for _ in range(200):  # the kernel spreads by a hash: two workers come quickly
            conn = stack.enter_context(RawConnection(workers_proxy.address))
            by_worker.setdefault(owner_of(workers_proxy, conn), conn)
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, "every connection landed on one worker"
        assert sorted(by_worker) == worker_pids(workers_proxy)
        yield by_worker


def test_a_nonce_from_one_worker_is_accepted_by_the_other(
    workers_proxy: ProxydHandle, origins: Origins, connections_on_both: dict[int, RawConnection]
) -> None:
    first, second = connections_on_both.values()
    target = f"http://{origins.http[0]}:{origins.http[1]}/hello"
    challenge = first.request("GET", target)
    assert challenge.status == 407
    picked = pick_challenge(digest_challenges(challenge), "SHA-256")
    auth = digest_authorization(picked, *ALICE, "GET", target)
    answered = second.request("GET", target, [("Proxy-Authorization", auth)])
    assert answered.status == 200, answered.text()
    assert answered.body == b"origin-http /hello"
    # The replay window is per worker: the same nc is refused again on that worker.
    again = second.request("GET", target, [("Proxy-Authorization", auth)])
    assert again.status == 407


def test_metrics_are_summed_over_the_workers(
    workers_proxy: ProxydHandle, origins: Origins, connections_on_both: dict[int, RawConnection]
) -> None:
    target = f"http://{origins.http[0]}:{origins.http[1]}/m"
    per_connection = 3
    for conn in connections_on_both.values():
        for _ in range(per_connection):
            _, second = conn.request_with_digest("GET", target, *ALICE)
            assert second is not None and second.status == 200
    status, text = admin_get(workers_proxy, "/metrics")
    assert status == 200
    assert metric(
        text, "proxyd_requests_total", 'decision="allow",kind="http",listener="http",status="200"'
    ) == (2 * per_connection)
    assert metric(text, "proxyd_workers") == 2
    assert metric(text, "proxyd_users") == 1
    assert 'proxyd_build_info{version="' in text
    assert admin_get(workers_proxy, "/readyz") == (200, "ready\n")
    assert admin_get(workers_proxy, "/healthz") == (200, "ok\n")


def test_reload_reaches_every_worker(
    workers_proxy: ProxydHandle, connections_on_both: dict[int, RawConnection], origins: Origins
) -> None:
    """A policy change by `proxyd reload` (SIGHUP to the supervisor's pid file) is in force
    on both workers, on connections that were open before it."""
    target = f"http://{origins.http[0]}:{origins.http[1]}/r"
    for conn in connections_on_both.values():
        _, answered = conn.request_with_digest("GET", target, *ALICE)
        assert answered is not None and answered.status == 200
    config = yaml.safe_load(workers_proxy.config_path.read_text())
    partners = config["rules"][-1]
    partners["ports"] = [p for p in partners["ports"] if p != origins.http[1]]
    workers_proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(
        [str(proxyd_bin()), "reload", "--config", str(workers_proxy.config_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + TIMEOUT
    while workers_proxy.log().count("config reloaded") < 2:
        assert time.monotonic() < deadline, workers_proxy.log()
        time.sleep(0.05)
    for conn in connections_on_both.values():
        first, answered = conn.request_with_digest("GET", target, *ALICE)
        assert (answered or first).status == 403  # refused before credentials are asked


def test_a_dead_worker_is_started_again(workers_proxy: ProxydHandle, origins: Origins) -> None:
    victim = worker_pids(workers_proxy)[0]
    os.kill(victim, signal.SIGKILL)
    workers_proxy.wait_for_log(r"worker \d exited with status -9; starting it again")
    deadline = time.monotonic() + TIMEOUT
    while len(workers_proxy.log().split("ready\n")) < 4:  # 2 at start, 1 after the restart
        assert time.monotonic() < deadline, workers_proxy.log()
        time.sleep(0.05)
    pids = worker_pids(workers_proxy)
    assert len(pids) == 2 and victim not in pids
    _, text = admin_get(workers_proxy, "/metrics")
    assert metric(text, "proxyd_worker_restarts_total") == 1
    assert metric(text, "proxyd_workers") == 2
    target = f"http://{origins.http[0]}:{origins.http[1]}/after"
    for _ in range(6):  # both workers serve
        with RawConnection(workers_proxy.address) as conn:
            _, answered = conn.request_with_digest("GET", target, *ALICE)
            assert answered is not None and answered.status == 200


def test_sigterm_stops_every_worker(workers_proxy: ProxydHandle) -> None:
    pids = worker_pids(workers_proxy)
    workers_proxy.proc.send_signal(signal.SIGTERM)
    assert workers_proxy.proc.wait(TIMEOUT) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert not workers_proxy.config_path.with_name("proxyd.pid").exists()


def test_workers_end_when_the_supervisor_is_killed(workers_proxy: ProxydHandle) -> None:
    pids = worker_pids(workers_proxy)
    workers_proxy.proc.kill()
    workers_proxy.proc.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--workers must be from 1 to 64, got 0"),
        ("65", "--workers must be from 1 to 64, got 65"),
        ("-2", "--workers must be from 1 to 64, got -2"),
        ("two", "--workers takes a whole number, got 'two'"),
        ("", "--workers takes a whole number, got ''"),
        ("٢", "--workers takes a whole number, got '٢'"),
        (" 2", "--workers takes a whole number, got ' 2'"),
    ],
)
def test_bad_workers_values_are_refused(tmp_path: Path, value: str, message: str) -> None:
    proc = subprocess.run(
        [str(proxyd_bin()), "serve", "--config", str(tmp_path / "none.yaml"), "--workers", value],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_workers_start_from_a_folder_that_holds_another_proxy_package(tmp_path: Path) -> None:
    """The supervisor starts `python -P -m proxy`: a `proxy/` package in the working
    folder must not be what the workers run."""
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "__init__.py").write_text('raise SystemExit("the decoy ran")\n')
    (tmp_path / "proxyd.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        "auth: {users_file: users.digest, nonce_secret_file: nonce.secret}\n"
        "zones: {test: [127.0.0.2/32]}\n"
        "rules: [{name: r, from: [any], to: [test], ports: [80]}]\n"
    )
    proc = subprocess.Popen(
        [str(proxyd_bin()), "serve", "--config", "proxyd.yaml", "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # bounded: the supervisor exits if a worker fails
            lines.append(line)
            if "proxyd: listening on" in line:
                break
        assert "the decoy ran" not in "".join(lines), lines
        assert sum("ready" in line for line in lines) == 2, lines
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
