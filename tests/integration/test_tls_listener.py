"""The TLS listener (`tls_listen`): real clients speak TLS to proxyd, Basic inside it.

curl with Digest and Basic, wget on the TLS port (plain text: refused, logged, the lock),
TLS on the plain port, the plain listener's Basic refusal naming the TLS port, the PAC's
HTTPS directive, certificate rotation under an open tunnel, and bad certificate files at
check-config, at SIGHUP and at a file change. The Python, Node, pip and OpenStack
clients are in test_tls_clients.py; Chromium in test_tls_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    IO_TIMEOUT,
    PROXY_HOST,
    Origins,
    ProxydHandle,
    clean_env,
    curl,
    free_port,
    proxyd_bin,
    require_tool,
    run_client,
)
from tls_kit import (
    ProxyCA,
    auth_section,
    expired_pair,
    proxy_ca,
    serial_of,
    start_tls_proxyd,
    tls_connect,
    tls_url,
)

USER, PASSWORD = "alice", "wonderland"


@pytest.fixture
def ca(tmp_path: Path) -> ProxyCA:
    return proxy_ca(tmp_path / "proxy-ca")


def access_lines(proxy: ProxydHandle, needle: str) -> list[str]:
    return [line for line in proxy.log().splitlines() if needle in line and " rule=" in line]


def wait_lines(proxy: ProxydHandle, needle: str, count: int = 1) -> list[str]:
    """The access-log lines holding `needle`, once there are `count` (they come through a
    pipe, a moment after the client has its answer)."""
    deadline = time.monotonic() + IO_TIMEOUT
    while len(lines := access_lines(proxy, needle)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def origin(origins: Origins, scheme: str, path: str = "/tls") -> str:
    host, port = origins.http if scheme == "http" else origins.https
    return f"{scheme}://{host}:{port}{path}"


# --------------------------------------------------------------------------- curl


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("auth", ["basic", "digest"])
def test_curl_through_the_tls_listener(
    proxyd_factory: Any,
    ca: ProxyCA,
    origins: Origins,
    client_env: dict[str, str],
    scheme: str,
    auth: str,
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(tls_port), "-U", f"{USER}:{PASSWORD}"]
    args += ["--proxy-basic"] if auth == "basic" else ["--proxy-digest"]
    if scheme == "https":
        args += ["--cacert", str(origins.ca_pem)]
    result = curl([*args, origin(origins, scheme)], client_env)
    assert result.returncode == 0, result.stderr
    assert [t.code for t in result.transfers] == [200]
    assert "origin-http /tls" in result.transfers[0].body or scheme == "https"
    lines = wait_lines(proxy, f" {USER} ")
    assert lines and " auth=ok " in lines[-1], proxy.log()
    assert PASSWORD not in proxy.log()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_the_tls_listener_speaks_tls_1_2_and_up_only(ca: ProxyCA, proxyd_factory: Any) -> None:
    import ssl

    _, tls_port = start_tls_proxyd(proxyd_factory, ca)
    context = ssl.create_default_context(cafile=str(ca.pem))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection((PROXY_HOST, tls_port), timeout=IO_TIMEOUT) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        context.wrap_socket(raw, server_hostname=PROXY_HOST)
    with tls_connect(tls_port, ca) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")


def test_basic_over_tls_is_refused_unless_configured(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca, basic_over_tls=False)
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(tls_port, USER, PASSWORD)]
    result = curl([*args, "--proxy-basic", origin(origins, "http")], client_env)
    assert [t.code for t in result.transfers] == [407]
    assert wait_lines(proxy, " auth=basic ")


def test_the_407_inside_tls_offers_digest_then_basic(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins
) -> None:
    _, tls_port = start_tls_proxyd(proxyd_factory, ca)
    with tls_connect(tls_port, ca) as sock:
        sock.sendall(f"GET {origin(origins, 'http')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = _read_head(sock)
    challenges = [line for line in head.split("\r\n") if line.startswith("Proxy-Authenticate")]
    assert [c.split()[1] for c in challenges] == ["Digest", "Digest", "Basic"], head


def test_basic_on_the_plain_listener_names_the_tls_listener(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    result = curl(
        ["-x", proxy.url_with(USER, PASSWORD), "--proxy-basic", origin(origins, "http")],
        client_env,
    )
    assert [t.code for t in result.transfers] == [407]
    assert f"https://{PROXY_HOST}:{tls_port}" in result.transfers[0].body
    assert "Basic realm" not in result.stderr  # no Basic challenge on plain text


def test_tls_on_the_plain_port_is_served_as_tls(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    """A client given https://proxy:PLAIN_PORT gets TLS there too (README: why)."""
    proxy, _ = start_tls_proxyd(proxyd_factory, ca)
    url = f"https://{USER}:{PASSWORD}@{PROXY_HOST}:{proxy.port}"
    result = curl(["--proxy-cacert", str(ca.pem), "-x", url, origin(origins, "http")], client_env)
    assert [t.code for t in result.transfers] == [200], result.stderr
    metrics = _metrics(proxy)
    assert 'proxyd_tls_handshakes_total{result="ok"} 1.0' in metrics
    assert 'listener="tls"' in metrics


def test_the_json_log_and_the_metrics_name_the_listener(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str], tmp_path: Path
) -> None:
    proxy, tls_port = start_tls_proxyd(
        proxyd_factory, ca, access_log={"path": "-", "format": "json"}
    )
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(tls_port, USER, PASSWORD)]
    assert [t.code for t in curl([*args, origin(origins, "http")], client_env).transfers] == [200]
    plain = curl(
        ["--proxy-digest", "-x", proxy.url_with(USER, PASSWORD), origin(origins, "http")],
        client_env,
    )
    assert [t.code for t in plain.transfers] == [200]
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
        if len([r for r in records if r["status"] == 200]) >= 2:
            break
        time.sleep(0.05)
    served = [r["listener"] for r in records if r["status"] == 200]
    assert served == ["tls", "http"], records


# --------------------------------------------------------------------------- plain text on TLS


def test_wget_on_the_tls_port_gets_the_plaintext_refusal_and_is_logged(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    """wget ignores the https scheme of a proxy and sends CONNECT with Basic in clear."""
    wget = require_tool("wget")
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    env = {**client_env, "https_proxy": tls_url(tls_port, USER, PASSWORD)}
    proc = run_client(
        [
            wget,
            "-q",
            "-O",
            "-",
            "--tries=1",
            "--timeout=10",
            "--no-check-certificate",
            origin(origins, "https"),
        ],
        env,
        timeout=30,
    )
    assert proc.returncode != 0
    lines = wait_lines(proxy, " auth=plaintext_on_tls ")
    assert lines, proxy.log()
    assert f" {USER} " in lines[0] and "CONNECT" in lines[0] and "/400 " in lines[0]
    assert PASSWORD not in proxy.log()
    assert 'proxyd_auth_failures_total{reason="plaintext_on_tls"} 1.0' in _metrics(proxy)
    # Not locked unless asked for: the same password still works over TLS.
    result = curl(
        [
            "--proxy-cacert",
            str(ca.pem),
            "-x",
            tls_url(tls_port, USER, PASSWORD),
            origin(origins, "http"),
        ],
        client_env,
    )
    assert [t.code for t in result.transfers] == [200]


def test_the_plaintext_answer_is_readable_plain_text(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins
) -> None:
    _, tls_port = start_tls_proxyd(proxyd_factory, ca)
    with socket.create_connection((PROXY_HOST, tls_port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"GET {origin(origins, 'http')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"plain text on the TLS port" in answer


def test_lock_on_plaintext_locks_a_user_whose_password_crossed_in_clear(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    wget = require_tool("wget")
    proxy, tls_port = start_tls_proxyd(
        proxyd_factory, ca, lock_on_plaintext=True, users={USER: PASSWORD, "bob": "bobsecret1"}
    )
    # A wrong password in clear locks nobody (else anyone could lock anyone out).
    env = {**client_env, "https_proxy": tls_url(tls_port, "bob", "not-his-password")}
    run_client([wget, "-q", "-O", "-", "--tries=1", origin(origins, "https")], env, timeout=30)
    env = {**client_env, "https_proxy": tls_url(tls_port, USER, PASSWORD)}
    run_client([wget, "-q", "-O", "-", "--tries=1", origin(origins, "https")], env, timeout=30)
    proxy.wait_for_log(rf"locked user {USER}: its password was sent in clear")
    users_file = proxy.config_path.parent / "users.digest"
    lines = {line.split(":")[0]: line for line in users_file.read_text().splitlines()}
    assert lines[USER].split(":")[2].startswith("!")
    assert not lines["bob"].split(":")[2].startswith("!")
    assert oct(users_file.stat().st_mode & 0o777) == "0o600"
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(tls_port, USER, PASSWORD)]
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:  # the users file is re-read within about a second
        codes = [t.code for t in curl([*args, origin(origins, "http")], client_env).transfers]
        if codes == [407]:
            break
        time.sleep(0.2)
    assert codes == [407]
    assert wait_lines(proxy, " auth=locked ")
    listed = subprocess.run(
        [str(proxyd_bin()), "users", "--config", str(proxy.config_path), "list"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    assert "LOCKED" in listed
    # A new password unlocks.
    subprocess.run(
        [
            str(proxyd_bin()),
            "users",
            "--config",
            str(proxy.config_path),
            "passwd",
            USER,
            "--password-stdin",
        ],
        input="a-new-password\n",
        text=True,
        env=clean_env(),
        check=True,
    )
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(tls_port, USER, "a-new-password")]
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        codes = [t.code for t in curl([*args, origin(origins, "http")], client_env).transfers]
        if codes == [200]:
            break
        time.sleep(0.2)
    assert codes == [200]


# --------------------------------------------------------------------------- PAC


def test_the_pac_says_https_first_then_proxy(proxyd_factory: Any, ca: ProxyCA) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    with socket.create_connection(proxy.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET /proxy.pac HTTP/1.1\r\nHost: proxy.test:%d\r\n\r\n" % proxy.port)
        pac = _read_head_and_body(sock)
    assert f'"HTTPS proxy.test:{tls_port}; PROXY proxy.test:{proxy.port}"' in pac
    printed = subprocess.run(
        [str(proxyd_bin()), "pac", "--config", str(proxy.config_path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    assert "HTTPS 127.0.0.1:0; PROXY 127.0.0.1:0" in printed  # the config's own ports


# --------------------------------------------------------------------------- certificates


def _open_tunnel(tls_port: int, ca: ProxyCA, origins: Origins) -> Any:
    """A TLS connection to the proxy carrying a CONNECT tunnel to the speak-first origin."""
    sock = tls_connect(tls_port, ca)
    import base64

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    host, port = origins.speak_first
    sock.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
    )
    head = _read_head(sock)
    assert head.startswith("HTTP/1.1 200"), head
    assert _read_exactly(sock, len(b"SSH-2.0-proxyd-test\r\n")).startswith(b"SSH-2.0")
    return sock


def _echo(sock: Any, data: bytes) -> bytes:
    sock.sendall(data)
    return _read_exactly(sock, len(data))


def test_certificate_rotation_keeps_open_tunnels_and_serves_the_new_one(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    tunnel = _open_tunnel(tls_port, ca, origins)
    old_serial = serial_of(tunnel)
    # certbot's way: new files written, then moved over the old ones.
    chain, key = ca.issue("renewed")
    served = proxy.config_path.parent.parent / "proxy-ca"
    os.replace(key, served / "tls.key")
    os.replace(chain, served / "tls.crt")
    proxy.wait_for_log(r"certificate reloaded")
    with tls_connect(tls_port, ca) as fresh:
        assert serial_of(fresh) != old_serial
    assert _echo(tunnel, b"still here\n") == b"still here\n"
    tunnel.close()
    assert 'proxyd_reloads_total{result="ok",what="certificate"} 1.0' in _metrics(
        proxy
    ) or 'proxyd_reloads_total{what="certificate",result="ok"} 1.0' in _metrics(proxy)


@pytest.mark.parametrize("fault", ["wrong_pair", "expired", "unreadable", "not_pem"])
def test_bad_certificate_files_are_refused_everywhere_and_the_old_one_keeps_serving(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, tmp_path: Path, fault: str
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca, pid_file="proxyd.pid")
    with tls_connect(tls_port, ca) as first:
        serial = serial_of(first)
    bad = tmp_path / "bad"
    bad.mkdir()
    served = proxy.config_path.parent.parent / "proxy-ca"
    if fault == "wrong_pair":
        other_chain, _ = ca.issue("other")
        shutil.copy(other_chain, bad / "tls.crt")
        shutil.copy(served / "tls.key", bad / "tls.key")
        expected = "not the key of"
    elif fault == "expired":
        chain, key = expired_pair(ca)
        shutil.copy(chain, bad / "tls.crt")
        shutil.copy(key, bad / "tls.key")
        expected = "expired on 2020-01-31"
    elif fault == "unreadable":
        shutil.copy(served / "tls.crt", bad / "tls.crt")
        expected = "No such file or directory"  # readable by root whatever its mode
    else:
        (bad / "tls.crt").write_text("not a certificate\n")
        shutil.copy(served / "tls.key", bad / "tls.key")
        expected = "no PEM certificate"
    # check-config on a config naming the bad files
    config_text = proxy.config_path.read_text()
    bad_config = proxy.config_path.parent / "bad.yaml"
    bad_config.write_text(config_text.replace(str(served), str(bad)))
    checked = subprocess.run(
        [str(proxyd_bin()), "check-config", str(bad_config)],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert checked.returncode == 1 and expected in checked.stdout, checked.stdout
    assert "Traceback" not in checked.stdout + checked.stderr
    # SIGHUP to that config: refused, the old certificate keeps serving
    original = proxy.config_path.read_text()
    proxy.config_path.write_text(bad_config.read_text())
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for_log("reload refused")
    assert expected in proxy.log()
    proxy.config_path.write_text(original)
    # the served files themselves go bad: refused once, old one still serving
    for name in ("tls.crt", "tls.key"):
        if (bad / name).exists():
            shutil.copy(bad / name, served / name)
        else:
            (served / name).unlink()
    proxy.wait_for_log("certificate reload refused")
    with tls_connect(tls_port, ca) as again:
        assert serial_of(again) == serial
    assert "Traceback" not in proxy.log()


def test_a_bad_certificate_stops_the_start_with_a_clear_error(
    ca: ProxyCA, proxyd_factory: Any
) -> None:
    chain, key = expired_pair(ca)
    with pytest.raises(AssertionError, match="expired on 2020-01-31"):
        proxyd_factory(
            tls_listen=f"{PROXY_HOST}:0", tls={"certificate": str(chain), "key": str(key)}
        )


# --------------------------------------------------------------------------- the relay inside TLS


def test_a_tls_tunnel_carries_megabytes_both_ways_intact(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins
) -> None:
    """The user-space relay's flow control: 16 MiB echoed while it is still being sent.
    The client is asyncio's (one SSL object must not be driven from two threads)."""
    import asyncio
    import base64
    import hashlib
    import ssl

    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    payload = os.urandom(16 * 1024 * 1024)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    host, port = origins.speak_first

    async def echo() -> bytes:
        context = ssl.create_default_context(cafile=str(ca.pem))
        reader, writer = await asyncio.open_connection(
            PROXY_HOST, tls_port, ssl=context, server_hostname=PROXY_HOST
        )
        writer.write(
            f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert (await reader.readexactly(len(b"SSH-2.0-proxyd-test\r\n"))).startswith(b"SSH")

        async def send() -> None:
            for i in range(0, len(payload), 65536):
                writer.write(payload[i : i + 65536])
                await writer.drain()

        sending = asyncio.create_task(send())
        echoed = await reader.readexactly(len(payload))
        await sending
        writer.close()
        return echoed

    echoed = asyncio.run(asyncio.wait_for(echo(), 60))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    line = wait_lines(proxy, " CONNECT ")[-1]
    assert f"up={len(payload)}" in line and " auth=ok " in line


def test_bytes_sent_with_the_connect_inside_tls_reach_the_server_first(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins
) -> None:
    import base64

    _, tls_port = start_tls_proxyd(proxyd_factory, ca)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    host, port = origins.speak_first
    early = b"early bytes, before the 200\n" * 1000
    with tls_connect(tls_port, ca) as sock:
        sock.sendall(
            f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
            + early
        )
        head = _read_head(sock)
        assert head.startswith("HTTP/1.1 200"), head
        rest = head.encode("latin-1").partition(b"\r\n\r\n")[2]
        banner = b"SSH-2.0-proxyd-test\r\n"
        got = rest + _read_exactly(sock, len(banner) + len(early) - len(rest))
        assert got == banner + early


def test_an_idle_tls_tunnel_is_closed(proxyd_factory: Any, ca: ProxyCA, origins: Origins) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca, limits={"idle_timeout": 2})
    tunnel = _open_tunnel(tls_port, ca, origins)
    started = time.monotonic()
    tunnel.settimeout(IO_TIMEOUT)
    with contextlib.suppress(ConnectionError):  # closed: an abort may come as a reset
        assert tunnel.recv(1) == b""
    assert time.monotonic() - started < 8
    assert wait_lines(proxy, " CONNECT ")


def test_handshake_noise_is_counted_and_harmless(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    for noise in (b"\x16\x03\x01\x00\x05hello", b"\x16" + os.urandom(300)):
        with socket.create_connection((PROXY_HOST, tls_port), timeout=IO_TIMEOUT) as sock:
            sock.sendall(noise)
            with contextlib.suppress(ConnectionError):
                _read_all(sock)
    deadline = time.monotonic() + IO_TIMEOUT
    while 'proxyd_tls_handshakes_total{result="failed"} 2.0' not in (m := _metrics(proxy)):
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(tls_port, USER, PASSWORD)]
    assert [t.code for t in curl([*args, origin(origins, "http")], client_env).transfers] == [200]
    assert "Traceback" not in proxy.log()
    # One warning per interval, with a count: the first failure says so at once.
    assert proxy.log().count("TLS handshake failed") == 1


# --------------------------------------------------------------------------- workers


def test_the_tls_listener_under_workers(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    """Every worker binds the TLS port too (SO_REUSEPORT); the supervisor sums the metrics."""
    port = free_port(PROXY_HOST)
    chain, key = ca.issue()
    proxy = proxyd_factory(
        tls_listen=f"{PROXY_HOST}:{port}",
        tls={"certificate": str(chain), "key": str(key)},
        auth=auth_section(basic_over_tls=True),
        admin_listen=f"{PROXY_HOST}:0",
        serve_args=["--workers", "2"],
    )
    proxy.wait_for_log(rf"TLS listening on {PROXY_HOST}:{port}")
    args = ["--proxy-cacert", str(ca.pem), "-x", tls_url(port, USER, PASSWORD)]
    urls = [origin(origins, "http", f"/w{i}") for i in range(12)]
    for url in urls:  # one curl per URL: a new TLS connection each, spread by the kernel
        assert [t.code for t in curl([*args, url], client_env).transfers] == [200]
    metrics = _metrics(proxy)
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("proxyd_requests_total{")
        and 'listener="tls"' in line
        and 'status="200"' in line
    )
    assert served == len(urls), metrics


def test_workers_refuse_a_tls_port_of_zero(ca: ProxyCA, proxyd_factory: Any) -> None:
    chain, key = ca.issue()
    with pytest.raises(AssertionError, match="needs a fixed tls_listen port"):
        proxyd_factory(
            tls_listen=f"{PROXY_HOST}:0",
            tls={"certificate": str(chain), "key": str(key)},
            serve_args=["--workers", "2"],
        )


# --------------------------------------------------------------------------- helpers


def _metrics(proxy: ProxydHandle) -> str:
    import urllib.request

    host, port = _admin(proxy)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=IO_TIMEOUT) as r:
        return r.read().decode()


def _admin(proxy: ProxydHandle) -> tuple[str, int]:
    match = proxy.wait_for_log(r"proxyd: admin listening on (\S+):(\d+)")
    return match.group(1), int(match.group(2))


def _read_head(sock: Any) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def _read_head_and_body(sock: Any) -> str:
    data = _read_head(sock)
    head, _, body = data.partition("\r\n\r\n")
    length = int(
        next(
            line.split(":")[1]
            for line in head.split("\r\n")
            if line.lower().startswith("content-length")
        )
    )
    rest = body.encode("latin-1")
    while len(rest) < length:
        rest += sock.recv(65536)
    return rest.decode()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_exactly(sock: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data
