"""`proxyd relay` against real clients: pip, requests, httpx, wget and Node's undici reach
HTTP and HTTPS origins through the relay and a real `proxyd serve`; nonce reuse counted in
proxyd's access log; loopback-only listening; `--pac` routing; the relay's own errors.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_policy import missing
from harness import (
    BANNER,
    DENIED_HOST,
    ORIGIN_HOST,
    PROXY_HOST,
    Origins,
    ProxydHandle,
    RawConnection,
    clean_env,
    free_port,
    proxyd_bin,
    raw_proxy_request,
    require_tool,
    run_client,
)
from relay_kit import (
    NODE_DIR,
    NODE_SCRIPT,
    WHEEL_NAME,
    IndexServer,
    RelayHandle,
    TLSIndexServer,
    build_wheel,
    relay_env,
    upstream_url,
)

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
SCHEMES = ["http", "https"]
RelayFactory = Callable[..., RelayHandle]
# requests keeps a tunnel's socket open after Session.close() (until the process exits),
# and proxyd logs a tunnel when it ends: the origin closing it ends it.
CLOSE = {"Connection": "close"}


# --------------------------------------------------------------------------- fixtures


class Index:
    """The PEP 503 index on 127.0.0.2, over HTTP and HTTPS (its own trustme CA)."""

    def __init__(self, workdir: Path):
        trustme = require_tool("trustme")
        ca = trustme.CA()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(ORIGIN_HOST).configure_cert(context)
        self.ca_pem = workdir / "index-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        self.wheel = build_wheel()
        self.servers: dict[str, IndexServer | TLSIndexServer] = {}
        try:
            self.servers["http"] = IndexServer(self.wheel)
            self.servers["https"] = TLSIndexServer(self.wheel, context)
        except BaseException:
            self.stop()
            raise
        for name, server in self.servers.items():
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"index-{name}",
                daemon=True,
            ).start()

    def port(self, scheme: str) -> int:
        return int(self.servers[scheme].server_address[1])

    def url(self, scheme: str) -> str:
        return f"{scheme}://{ORIGIN_HOST}:{self.port(scheme)}/simple/"

    def paths(self, scheme: str) -> list[str]:
        server = self.servers[scheme]
        with server.hits_lock:
            return list(server.paths)

    def stop(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    started = Index(tmp_path_factory.mktemp("index"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def upstream(proxyd_factory: Any, index: Index) -> ProxydHandle:
    """proxyd with alice, also allowing the index ports on testzone."""
    rule = {
        "name": "index",
        "from": ["any"],
        "to": ["testzone"],
        "ports": [index.port("http"), index.port("https")],
        "auth": "required",
    }
    handle: ProxydHandle = proxyd_factory(extra_rules=[rule])
    return handle


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """relay_factory(upstream, *extra_args, password=, listen=) -> a running relay."""
    handles: list[RelayHandle] = []

    def start(
        upstream: ProxydHandle | tuple[str, int],
        *extra: str,
        password: str = PASSWORD,
        listen: str = f"{PROXY_HOST}:0",
    ) -> RelayHandle:
        home = tmp_path / f"relay{len(handles)}-home"
        home.mkdir()
        args = ["--listen", listen, "--upstream", upstream_url(upstream, USER), "-v", *extra]
        handle = RelayHandle(args, relay_env(home, password))
        handles.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in handles:
            handle.stop()


@pytest.fixture
def relay(relay_factory: RelayFactory, upstream: ProxydHandle) -> RelayHandle:
    return relay_factory(upstream)


# --------------------------------------------------------------------------- helpers


def origin_url(origins: Origins, scheme: str, path: str = "/anything") -> str:
    host, port = origins.http if scheme == "http" else origins.https
    return f"{scheme}://{host}:{port}{path}"


def access_lines(proxy: ProxydHandle, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [line for line in proxy.log().splitlines() if regex.search(line)]


def wait_for_count(proxy: ProxydHandle, pattern: str, count: int, timeout: float = 15) -> None:
    """Until `count` access-log lines match (lines are written as exchanges end)."""
    deadline = time.monotonic() + timeout
    while len(access_lines(proxy, pattern)) < count:
        if time.monotonic() > deadline:
            found = access_lines(proxy, pattern)
            raise AssertionError(
                f"{len(found)} of {count} lines matching {pattern!r}; log:\n{proxy.log()}"
            )
        time.sleep(0.05)


def denied_407s(proxy: ProxydHandle) -> int:
    return len(access_lines(proxy, r" TCP_DENIED/407 "))


def assert_alice_used(proxy: ProxydHandle, origins: Origins, scheme: str, path: str) -> None:
    """proxyd logged alice for the request (HTTP) or the tunnel (HTTPS) to the origin."""
    host, port = origins.http if scheme == "http" else origins.https
    if scheme == "http":
        url = re.escape(f"http://{host}:{port}{path}")
        proxy.wait_for_log(rf" TCP_MISS/200 \d+ GET {url} {USER} ")
    else:
        proxy.wait_for_log(rf" TCP_TUNNEL/200 \d+ CONNECT {re.escape(f'{host}:{port}')} {USER} ")


def proxies(relay: RelayHandle) -> dict[str, str]:
    return {"http": relay.url, "https": relay.url}


# --------------------------------------------------------------------------- clients


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pip_downloads_a_wheel_through_the_relay(
    scheme: str,
    index: Index,
    upstream: ProxydHandle,
    relay: RelayHandle,
    client_home: Path,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    args = [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--timeout",
        "20",
        "--retries",
        "0",
        "--proxy",
        relay.url,
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--dest",
        str(dest),
        "--index-url",
        index.url(scheme),
    ]
    if scheme == "http":
        args += ["--trusted-host", f"{ORIGIN_HOST}:{index.port(scheme)}"]
    else:
        args += ["--cert", str(index.ca_pem)]
    proc = run_client([*args, "demo"], clean_env(client_home), timeout=90)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\nrelay:\n{relay.log()}"
    downloaded = dest / WHEEL_NAME
    assert downloaded.is_file(), f"{list(dest.iterdir())}\n{proc.stdout}"
    assert downloaded.read_bytes() == index.wheel
    assert f"/files/{WHEEL_NAME}" in index.paths(scheme)
    port = index.port(scheme)
    if scheme == "http":
        wheel_url = re.escape(f"http://{ORIGIN_HOST}:{port}/files/{WHEEL_NAME}")
        upstream.wait_for_log(rf" TCP_MISS/200 \d+ GET {wheel_url} {USER} ")
    else:
        upstream.wait_for_log(rf" TCP_TUNNEL/200 \d+ CONNECT {ORIGIN_HOST}:{port} {USER} ")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_requests_through_the_relay(
    scheme: str, origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    requests = require_tool("requests")
    with requests.Session() as session:
        session.trust_env = False  # no proxy or CA variables from this machine
        response = session.get(
            origin_url(origins, scheme, "/requests"),
            proxies=proxies(relay),
            verify=str(origins.ca_pem),
            timeout=20,
        )
        assert response.status_code == 200, response.text
        assert response.text == "origin-http /requests"
        headers = session.get(
            origin_url(origins, scheme, "/headers"),
            headers=CLOSE,
            proxies=proxies(relay),
            verify=str(origins.ca_pem),
            timeout=20,
        ).json()
    received = {name.lower() for name in headers}
    assert "proxy-authorization" not in received, headers
    assert_alice_used(upstream, origins, scheme, "/requests")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_httpx_through_the_relay(
    scheme: str, origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    httpx = require_tool("httpx")
    verify = ssl.create_default_context(cafile=str(origins.ca_pem))
    with httpx.Client(proxy=relay.url, verify=verify, trust_env=False, timeout=20) as client:
        response = client.get(origin_url(origins, scheme, "/httpx"))
    assert response.status_code == 200, response.text
    assert response.text == "origin-http /httpx"
    assert_alice_used(upstream, origins, scheme, "/httpx")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_wget_through_the_relay(
    scheme: str,
    origins: Origins,
    upstream: ProxydHandle,
    relay: RelayHandle,
    client_home: Path,
    tmp_path: Path,
) -> None:
    wget = require_tool("wget")
    out = tmp_path / "wget.out"
    proc = run_client(
        [
            wget,
            "--no-config",
            "--quiet",
            "--tries=1",
            "--timeout=20",
            "-e",
            "use_proxy=yes",
            "-e",
            f"http_proxy={relay.url}",
            "-e",
            f"https_proxy={relay.url}",
            f"--ca-certificate={origins.ca_pem}",
            "-O",
            str(out),
            origin_url(origins, scheme, "/wget"),
        ],
        clean_env(client_home),
    )
    assert proc.returncode == 0, f"{proc.stderr}\nrelay:\n{relay.log()}"
    assert out.read_text() == "origin-http /wget"
    assert_alice_used(upstream, origins, scheme, "/wget")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_node_undici_proxy_agent_through_the_relay(
    scheme: str, origins: Origins, upstream: ProxydHandle, relay: RelayHandle, client_home: Path
) -> None:
    node = require_tool("node")
    if not (NODE_DIR / "node_modules" / "undici").is_dir():
        missing(f"undici is not installed in {NODE_DIR} (make test runs npm ci there)")
    proc = run_client(
        [node, str(NODE_SCRIPT), relay.url, origin_url(origins, scheme, "/undici")]
        + ([str(origins.ca_pem)] if scheme == "https" else []),
        clean_env(client_home),
        cwd=NODE_DIR,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\nrelay:\n{relay.log()}"
    result = json.loads(proc.stdout)
    assert result == {"status": 200, "body": "origin-http /undici"}
    assert_alice_used(upstream, origins, scheme, "/undici")


# --------------------------------------------------------------------------- nonce reuse

N = 20


def test_one_keep_alive_client_connection_costs_one_407(
    origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    with RawConnection(relay.address) as conn:
        for i in range(N):
            response = conn.request("GET", origin_url(origins, "http", f"/nonce/{i}"))
            assert response.status == 200, response.text
            assert response.text == f"origin-http /nonce/{i}"
            assert response.header("Connection") != "close"
    wait_for_count(upstream, rf" TCP_MISS/200 \d+ GET http://\S+/nonce/\d+ {USER} ", N)
    assert denied_407s(upstream) == 1, upstream.log()


def test_new_client_connections_still_cost_one_407(
    origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    requests = require_tool("requests")
    for i in range(N):  # a new connection to the relay each time
        with RawConnection(relay.address) as conn:
            response = conn.request(
                "GET", origin_url(origins, "http", f"/fresh/{i}"), {"Connection": "close"}
            )
            assert response.status == 200, response.text
    for i in range(5):  # and CONNECT tunnels, each a new upstream connection
        with requests.Session() as session:
            session.trust_env = False
            response = session.get(
                origin_url(origins, "https", f"/tunnel/{i}"),
                headers=CLOSE,
                proxies=proxies(relay),
                verify=str(origins.ca_pem),
                timeout=20,
            )
            assert response.status_code == 200, response.text
    wait_for_count(upstream, rf" TCP_MISS/200 \d+ GET http://\S+/fresh/\d+ {USER} ", N)
    wait_for_count(upstream, rf" TCP_TUNNEL/200 \d+ CONNECT \S+ {USER} ", 5)
    assert denied_407s(upstream) == 1, upstream.log()


# --------------------------------------------------------------------------- listening


def run_relay_cli(
    args: list[str], home: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return run_client(
        [str(proxyd_bin()), "relay", *args], relay_env(home, PASSWORD), timeout=timeout
    )


def test_non_loopback_listen_is_refused_without_allow_remote(
    upstream: ProxydHandle, client_home: Path
) -> None:
    proc = run_relay_cli(
        ["--listen", "0.0.0.0:0", "--upstream", upstream_url(upstream, USER)], client_home
    )
    assert proc.returncode != 0
    assert "--allow-remote" in proc.stderr, proc.stderr
    assert "listening on" not in proc.stderr + proc.stdout


def test_other_loopback_address_is_fine(
    relay_factory: RelayFactory, upstream: ProxydHandle, origins: Origins
) -> None:
    relay = relay_factory(upstream, listen="127.0.0.5:0")
    assert relay.host == "127.0.0.5"
    assert "warning" not in relay.log()
    response = raw_proxy_request(relay.address, "GET", origin_url(origins, "http", "/lo5"))
    assert response.status == 200
    assert response.text == "origin-http /lo5"


def test_allow_remote_listens_and_warns(
    relay_factory: RelayFactory, upstream: ProxydHandle
) -> None:
    relay = relay_factory(upstream, "--allow-remote", listen="0.0.0.0:0")
    try:
        assert relay.host == "0.0.0.0"
        assert re.search(r"warning: listening on 0\.0\.0\.0", relay.log()), relay.log()
    finally:
        assert relay.stop() == 0


# --------------------------------------------------------------------------- PAC


def test_pac_sends_zones_through_proxyd_and_the_rest_direct(
    proxyd_factory: Any, relay_factory: RelayFactory, origins: Origins
) -> None:
    port = free_port(PROXY_HOST)
    proxy: ProxydHandle = proxyd_factory(
        listen=f"{PROXY_HOST}:{port}", public_address=f"{PROXY_HOST}:{port}"
    )
    pac = raw_proxy_request(proxy, "GET", "/proxy.pac", host=f"{PROXY_HOST}:{port}")
    assert pac.status == 200
    assert f"PROXY {PROXY_HOST}:{port}" in pac.text
    relay = relay_factory(proxy, "--pac", f"{proxy.url}/proxy.pac")

    allowed = raw_proxy_request(relay.address, "GET", origin_url(origins, "http", "/via-pac"))
    assert allowed.status == 200
    assert allowed.text == "origin-http /via-pac"
    assert_alice_used(proxy, origins, "http", "/via-pac")

    host, denied_port = origins.denied_http
    direct = raw_proxy_request(relay.address, "GET", f"http://{host}:{denied_port}/direct")
    assert direct.status == 200, direct.text
    assert direct.text == "denied-origin /direct"
    assert origins.denied_hits() == 1
    # HTTPS through the PAC: CONNECT to the allowed origin goes through proxyd too.
    requests = require_tool("requests")
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(
            origin_url(origins, "https", "/via-pac"),
            headers=CLOSE,
            proxies=proxies(relay),
            verify=str(origins.ca_pem),
            timeout=20,
        )
    assert response.status_code == 200
    assert_alice_used(proxy, origins, "https", "/via-pac")
    assert DENIED_HOST not in proxy.log()


# --------------------------------------------------------------------------- errors


def test_wrong_password_is_502_and_the_relay_keeps_running(
    relay_factory: RelayFactory, upstream: ProxydHandle, origins: Origins
) -> None:
    relay = relay_factory(upstream, password="not-the-password")
    for _ in range(2):
        response = raw_proxy_request(relay.address, "GET", origin_url(origins, "http", "/x"))
        assert response.status == 502, response.text
        assert response.text.startswith("proxyd relay: ")
        assert "refused the credentials" in response.text, response.text
        assert relay.running()
    assert origins.hits("http") == 0
    upstream.wait_for_log(r" TCP_DENIED/407 .* auth=bad_response")


def test_denied_destination_is_proxyds_403_passed_through(
    origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    host, port = origins.denied_http
    response = raw_proxy_request(relay.address, "GET", f"http://{host}:{port}/nope")
    assert response.status == 403, response.text
    assert not response.text.startswith("proxyd relay: ")
    tunnel = raw_proxy_request(relay.address, "CONNECT", f"{host}:{port}")
    assert tunnel.status == 403, tunnel.text
    assert origins.denied_hits() == 0
    upstream.wait_for_log(rf" TCP_DENIED/403 \d+ GET http://{re.escape(host)}:{port}/nope ")


def test_upstream_down_is_502(relay_factory: RelayFactory, origins: Origins) -> None:
    relay = relay_factory((PROXY_HOST, free_port(PROXY_HOST)))
    response = raw_proxy_request(relay.address, "GET", origin_url(origins, "http", "/down"))
    assert response.status == 502
    assert response.text.startswith("proxyd relay: "), response.text
    assert "can't reach proxy" in response.text
    tunnel = raw_proxy_request(relay.address, "CONNECT", "{}:{}".format(*origins.https))
    assert tunnel.status == 502
    assert relay.running()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", id="origin-form"),
        pytest.param(b"GET ftp://127.0.0.2/x HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n", id="ftp"),
        pytest.param(b"CONNECT 127.0.0.2 HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n", id="no-port"),
    ],
)
def test_bad_requests_are_400(
    raw: bytes, upstream: ProxydHandle, relay: RelayHandle, origins: Origins
) -> None:
    with RawConnection(relay.address) as conn:
        conn.send(raw)
        response = conn.read_response()
        assert response.status == 400, response.text
        assert response.text.startswith("proxyd relay: "), response.text
        assert conn.is_closed_by_peer()
    assert relay.running()
    assert origins.hits("http") == 0
    assert access_lines(upstream, r" \S+/\d{3} \d+ [A-Z]+ ") == []


def test_post_bodies_arrive_intact(
    origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    requests = require_tool("requests")
    payload = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
    with requests.Session() as session:
        session.trust_env = False
        for scheme in SCHEMES:
            response = session.post(
                origin_url(origins, scheme, "/post"),
                data=payload,
                proxies=proxies(relay),
                verify=str(origins.ca_pem),
                timeout=30,
            )
            assert response.status_code == 200
            assert response.content == payload
        # Chunked upload: the relay buffers it and sends it on with a Content-Length.
        chunked = session.post(
            origin_url(origins, "http", "/post"),
            data=iter([b"first chunk;", b"second chunk;", b"last"]),
            proxies=proxies(relay),
            timeout=30,
        )
        assert chunked.status_code == 200
        assert chunked.content == b"first chunk;second chunk;last"


def test_connect_carries_bytes_sent_with_the_connect_head(
    origins: Origins, upstream: ProxydHandle, relay: RelayHandle
) -> None:
    target = "{}:{}".format(*origins.speak_first)
    early = b"early bytes in the same write\n"
    with RawConnection(relay.address) as conn:
        conn.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + early)
        response = conn.read_response("CONNECT")
        assert response.status == 200, response.text
        assert conn.recv_exact(len(BANNER)) == BANNER
        assert conn.recv_exact(len(early)) == early
        conn.send(b"and after\n")
        assert conn.recv_exact(len(b"and after\n")) == b"and after\n"
    upstream.wait_for_log(rf" TCP_TUNNEL/200 \d+ CONNECT {re.escape(target)} {USER} ")
