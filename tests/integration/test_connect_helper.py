"""`proxyd connect` against real components: OpenSSH through a real proxyd and a real Squid.

ssh runs the helper as its ProxyCommand to a real sshd on 127.0.0.2; the same session goes
through Squid with `digest_file_auth` (the second real Digest proxy) so the helper is not
tuned to our own server. Refusals are checked on the helper's exit status and its one-line
message. Everything is loopback and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path

import pytest
from harness import (
    BANNER,
    DENIED_HOST,
    ORIGIN_HOST,
    PROXY_HOST,
    Origins,
    ProxydHandle,
    add_user,
    clean_env,
    digest_response,
    free_port,
    parse_challenge,
    proxyd_bin,
    raw_proxy_request,
    require_tool,
    write_proxyd_config,
)
from squid_kit import DIGEST_HELPER, SQUID, Squid, squid_version, start_squid
from sshd_kit import SSHD, SshTarget, start_sshd

pytestmark = pytest.mark.timeout(120)

ProxydFactory = Callable[..., ProxydHandle]

USER, PASSWORD = "alice", "wonderland"
HELLO = "echo hello-$((6*7))"
BIG = 5_000_000  # bytes each way for the binary transfer
RUN_TIMEOUT = 60.0
VERBOSE_RE = re.compile(
    r"^proxyd connect: tunnel to (?P<target>\S+) via (?P<proxy>\S+) \((?P<how>[^)]*)\)$", re.M
)

# Exit statuses of `proxyd connect` (proxy.client.tunnel.ConnectExit), spelled out here so a
# renumbering is a visible test change, not a silent one.
EXIT_OK, EXIT_LOCAL, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_DENIED, EXIT_UPSTREAM = 0, 1, 4, 5, 6, 7


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ssh_target(tmp_path_factory: pytest.TempPathFactory) -> Generator[SshTarget, None, None]:
    require_tool(SSHD)
    require_tool("ssh")
    require_tool("ssh-keygen")
    target = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope="module")
def squid_closed_port() -> int:
    """A port on 127.0.0.2 nothing listens on; Squid allows CONNECT to it (for 503)."""
    return free_port(ORIGIN_HOST)


@pytest.fixture(scope="module")
def squid(
    tmp_path_factory: pytest.TempPathFactory,
    origins: Origins,
    ssh_target: SshTarget,
    squid_closed_port: int,
) -> Generator[Squid, None, None]:
    """Squid whose users are proxyd's, exported with `proxyd users export`."""
    require_tool(SQUID)
    require_tool(DIGEST_HELPER)
    directory = tmp_path_factory.mktemp("squid-users")
    home = directory / "home"
    home.mkdir()
    env = clean_env(home)
    config = write_proxyd_config(directory, origins)
    add_user(config, USER, PASSWORD, env)
    exported = directory / "export.htdigest"
    proc = subprocess.run(
        [
            *(str(proxyd_bin()), "users", "--config", str(config), "export"),
            *("--format", "htdigest", "--output", str(exported)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    started = start_squid(exported, [ssh_target.port, squid_closed_port])
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.2 nothing listens on; the `ssh` rule allows it (for 502)."""
    return free_port(ORIGIN_HOST)


def start_proxyd(
    factory: ProxydFactory,
    target: SshTarget,
    closed_port: int,
    algorithms: Sequence[str] = ("MD5", "SHA-256"),
) -> ProxydHandle:
    rule = {
        "name": "ssh",
        "from": ["any"],
        "to": ["testzone"],
        "ports": [target.port, closed_port],
        "auth": "required",
    }
    return factory(algorithms=algorithms, extra_rules=[rule])


@pytest.fixture
def proxyd_ssh(
    proxyd_factory: ProxydFactory, ssh_target: SshTarget, closed_port: int
) -> ProxydHandle:
    return start_proxyd(proxyd_factory, ssh_target, closed_port)


@pytest.fixture
def env(client_env: dict[str, str]) -> dict[str, str]:
    """The client environment with the password and without an ssh agent."""
    out = {k: v for k, v in client_env.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}
    out["PROXYD_PASSWORD"] = PASSWORD
    return out


# --------------------------------------------------------------------------- helpers


def connect_argv(proxy_url: str, *extra: str) -> list[str]:
    return [str(proxyd_bin()), "connect", "--proxy", proxy_url, *extra]


def proxy_url(address: tuple[str, int], user: str | None = USER) -> str:
    host, port = address
    return f"http://{user}@{host}:{port}" if user else f"http://{host}:{port}"


def run_connect(
    argv: Sequence[str], env: Mapping[str, str], timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`proxyd connect` with stdin at EOF: returns when the tunnel fails or the peer closes."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ssh_argv(target: SshTarget, proxy_command: str, command: str) -> list[str]:
    """ssh to the test sshd through `proxy_command`, with no config, agent or known hosts."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
        "-i",
        str(target.key),
        "-o",
        f"ProxyCommand={proxy_command}",
        "-p",
        str(target.port),
        f"root@{target.host}",
        command,
    ]


def ssh(
    target: SshTarget,
    proxy_command: str,
    command: str,
    env: Mapping[str, str],
    *,
    stdin: bytes | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ssh_argv(target, proxy_command, command),
        env=dict(env),
        capture_output=True,
        input=stdin if stdin is not None else b"",
        timeout=timeout,
    )


def describe(proc: subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str]) -> str:
    out, err = proc.stdout, proc.stderr
    if isinstance(out, bytes):
        out = out[:2000].decode(errors="replace")
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    return f"exit {proc.returncode}\nstdout: {out!r}\nstderr:\n{err}"


def verbose_line(stderr: str) -> re.Match[str]:
    match = VERBOSE_RE.search(stderr)
    assert match, f"no -v line in stderr:\n{stderr}"
    return match


def one_line_message(stderr: str) -> str:
    """The helper's single stderr line; it must start with `proxyd connect: `."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("proxyd connect: "), lines[0]
    return lines[0]


def wait_for_file_line(read: object, pattern: str, timeout: float = 10.0) -> str:
    """The first line of read() matching `pattern`, polling up to `timeout`."""
    assert callable(read)
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        text = str(read())
        for line in text.splitlines():
            if regex.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{text}")
        time.sleep(0.1)


def log_is_quiet_since(proxy: ProxydHandle, before: str, origins: Origins) -> None:
    """Nothing reached `proxy` since its log read `before`: a sentinel CONNECT sent now is
    logged, and it is the only request logged since (log lines are in arrival order)."""
    host, port = origins.http
    sentinel = f"{host}:{port}"
    assert raw_proxy_request(proxy, "CONNECT", sentinel).status == 407
    proxy.wait_for_log(rf"TCP_DENIED/407 .*CONNECT {re.escape(sentinel)} ")
    new = proxy.log()[len(before) :]
    requests = [line for line in new.splitlines() if re.search(r"TCP_\w+/\d{3} ", line)]
    assert len(requests) == 1 and sentinel in requests[0], new


# --------------------------------------------------------------------------- ssh through proxyd


@pytest.mark.parametrize(
    "algorithms", [("MD5", "SHA-256"), ("SHA-256", "MD5")], ids=["md5-first", "sha256-first"]
)
def test_ssh_session_through_proxyd_uses_the_first_offered_algorithm(
    proxyd_factory: ProxydFactory,
    ssh_target: SshTarget,
    closed_port: int,
    env: dict[str, str],
    algorithms: tuple[str, str],
) -> None:
    proxy = start_proxyd(proxyd_factory, ssh_target, closed_port, algorithms)
    command = f"{proxyd_bin()} connect -v --proxy {proxy_url(proxy.address)} %h %p"
    proc = ssh(ssh_target, command, HELLO, env)
    assert proc.returncode == 0, describe(proc) + ssh_target.log()[-2000:]
    assert proc.stdout == b"hello-42\n"
    line = verbose_line(proc.stderr.decode())
    assert line["target"] == f"{ssh_target.host}:{ssh_target.port}"
    assert line["proxy"] == f"{PROXY_HOST}:{proxy.port}"
    assert line["how"] == f"Digest {algorithms[0]}"
    logged = proxy.wait_for_log(
        rf"TCP_TUNNEL/200 .* CONNECT {re.escape(ssh_target.host)}:{ssh_target.port} {USER} "
    ).string
    assert "rule=ssh" in logged and "auth=ok" in logged
    assert PASSWORD not in proxy.log()


def test_large_binary_transfer_both_ways_through_proxyd(
    proxyd_ssh: ProxydHandle, ssh_target: SshTarget, env: dict[str, str], tmp_path: Path
) -> None:
    command = f"{proxyd_bin()} connect --proxy {proxy_url(proxyd_ssh.address)} %h %p"
    upload = os.urandom(BIG)
    up = ssh(ssh_target, command, "sha256sum", env, stdin=upload)
    assert up.returncode == 0, describe(up)
    assert up.stdout.split()[0].decode() == hashlib.sha256(upload).hexdigest()
    # The sshd runs on this machine: the remote side reads a file we wrote.
    download = tmp_path / "download.bin"
    download.write_bytes(os.urandom(BIG))
    down = ssh(ssh_target, command, f"cat {download}", env)
    assert down.returncode == 0, describe(down)
    assert len(down.stdout) == BIG
    assert down.stdout == download.read_bytes()
    assert down.stderr == b""  # no -v, nothing else to say
    tunnel = proxyd_ssh.wait_for_log(rf"TCP_TUNNEL/200 .*CONNECT \S+:{ssh_target.port} {USER} ")
    assert tunnel is not None


def test_credentials_file_0600_is_used_without_the_environment(
    proxyd_ssh: ProxydHandle, ssh_target: SshTarget, env: dict[str, str], tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(f"# proxy accounts\n{USER}:{PASSWORD}\n")
    credentials.chmod(0o600)
    env = {k: v for k, v in env.items() if k != "PROXYD_PASSWORD"}
    command = (
        f"{proxyd_bin()} connect -v --credentials {credentials} "
        f"--proxy {proxy_url(proxyd_ssh.address, user=None)} %h %p"
    )
    proc = ssh(ssh_target, command, HELLO, env)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == b"hello-42\n"
    assert verbose_line(proc.stderr.decode())["how"] == "Digest MD5"
    proxyd_ssh.wait_for_log(rf"TCP_TUNNEL/200 .*CONNECT \S+:{ssh_target.port} {USER} ")


# --------------------------------------------------------------------------- ssh through Squid


def test_ssh_session_through_squid(
    squid: Squid, ssh_target: SshTarget, env: dict[str, str]
) -> None:
    command = f"{proxyd_bin()} connect -v --proxy {proxy_url((squid.host, squid.port))} %h %p"
    proc = ssh(ssh_target, command, HELLO, env)
    assert proc.returncode == 0, describe(proc) + squid.log()
    assert proc.stdout == b"hello-42\n"
    line = verbose_line(proc.stderr.decode())
    assert line["target"] == f"{ssh_target.host}:{ssh_target.port}"
    assert line["how"] == "Digest MD5", f"Squid {squid_version()}: {line.group(0)}"
    upload = os.urandom(BIG)
    up = ssh(ssh_target, command, "sha256sum", env, stdin=upload)
    assert up.returncode == 0, describe(up)
    assert up.stdout.split()[0].decode() == hashlib.sha256(upload).hexdigest()
    logged = wait_for_file_line(
        squid.access_log, rf"TCP_TUNNEL/200 .*CONNECT {re.escape(ssh_target.host)}:\d+ {USER} "
    )
    assert f":{ssh_target.port} " in logged


def test_squid_wrong_password_exits_5(
    squid: Squid, ssh_target: SshTarget, env: dict[str, str]
) -> None:
    env["PROXYD_PASSWORD"] = "not-the-password"
    proc = run_connect(
        connect_argv(proxy_url((squid.host, squid.port)), ssh_target.host, str(ssh_target.port)),
        env,
    )
    assert proc.returncode == EXIT_AUTH, describe(proc)
    message = one_line_message(proc.stderr)
    assert "refused the credentials of 'alice'" in message and "407" in message, message
    assert proc.stdout == ""


def test_squid_denied_destination_exits_6(
    squid: Squid, ssh_target: SshTarget, env: dict[str, str], origins: Origins
) -> None:
    for host, port in [
        (DENIED_HOST, ssh_target.port),  # http_access deny !dst_ok
        (ssh_target.host, origins.http[1]),  # http_access deny CONNECT !SSH_port
    ]:
        proc = run_connect(connect_argv(proxy_url((squid.host, squid.port)), host, str(port)), env)
        assert proc.returncode == EXIT_DENIED, describe(proc)
        message = one_line_message(proc.stderr)
        assert "proxy answered 403" in message and "ERR_ACCESS_DENIED" in message, message
    assert origins.hits("http") == 0


def test_squid_unreachable_destination_exits_7(
    squid: Squid, squid_closed_port: int, env: dict[str, str]
) -> None:
    url = proxy_url((squid.host, squid.port))
    proc = run_connect(connect_argv(url, ORIGIN_HOST, str(squid_closed_port)), env)
    assert proc.returncode == EXIT_UPSTREAM, describe(proc)
    message = one_line_message(proc.stderr)
    assert "proxy answered 503" in message and "ERR_CONNECT_FAIL" in message, message


# --------------------------------------------------------------------------- refusals by proxyd


def test_wrong_password_exits_5(
    proxyd_ssh: ProxydHandle, ssh_target: SshTarget, env: dict[str, str]
) -> None:
    env["PROXYD_PASSWORD"] = "not-the-password"
    target = [ssh_target.host, str(ssh_target.port)]
    proc = run_connect(connect_argv(proxy_url(proxyd_ssh.address), *target), env)
    assert proc.returncode == EXIT_AUTH, describe(proc)
    message = one_line_message(proc.stderr)
    assert "refused the credentials of 'alice'" in message and "407" in message, message
    proxyd_ssh.wait_for_log(r"TCP_DENIED/407 .*auth=bad_response")
    # ssh, which only sees its ProxyCommand fail, passes the message on.
    command = f"{proxyd_bin()} connect --proxy {proxy_url(proxyd_ssh.address)} %h %p"
    through_ssh = ssh(ssh_target, command, HELLO, env)
    assert through_ssh.returncode == 255 and through_ssh.stdout == b""
    assert b"proxyd connect: the proxy refused the credentials" in through_ssh.stderr


def test_denied_destinations_exit_6_with_the_proxys_reason(
    proxyd_ssh: ProxydHandle, origins: Origins, env: dict[str, str]
) -> None:
    for host, port in [origins.denied_http, origins.offport_http]:
        proc = run_connect(connect_argv(proxy_url(proxyd_ssh.address), host, str(port)), env)
        assert proc.returncode == EXIT_DENIED, describe(proc)
        message = one_line_message(proc.stderr)
        assert message.startswith("proxyd connect: proxy answered 403: proxyd: "), message
    assert origins.denied_hits() == 0 and origins.offport_hits() == 0


def test_unreachable_destination_exits_7(
    proxyd_ssh: ProxydHandle, closed_port: int, env: dict[str, str]
) -> None:
    proc = run_connect(
        connect_argv(proxy_url(proxyd_ssh.address), ORIGIN_HOST, str(closed_port)), env
    )
    assert proc.returncode == EXIT_UPSTREAM, describe(proc)
    assert re.search(r"proxy answered 50[234]", one_line_message(proc.stderr)), proc.stderr


def test_unreachable_proxy_exits_4(env: dict[str, str]) -> None:
    port = free_port(PROXY_HOST)
    proc = run_connect(connect_argv(f"http://{USER}@{PROXY_HOST}:{port}", ORIGIN_HOST, "22"), env)
    assert proc.returncode == EXIT_UNREACHABLE, describe(proc)
    message = one_line_message(proc.stderr)
    assert f"can't reach proxy {PROXY_HOST}:{port}" in message, message


@contextlib.contextmanager
def listener() -> Generator[socket.socket, None, None]:
    """A listening socket that must see no connection (checked with accept_nothing)."""
    with socket.create_server((PROXY_HOST, 0)) as sock:
        sock.setblocking(False)
        yield sock


def accept_nothing(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = sock.accept()
        conn.close()


def test_password_in_proxy_url_is_refused_before_connecting(env: dict[str, str]) -> None:
    with listener() as sock:
        port = sock.getsockname()[1]
        url = f"http://{USER}:{PASSWORD}@{PROXY_HOST}:{port}"
        proc = run_connect(connect_argv(url, ORIGIN_HOST, "22"), env)
        assert proc.returncode == EXIT_LOCAL, describe(proc)
        message = one_line_message(proc.stderr)
        assert "visible to other users in ps" in message, message
        assert PASSWORD not in message
        accept_nothing(sock)


def test_credentials_file_readable_by_others_is_refused(
    env: dict[str, str], tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    credentials.chmod(0o644)
    env.pop("PROXYD_PASSWORD")
    with listener() as sock:
        url = proxy_url(sock.getsockname()[:2])
        argv = connect_argv(url, "--credentials", str(credentials), ORIGIN_HOST, "22")
        proc = run_connect(argv, env)
        assert proc.returncode == EXIT_LOCAL, describe(proc)
        message = one_line_message(proc.stderr)
        assert "mode 0644" in message and f"chmod 600 {credentials}" in message, message
        assert PASSWORD not in message
        accept_nothing(sock)


def test_credentials_file_symlink_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    real = tmp_path / "real-credentials"
    real.write_text(f"{USER}:{PASSWORD}\n")
    real.chmod(0o600)
    link = tmp_path / "credentials"
    link.symlink_to(real)
    env.pop("PROXYD_PASSWORD")
    with listener() as sock:
        url = proxy_url(sock.getsockname()[:2])
        proc = run_connect(connect_argv(url, "--credentials", str(link), ORIGIN_HOST, "22"), env)
        assert proc.returncode == EXIT_LOCAL, describe(proc)
        message = one_line_message(proc.stderr)
        assert f"credentials file {link}: a symbolic link, refused" in message, message
        accept_nothing(sock)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.2\r\nX-Injected: 1", "127.0.0.2 HTTP/1.1\r\n\r\nGET /", "origin test", ""],
    ids=["crlf-header", "request-smuggling", "space", "empty"],
)
def test_injected_host_is_refused_and_nothing_reaches_the_proxy(
    proxyd_ssh: ProxydHandle, origins: Origins, env: dict[str, str], host: str
) -> None:
    before = proxyd_ssh.log()
    proc = run_connect(connect_argv(proxy_url(proxyd_ssh.address), host, "22"), env)
    assert proc.returncode == EXIT_LOCAL, describe(proc)
    message = one_line_message(proc.stderr)  # CR/LF shown escaped, never as a new line
    assert message.startswith("proxyd connect: bad host "), message
    log_is_quiet_since(proxyd_ssh, before, origins)
    assert "X-Injected" not in proxyd_ssh.log()


# --------------------------------------------------------------------------- speak-first, start-up


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """Read `fd` until `wanted` has arrived (or EOF/timeout); returns what was read."""
    got = b""
    deadline = time.monotonic() + timeout
    while wanted not in got:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
    return got


def test_speak_first_banner_arrives_while_stdin_stays_silent(
    proxyd_ssh: ProxydHandle, origins: Origins, env: dict[str, str]
) -> None:
    host, port = origins.speak_first
    argv = connect_argv(proxy_url(proxyd_ssh.address), "-v", host, str(port))
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        # stdin stays open and silent: the banner must come anyway.
        assert read_until(proc.stdout.fileno(), BANNER, 10.0) == BANNER
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert read_until(proc.stdout.fileno(), b"ping\n", 10.0) == b"ping\n"
        proc.stdin.close()  # half-close: the echo server ends, so does the helper
        assert proc.wait(10) == EXIT_OK
        stderr = proc.stderr.read().decode()
        assert verbose_line(stderr)["target"] == f"{host}:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
    assert origins.hits("speak_first") == 1


@pytest.mark.parametrize("stdin", ["devnull", "file"])
def test_stdin_that_is_not_a_pipe_is_relayed(
    proxyd_ssh: ProxydHandle,
    origins: Origins,
    env: dict[str, str],
    tmp_path: Path,
    stdin: str,
) -> None:
    """`proxyd connect HOST PORT </dev/null` (or <file) works like nc: epoll refuses such
    descriptors, so the relay must not depend on it. What the destination says after our
    end-of-file may be cut short (proxyd and Squid end a tunnel on the client's FIN), so
    the output is checked as a prefix only; the exit status and stderr are exact."""
    payload = b"ping\n" if stdin == "file" else b""
    source = tmp_path / "stdin"
    source.write_bytes(payload)
    host, port = origins.speak_first
    argv = connect_argv(proxy_url(proxyd_ssh.address), "-v", host, str(port))
    with open(os.devnull, "rb") if stdin == "devnull" else source.open("rb") as f:
        proc = subprocess.run(argv, env=env, stdin=f, capture_output=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == EXIT_OK, describe(proc)
    assert (BANNER + payload).startswith(proc.stdout), proc.stdout
    stderr = proc.stderr.decode()
    assert len(stderr.splitlines()) == 1 and verbose_line(stderr), stderr


class Http10Proxy:
    """A minimal HTTP/1.0 Digest proxy: it answers 407 without `Connection: keep-alive`
    and closes (as HTTP/1.0 may), then on a new connection checks the Digest response and
    answers 200 followed by a banner. Records each connection's first request head."""

    NONCE = "http10-nonce"

    def __init__(self) -> None:
        self.listener = socket.create_server((PROXY_HOST, 0))
        self.listener.settimeout(10)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(2):
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                        data += chunk
                request = data.decode("latin-1")
                self.requests.append(request)
                auth = [v for v in parse_challenges_of(request) if v.get("nonce") == self.NONCE]
                if not auth:
                    conn.sendall(
                        b"HTTP/1.0 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Digest realm="proxyd", nonce="http10-nonce", '
                        b'qop="auth"\r\nContent-Length: 0\r\n\r\n'
                    )
                    continue  # and close: HTTP/1.0 without keep-alive
                given = auth[0]
                expected = digest_response(
                    algorithm="MD5",
                    user=USER,
                    realm="proxyd",
                    password=PASSWORD,
                    method="CONNECT",
                    uri=given["uri"],
                    nonce=self.NONCE,
                    nc=given["nc"],
                    cnonce=given["cnonce"],
                )
                if given["response"] == expected:
                    conn.sendall(b"HTTP/1.0 200 Connection established\r\n\r\nhello-http10\n")
                else:
                    conn.sendall(b"HTTP/1.0 407 Wrong\r\nContent-Length: 0\r\n\r\n")

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(10)


def parse_challenges_of(request: str) -> list[dict[str, str]]:
    values = [
        line.split(":", 1)[1].strip()
        for line in request.split("\r\n")
        if line.lower().startswith("proxy-authorization:")
    ]
    return [parse_challenge(value) for value in values]


def test_http_1_0_proxy_that_closes_after_its_407(env: dict[str, str]) -> None:
    """HTTP/1.0 closes after a response unless it says keep-alive: the helper must answer
    the challenge on a new connection, not on the closed one (which looked unreachable)."""
    proxy = Http10Proxy()
    try:
        proc = run_connect(connect_argv(proxy_url(proxy.address), "-v", ORIGIN_HOST, "22"), env)
    finally:
        proxy.stop()
    assert proc.returncode == EXIT_OK, describe(proc)
    assert proc.stdout == "hello-http10\n"
    assert verbose_line(proc.stderr)["how"] == "Digest MD5"
    assert len(proxy.requests) == 2
    assert all(r.startswith(f"CONNECT {ORIGIN_HOST}:22 HTTP/1.1\r\n") for r in proxy.requests)


HEAVY = ["mitmproxy", "yaml", "passlib", "h11", "netaddr", "prometheus_client"]
IMPORT_PROBE = """
import json, sys
from proxy.cli.main import main
status = main(["connect", "--proxy", sys.argv[1], "127.0.0.2", "22"])
heavy = set(json.loads(sys.argv[2]))
print(json.dumps([status, sorted(m for m in sys.modules if m.split(".")[0] in heavy)]))
"""


def test_connect_imports_none_of_the_server(env: dict[str, str]) -> None:
    port = free_port(PROXY_HOST)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_PROBE,
            f"http://{USER}@{PROXY_HOST}:{port}",
            json.dumps(HEAVY),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, describe(proc)
    status, heavy = json.loads(proc.stdout)
    assert status == EXIT_UNREACHABLE, proc.stderr
    assert heavy == []


def test_removing_the_user_ends_a_live_ssh_session_within_a_second(
    proxyd_ssh: ProxydHandle, ssh_target: SshTarget, env: dict[str, str]
) -> None:
    """Revocation is immediate (issue 17): an ssh session through `proxyd connect` does
    not outlive its user's access."""
    command = f"{proxyd_bin()} connect --proxy {proxy_url(proxyd_ssh.address)} %h %p"
    argv = ssh_argv(ssh_target, command, "echo ready; sleep 60")
    session = subprocess.Popen(
        argv,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == b"ready\n"
        subprocess.run(
            [str(proxyd_bin()), "users", "--config", str(proxyd_ssh.config_path), "remove", USER],
            env=clean_env(),
            check=True,
            capture_output=True,
        )
        removed = time.monotonic()
        session.wait(timeout=10)
        assert time.monotonic() - removed < 1.5
        assert session.returncode != 0
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    logged = proxyd_ssh.wait_for_log(r"TCP_TUNNEL/200 .* auth=revoked_removed").string
    assert f" {USER} " in logged
