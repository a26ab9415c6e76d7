"""Real clients through a real `proxyd serve`: curl, git, pycurl, wget, requests, raw CONNECT."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from harness import (
    BANNER,
    GIT_FILE,
    GIT_FILE_CONTENT,
    Origins,
    ProxydHandle,
    RawConnection,
    clean_env,
    curl,
    digest_challenges,
    parse_challenge,
    require_tool,
    run_client,
)

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
SCHEMES = ["http", "https"]


def origin_url(origins: Origins, scheme: str, path: str = "/anything") -> str:
    host, port = origins.http if scheme == "http" else origins.https
    return f"{scheme}://{host}:{port}{path}"


def tls_args(origins: Origins, scheme: str) -> list[str]:
    return ["--cacert", str(origins.ca_pem)] if scheme == "https" else []


def assert_no_proxy_headers(headers_json: str) -> None:
    received = {name.lower() for name in json.loads(headers_json)}
    assert "proxy-authorization" not in received, received
    assert "proxy-connection" not in received, received


def assert_digest_challenges(values: list[str], algorithms: tuple[str, ...]) -> None:
    """One Digest challenge per algorithm, in order, each well formed."""
    challenges = [parse_challenge(v) for v in values]
    assert [c["scheme"].lower() for c in challenges] == ["digest"] * len(algorithms), values
    assert [c.get("algorithm", "MD5").upper() for c in challenges] == list(algorithms), values
    for challenge in challenges:
        assert challenge["realm"] == "proxyd"
        assert challenge["qop"] == "auth"
        assert challenge["nonce"]
    nonces = [c["nonce"] for c in challenges]
    assert len(set(nonces)) == len(nonces), f"challenges share a nonce: {values}"


# --------------------------------------------------------------------------- curl

CURL_MODES = ["proxy-digest", "proxy-anyauth", "env-and-curlrc"]


def curl_proxy_setup(
    mode: str, proxyd: ProxydHandle, home: Path
) -> tuple[list[str], dict[str, str]]:
    env = clean_env(home)
    if mode == "proxy-digest":
        return ["--proxy", proxyd.url, "--proxy-digest", "-U", f"{USER}:{PASSWORD}"], env
    if mode == "proxy-anyauth":
        return ["--proxy", proxyd.url, "--proxy-anyauth", "-U", f"{USER}:{PASSWORD}"], env
    assert mode == "env-and-curlrc"
    (home / ".curlrc").write_text("proxy-anyauth\n")
    proxy = proxyd.url_with(USER, PASSWORD)
    env.update(HTTPS_PROXY=proxy, http_proxy=proxy)
    return [], env


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mode", CURL_MODES)
def test_curl_fetches_through_proxy(
    mode: str, scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    args, env = curl_proxy_setup(mode, proxyd, client_home)
    hits = origins.hits(scheme)
    # Two URLs in one curl: the second reuses the connection (and, for http, the nonce
    # with nc=2).
    result = curl(
        [
            *args,
            *tls_args(origins, scheme),
            origin_url(origins, scheme, "/anything"),
            origin_url(origins, scheme, "/headers"),
        ],
        env,
    )
    assert result.returncode == 0, result.describe()
    assert [t.code for t in result.transfers] == [200, 200], result.describe()
    assert result.transfers[0].body == "origin-http /anything"
    assert_no_proxy_headers(result.transfers[1].body)
    assert result.sent_headers("Proxy-Authorization"), "curl never authenticated"
    assert all(v.startswith("Digest ") for v in result.sent_headers("Proxy-Authorization"))
    # Keep-alive both sides: curl kept its proxy connection, proxyd its upstream one.
    assert "Re-using existing connection" in result.stderr, result.describe()
    assert origins.hits(scheme) == hits + 1


@pytest.mark.parametrize("scheme", SCHEMES)
def test_curl_post_body_through_proxy(
    scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path, tmp_path: Path
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"".join(b"line %06d of the posted body\n" % i for i in range(20_000)))
    result = curl(
        [
            "--proxy",
            proxyd.url,
            "--proxy-digest",
            "-U",
            f"{USER}:{PASSWORD}",
            *tls_args(origins, scheme),
            "--data-binary",
            f"@{payload}",
            "-H",
            "Content-Type: application/octet-stream",
            origin_url(origins, scheme, "/echo"),
        ],
        clean_env(client_home),
    )
    assert result.code == 200, result.describe()
    assert result.body.encode() == payload.read_bytes()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "algorithms",
    [("MD5", "SHA-256"), ("SHA-256", "MD5"), ("SHA-256",), ("MD5",)],
    ids="+".join,
)
def test_curl_challenge_orders(
    algorithms: tuple[str, ...],
    scheme: str,
    proxyd_factory,
    origins: Origins,
    client_home: Path,
) -> None:
    proxyd = proxyd_factory(algorithms=algorithms)
    result = curl(
        [
            "--proxy",
            proxyd.url,
            "--proxy-digest",
            "-U",
            f"{USER}:{PASSWORD}",
            *tls_args(origins, scheme),
            origin_url(origins, scheme),
        ],
        clean_env(client_home),
    )
    assert result.returncode == 0, result.describe()
    assert result.code == 200, result.describe()
    assert result.body == "origin-http /anything"
    assert_digest_challenges(result.received_headers("Proxy-Authenticate"), algorithms)
    sent = [parse_challenge(v) for v in result.sent_headers("Proxy-Authorization")]
    assert sent, result.describe()
    used = {c.get("algorithm", "MD5").upper() for c in sent}
    assert used <= set(algorithms), result.describe()
    if len(algorithms) == 1:
        assert used == set(algorithms)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "credentials",
    ["alice:wrong", "mallory:wonderland", "alice:"],
    ids=["password", "user", "empty"],
)
def test_curl_bad_credentials_get_407(
    credentials: str, scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    hits = origins.hits(scheme)
    result = curl(
        [
            "--proxy",
            proxyd.url,
            "--proxy-digest",
            "-U",
            credentials,
            *tls_args(origins, scheme),
            origin_url(origins, scheme),
        ],
        clean_env(client_home),
    )
    if scheme == "http":
        assert result.code == 407, result.describe()
    else:
        assert result.connect == 407, result.describe()
        assert result.returncode != 0
    assert result.sent_headers("Proxy-Authorization"), "curl never tried the credentials"
    assert origins.hits(scheme) == hits, "an upstream connection was opened before auth"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_curl_basic_is_refused_with_digest_challenge(
    scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    result = curl(
        [
            "--proxy",
            proxyd.url,
            "--proxy-basic",
            "-U",
            f"{USER}:{PASSWORD}",
            *tls_args(origins, scheme),
            origin_url(origins, scheme),
        ],
        clean_env(client_home),
    )
    assert (result.code if scheme == "http" else result.connect) == 407, result.describe()
    assert result.sent_headers("Proxy-Authorization")[0].startswith("Basic ")
    assert_digest_challenges(result.received_headers("Proxy-Authenticate"), ("MD5", "SHA-256"))
    proxyd.wait_for_log(r"(?i)\bbasic\b")  # the refusal is logged


# --------------------------------------------------------------------------- git


@pytest.mark.timeout(180)
@pytest.mark.parametrize("auth_method", [None, "digest"], ids=["default-auth", "digest-auth"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_git_clone_through_proxy(
    scheme: str,
    auth_method: str | None,
    proxyd: ProxydHandle,
    origins: Origins,
    client_home: Path,
    tmp_path: Path,
) -> None:
    git = require_tool("git")
    host, port = origins.git_http if scheme == "http" else origins.git_https
    config = ["-c", f"http.proxy={proxyd.url_with(USER, PASSWORD)}"]
    if auth_method:
        config += ["-c", f"http.proxyAuthMethod={auth_method}"]
    if scheme == "https":
        config += ["-c", f"http.sslCAInfo={origins.ca_pem}"]
    dest = tmp_path / "clone"
    proc = run_client(
        [git, *config, "clone", f"{scheme}://{host}:{port}{origins.git_path}", str(dest)],
        clean_env(client_home),
        timeout=120,
    )
    assert proc.returncode == 0, f"git clone failed:\n{proc.stdout}\n{proc.stderr}"
    assert (dest / GIT_FILE).read_text() == GIT_FILE_CONTENT
    assert f"{host}:{port}" in proxyd.log(), "the clone did not go through proxyd"


# --------------------------------------------------------------------------- pycurl


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pycurl_digest(scheme: str, proxyd: ProxydHandle, origins: Origins) -> None:
    pycurl = require_tool("pycurl")
    for path, check in [
        ("/anything", lambda body: body == b"origin-http /anything"),
        ("/headers", lambda body: assert_no_proxy_headers(body.decode()) is None),
    ]:
        buffer = BytesIO()
        c = pycurl.Curl()
        try:
            c.setopt(pycurl.URL, origin_url(origins, scheme, path))
            c.setopt(pycurl.PROXY, proxyd.url)
            c.setopt(pycurl.PROXYUSERPWD, f"{USER}:{PASSWORD}")
            c.setopt(pycurl.PROXYAUTH, pycurl.HTTPAUTH_DIGEST)
            c.setopt(pycurl.WRITEDATA, buffer)
            c.setopt(pycurl.TIMEOUT, 20)
            c.setopt(pycurl.CONNECTTIMEOUT, 10)
            if scheme == "https":
                c.setopt(pycurl.CAINFO, str(origins.ca_pem))
            c.perform()
            assert c.getinfo(pycurl.RESPONSE_CODE) == 200
            if scheme == "https":
                assert c.getinfo(pycurl.HTTP_CONNECTCODE) == 200
        finally:
            c.close()
        assert check(buffer.getvalue()), buffer.getvalue()


# --------------------------------------------------------------------------- Basic-only clients


@pytest.mark.parametrize("scheme", SCHEMES)
def test_wget_gets_clean_407(
    scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    wget = require_tool("wget")
    env = clean_env(client_home, http_proxy=proxyd.url, https_proxy=proxyd.url)
    proc = run_client(
        [
            wget,
            "--no-config",
            "--server-response",
            "--tries=1",
            "--timeout=10",
            f"--proxy-user={USER}",
            f"--proxy-password={PASSWORD}",
            f"--ca-certificate={origins.ca_pem}",
            "--output-document=-",
            origin_url(origins, scheme),
        ],
        env,
    )
    output = proc.stderr
    if scheme == "https":
        # wget reports a refused CONNECT by reason phrase, then gives up on TLS (exit 4).
        assert "Proxy tunneling failed: Proxy Authentication Required" in output, output
        assert proc.returncode == 4, f"wget exit {proc.returncode}:\n{output}"
    else:
        assert "407" in output, output
        # wget shows the response headers: the Digest challenge is there.
        assert proc.returncode == 8, output
        challenges = [
            parse_challenge(line.split(":", 1)[1])
            for line in output.splitlines()
            if line.strip().lower().startswith("proxy-authenticate:")
        ]
        assert challenges and all(c["scheme"].lower() == "digest" for c in challenges), output
    assert "origin-http" not in proc.stdout


def test_requests_http_gets_407_with_digest(proxyd: ProxydHandle, origins: Origins) -> None:
    requests = require_tool("requests")
    proxy = proxyd.url_with(USER, PASSWORD)
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(
            origin_url(origins, "http"), proxies={"http": proxy, "https": proxy}, timeout=10
        )
    assert response.status_code == 407
    challenges = digest_challenges(response.raw.headers)
    assert [c["algorithm"] for c in challenges] == ["MD5", "SHA-256"]
    assert "origin-http" not in response.text


def test_requests_https_connect_raises_407(proxyd: ProxydHandle, origins: Origins) -> None:
    requests = require_tool("requests")
    proxy = proxyd.url_with(USER, PASSWORD)
    with requests.Session() as session:
        session.trust_env = False
        with pytest.raises(requests.exceptions.ProxyError) as excinfo:
            session.get(
                origin_url(origins, "https"),
                proxies={"http": proxy, "https": proxy},
                verify=str(origins.ca_pem),
                timeout=10,
            )
    assert "407" in str(excinfo.value)


# --------------------------------------------------------------------------- CONNECT, server first


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_connect_to_speak_first_server(
    algorithm: str, proxyd: ProxydHandle, origins: Origins
) -> None:
    host, port = origins.speak_first
    with RawConnection(proxyd.address) as conn:
        first, second = conn.request_with_digest(
            "CONNECT", f"{host}:{port}", USER, PASSWORD, algorithm=algorithm
        )
        assert first.status == 407
        assert second is not None and second.status == 200, second
        # The banner comes without the client sending a byte.
        assert conn.recv_until(b"\r\n") == BANNER
        for message in (b"ping\r\n", b"x" * 100_000 + b"\r\n"):
            conn.send(message)
            assert conn.recv_until(b"\r\n", timeout=10) == message


# --------------------------------------------------------------------------- lifecycle


def test_sigterm_stops_proxyd(proxyd: ProxydHandle, origins: Origins) -> None:
    # An idle keep-alive client and an open tunnel: neither holds it up past drain_timeout.
    idle = RawConnection(proxyd.address)
    tunnel = RawConnection(proxyd.address)
    try:
        _, second = tunnel.request_with_digest(
            "CONNECT", "{}:{}".format(*origins.speak_first), USER, PASSWORD
        )
        assert second is not None and second.status == 200
        assert tunnel.recv_until(b"\r\n") == BANNER
        proxyd.stop()
        assert not proxyd.killed, f"SIGTERM did not stop proxyd:\n{proxyd.log()}"
        with pytest.raises(ConnectionRefusedError):
            RawConnection(proxyd.address, timeout=2).close()
    finally:
        idle.close()
        tunnel.close()
