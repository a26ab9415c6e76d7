"""Replicas really share auth: two `proxyd serve` processes behind a real HAProxy.

Both replicas run from one config file, one users file and one nonce secret (as a
Kubernetes Deployment's pods do with one ConfigMap and one Secret). HAProxy (Debian's) is
the TCP load balancer: round robin, health-checked on each replica's /readyz, loopback
only. Which replica served a request is read from that replica's own access log, by a
path unique to the request, so nothing here trusts the balancing order.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_kit import tool
from harness import (
    DEFAULT_USERS,
    PROXY_HOST,
    Origins,
    ProxydHandle,
    RawConnection,
    RawResponse,
    add_user,
    clean_env,
    digest_authorization,
    digest_challenges,
    free_port,
    pick_challenge,
    proxyd_bin,
    write_proxyd_config,
)

pytestmark = pytest.mark.timeout(180)

USER, PASSWORD = next(iter(DEFAULT_USERS.items()))
# proxyd re-reads the users file when its stat changes, checking at most once a second
# (proxy/effects/userfile.py); allow that, one health-check round, and a slow machine.
USERS_RELOAD_BOUND = 3.0
ADMIN_RE = re.compile(r"admin listening on ([\d.]+):(\d+)")


@dataclass
class Replicas:
    balancer: tuple[str, int]
    replicas: list[ProxydHandle]
    config_path: Path
    env: dict[str, str]
    origins: Origins

    def url(self, label: str) -> str:
        host, port = self.origins.http
        return f"http://{host}:{port}/replicas/{label}-{secrets.token_hex(6)}"

    def served_by(self, url: str, status: int, timeout: float = 5.0) -> ProxydHandle:
        """The one replica whose access log has `status` for `url` (waited for: the line is
        written when the response ends)."""
        pattern = re.compile(rf"/{status:03d} \d+ GET {re.escape(url)} ")
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.replicas if pattern.search(r.log())]
            if found:
                assert len(found) == 1, f"{url} logged by {len(found)} replicas"
                return found[0]
            assert time.monotonic() < deadline, f"no replica logged {status} for {url}"
            time.sleep(0.05)

    def counts(self, url: str) -> list[int]:
        """Access log lines per replica that name `url` (to tell who served a repeat)."""
        return [r.log().count(f" GET {url} ") for r in self.replicas]

    def served_since(self, url: str, before: list[int], timeout: float = 5.0) -> ProxydHandle:
        """The one replica that logged one more line for `url` than in `before`."""
        deadline = time.monotonic() + timeout
        while True:
            grown = [
                r
                for r, n in zip(self.replicas, before, strict=True)
                if r.log().count(f" GET {url} ") > n
            ]
            if grown:
                assert len(grown) == 1, f"{url}: two replicas logged it"
                return grown[0]
            assert time.monotonic() < deadline, f"no replica logged {url} again"
            time.sleep(0.05)

    def name(self, replica: ProxydHandle) -> str:
        return "ab"[self.replicas.index(replica)]


def _haproxy_config(
    folder: Path, listen: tuple[str, int], backends: Sequence[tuple[int, int]]
) -> Path:
    servers = "\n".join(
        f"    server {'ab'[n]} {PROXY_HOST}:{port} check port {admin} inter 200ms rise 1 fall 2"
        for n, (port, admin) in enumerate(backends)
    )
    path = folder / "haproxy.cfg"
    path.write_text(
        f"""global
    nbthread 1
    maxconn 256
    stats socket {folder / "haproxy.sock"} mode 600 level user

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend proxy
    bind {listen[0]}:{listen[1]}
    default_backend replicas

# Round robin per TCP connection: the 407 and the retry a client sends on a new
# connection may reach different replicas. Health: each replica's admin /readyz.
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""
    )
    return path


def _haproxy_servers_up(socket_path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(socket_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        servers = [r for r in rows if r["pxname"] == "replicas" and r["svname"] in ("a", "b")]
        return len(servers) == 2 and all(
            r["status"] == "UP" and r["check_status"] == "L7OK" for r in servers
        )
    return False


def _start_haproxy(folder: Path, config: Path) -> subprocess.Popen[bytes]:
    haproxy = tool("haproxy")
    check = subprocess.run(
        [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log = (folder / "haproxy.log").open("wb")
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 15
    while not _haproxy_servers_up(folder / "haproxy.sock"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise AssertionError(
                f"haproxy did not bring both replicas up: {(folder / 'haproxy.log').read_text()}"
            )
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, origins: Origins
) -> Generator[Replicas, None, None]:
    if not proxyd_bin().exists():
        pytest.fail(f"{proxyd_bin()} missing: run `make .venv/bin/proxyd`", pytrace=False)
    tool("haproxy")  # fail (CI) or skip before starting anything
    shared = tmp_path_factory.mktemp("replicas")
    home = shared / "home"
    home.mkdir()
    env = clean_env(home)
    # One config for both: listen and admin_listen on port 0, so each replica gets its own.
    # The users test logs in until both replicas have reloaded: its failed logins before
    # that must not hit the failed-login buckets (test_limits tests those).
    unthrottled = {"burst": 100_000, "per_minute": 100_000}
    config_path = write_proxyd_config(
        shared,
        origins,
        admin_listen=f"{PROXY_HOST}:0",
        limits={"auth_failures": {"per_source": unthrottled, "per_user": unthrottled}},
    )
    add_user(config_path, USER, PASSWORD, env)
    handles: list[ProxydHandle] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(2):
            handles.append(ProxydHandle(config_path, env))
        backends = [(h.port, int(h.wait_for_log(ADMIN_RE).group(2))) for h in handles]
        listen = (PROXY_HOST, free_port(PROXY_HOST))
        lb_folder = shared / "lb"
        lb_folder.mkdir()
        haproxy = _start_haproxy(lb_folder, _haproxy_config(lb_folder, listen, backends))
        yield Replicas(listen, handles, config_path, env, origins)
    finally:
        if haproxy is not None:
            haproxy.terminate()
            try:
                haproxy.wait(10)
            except subprocess.TimeoutExpired:
                haproxy.kill()
                haproxy.wait(10)
        for handle in handles:
            handle.stop()


def _get(conn: RawConnection, url: str, auth: str | None = None) -> RawResponse:
    headers = [("Proxy-Authorization", auth)] if auth else []
    return conn.request("GET", url, headers)


def test_replicas_share_the_files_and_have_their_own_ports(replicas: Replicas) -> None:
    a, b = replicas.replicas
    assert a.config_path == b.config_path and a.port != b.port
    secret = replicas.config_path.parent / "nonce.secret"
    assert secret.stat().st_size >= 16 and secret.stat().st_mode & 0o777 == 0o600


def test_challenge_from_one_replica_is_accepted_by_the_other(replicas: Replicas) -> None:
    url = replicas.url("cross")
    with RawConnection(replicas.balancer) as first:
        challenged = _get(first, url)
    assert challenged.status == 407, challenged
    issuer = replicas.served_by(url, 407)
    challenge = pick_challenge(digest_challenges(challenged), "MD5")
    auth = digest_authorization(challenge, USER, PASSWORD, "GET", url)
    # A new connection: round robin sends it to the other replica.
    with RawConnection(replicas.balancer) as second:
        answered = _get(second, url, auth)
    assert answered.status == 200, answered
    assert answered.text == f"origin-http {url.split(str(replicas.origins.http[1]), 1)[1]}"
    verifier = replicas.served_by(url, 200)
    assert verifier is not issuer, "both requests reached one replica: nothing was shown"
    line = next(ln for ln in verifier.log().splitlines() if f" GET {url} " in ln)
    assert f" {USER} " in line and "auth=ok" in line, line


def test_a_replica_with_another_secret_refuses_that_nonce(
    replicas: Replicas, tmp_path: Path
) -> None:
    """The control for the test above: the nonce is accepted because the secret is shared,
    not because any nonce is. A third proxyd with the same users but its own secret."""
    url = replicas.url("control")
    with RawConnection(replicas.balancer) as conn:
        challenged = _get(conn, url)
    challenge = pick_challenge(digest_challenges(challenged), "MD5")
    shutil.copy(replicas.config_path.parent / "hosts", tmp_path / "hosts")
    shutil.copy(replicas.config_path, tmp_path / "config.yaml")
    shutil.copy(replicas.config_path.parent / "users.digest", tmp_path / "users.digest")
    stranger = ProxydHandle(tmp_path / "config.yaml", replicas.env)  # creates its own secret
    try:
        auth = digest_authorization(challenge, USER, PASSWORD, "GET", url)
        with RawConnection(stranger.address) as conn:
            refused = _get(conn, url, auth)
        assert refused.status == 407, refused
        stranger.wait_for_log(rf"TCP_DENIED/407 \d+ GET {re.escape(url)} .*auth=(?!ok)")
    finally:
        stranger.stop()


def test_replay_protection_is_per_replica(replicas: Replicas) -> None:
    """What the README says: each replica remembers the nonce counts it has seen, and no
    other's. One Authorization (same nonce, nc, cnonce, uri) sent four times over new
    connections is accepted once by each replica and refused on each repeat."""
    url = replicas.url("replay")
    with RawConnection(replicas.balancer) as conn:
        challenged = _get(conn, url)
    # The challenge's own log line may still be on its way from the replica's pipe: wait
    # for it, or the first count below would see it arrive and blame two replicas.
    replicas.served_since(url, [0] * len(replicas.replicas))
    challenge = pick_challenge(digest_challenges(challenged), "MD5")
    auth = digest_authorization(challenge, USER, PASSWORD, "GET", url, nc=1)
    seen: set[str] = set()
    outcomes: list[tuple[str, int]] = []
    for _ in range(4):
        before = replicas.counts(url)
        with RawConnection(replicas.balancer) as conn:
            response = _get(conn, url, auth)
        name = replicas.name(replicas.served_since(url, before))
        assert response.status == (407 if name in seen else 200), (name, response, outcomes)
        seen.add(name)
        outcomes.append((name, response.status))
    assert sorted(outcomes) == [("a", 200), ("a", 407), ("b", 200), ("b", 407)], outcomes
    for replica in replicas.replicas:
        replica.wait_for_log(rf"TCP_DENIED/407 \d+ GET {re.escape(url)} .*auth=replay")


def _login(replicas: Replicas, user: str, password: str) -> tuple[str, int]:
    """One 407 and its answer on one connection (so one replica): (replica, status)."""
    url = replicas.url(f"login-{user}")
    with RawConnection(replicas.balancer) as conn:
        challenged = _get(conn, url)
        assert challenged.status == 407, challenged
        challenge = pick_challenge(digest_challenges(challenged), "MD5")
        response = _get(conn, url, digest_authorization(challenge, user, password, "GET", url))
    replica = replicas.served_by(url, response.status)
    return replicas.name(replica), response.status


def _until_both(replicas: Replicas, user: str, password: str, status: int) -> float:
    """Log in through the balancer until each replica has answered `status` once; the
    seconds it took. Bounded by twice USERS_RELOAD_BOUND (the caller asserts the bound)."""
    start = time.monotonic()
    answered: set[str] = set()
    while answered != {"a", "b"}:
        assert time.monotonic() - start < 2 * USERS_RELOAD_BOUND, (
            f"{user}: only replicas {sorted(answered)} answered {status}"
        )
        name, got = _login(replicas, user, password)
        if got == status:
            answered.add(name)
        else:
            time.sleep(0.05)
    return time.monotonic() - start


def test_users_add_and_remove_are_seen_by_both_replicas(
    replicas: Replicas, capsys: pytest.CaptureFixture[str]
) -> None:
    user, password = f"bob{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    assert {_login(replicas, user, password) for _ in range(2)} == {("a", 407), ("b", 407)}

    add_user(replicas.config_path, user, password, replicas.env)
    added = _until_both(replicas, user, password, 200)
    assert added < USERS_RELOAD_BOUND, f"{user} seen by both after {added:.2f} s"

    removed_proc = subprocess.run(
        [str(proxyd_bin()), "users", "--config", str(replicas.config_path), "remove", user],
        capture_output=True,
        text=True,
        env=replicas.env,
        timeout=60,
    )
    assert removed_proc.returncode == 0, removed_proc.stderr
    removed = _until_both(replicas, user, password, 407)
    assert removed < USERS_RELOAD_BOUND, f"{user} still accepted after {removed:.2f} s"
    with capsys.disabled():
        print(f"\n[replicas] users add seen by both in {added:.2f} s, remove in {removed:.2f} s")
