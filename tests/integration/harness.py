"""Integration harness: loopback origins, a real `proxyd serve`, and a raw Digest client.

Everything here runs on 127.0.0.0/8 only and every wait is bounded by a deadline.

Origins (started once per session by the `origins` fixture, see conftest.py):

- `http`: HTTP/1.1 keep-alive on 127.0.0.2. `GET /headers` answers a JSON object of the
  request headers as received (names in the case the client sent them, repeated headers
  joined with ", "); any other GET answers `origin-http <path>`; POST echoes the body.
- `https`: the same app over TLS, certificate from a `trustme` CA (`ca_pem`).
- `speak_first`: sends `SSH-2.0-proxyd-test\\r\\n` on accept, then echoes.
- `denied_http`: the same app on 127.0.0.3 (outside every zone); `denied_hits()` counts
  TCP connections it accepted, which must stay 0. It takes the same port number as
  `http` when the kernel lets it, so a policy bug can't hide behind a port mismatch.
- `offport_http`: the same app on 127.0.0.2 on a port no rule lists; `offport_hits()`.
- `git_http` / `git_https`: `git http-backend` (smart HTTP) serving a bare repo at
  `git_path`, whose tree holds `GIT_FILE` with `GIT_FILE_CONTENT`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import digest_oracle
import pytest
from ci_policy import missing

ORIGIN_HOST = "127.0.0.2"
DENIED_HOST = "127.0.0.3"
INTERNAL_SOURCE = "127.0.0.10"
PROXY_HOST = "127.0.0.1"
REALM = "proxyd"
BANNER = b"SSH-2.0-proxyd-test\r\n"
GIT_FILE = "README.txt"
GIT_FILE_CONTENT = "hello through proxyd\n"
DEFAULT_USERS: Mapping[str, str] = {"alice": "wonderland"}
# What tests' grants run to: within grants.max_lifetime (90 days by default).
GRANT_EXPIRES = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()

# Variables this machine exports that override a client's own CA option.
CA_OVERRIDE_VARS = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
    "HTTPLIB2_CA_CERTS",
    "NIX_SSL_CERT_FILE",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)
# Other variables that would let the host's configuration leak into a client.
_CLIENT_CONFIG_VARS = ("CURL_HOME", "WGETRC", "GIT_CONFIG", "GIT_CONFIG_GLOBAL", "XDG_CONFIG_HOME")

IO_TIMEOUT = 10.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------- tools, env


def require_tool(name: str) -> Any:
    """An executable's path, or an imported module, for a tool a test needs.

    Missing: `pytest.fail` under CI=true (a CI machine must have every client), else skip.
    """
    path = shutil.which(name)
    if path:
        return path
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    missing(f"required tool {name!r} is not installed")


def clean_env(home: Path | str | None = None, **extra: str) -> dict[str, str]:
    """os.environ without CA overrides, proxy variables or client config; HOME is `home`.

    With no `home`, a fresh temporary folder is used (left for the OS to clean).
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in CA_OVERRIDE_VARS
        and key not in _CLIENT_CONFIG_VARS
        and not key.lower().endswith("_proxy")
    }
    if home is None:
        home = tempfile.mkdtemp(prefix="proxyd-home-")
    env["HOME"] = str(home)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


def free_port(host: str = ORIGIN_HOST) -> int:
    """A port nothing listens on at `host` right now (bound then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- origins


class _Counted:
    """Mixin for socketserver servers: counts accepted TCP connections."""

    hits_lock: threading.Lock
    hits: int

    def _init_counter(self) -> None:
        self.hits_lock = threading.Lock()
        self.hits = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.hits_lock:
            self.hits += 1
        return True


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end instead of pinning threads
    server_version = "proxyd-test-origin"
    label = "origin-http"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/headers":
            received: dict[str, str] = {}
            for name, value in self.headers.items():
                received[name] = f"{received[name]}, {value}" if name in received else value
            self._send(200, json.dumps(received).encode(), "application/json")
        else:
            self._send(200, f"{self.label} {self.path}".encode())

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._send(200, self._read_body(), "application/octet-stream")

    do_PUT = do_POST


class DeniedOriginHandler(OriginHandler):
    label = "denied-origin"


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    for _ in range(100_000):
        size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += rfile.read(size)
        rfile.readline(16)
    raise ValueError("too many chunks")


class CountingHTTPServer(_Counted, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # must not steal a port someone else holds

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        self._init_counter()
        super().__init__(address, handler)


class TLSHTTPServer(CountingHTTPServer):
    """TLS is done per connection in the handler thread, so a slow client blocks no one."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
    ):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IO_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        tls.settimeout(None)
        super().finish_request(tls, client_address)


class SpeakFirstHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            sock.sendall(BANNER)
            while data := sock.recv(65536):
                sock.sendall(data)


class SpeakFirstServer(_Counted, socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]):
        self._init_counter()
        super().__init__(address, SpeakFirstHandler)


class GitHandler(BaseHTTPRequestHandler):
    """Smart HTTP via `git http-backend` as CGI; the project root is `server.git_root`."""

    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.git_root),  # type: ignore[attr-defined]
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.server.git_root),  # type: ignore[attr-defined]
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
        )
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name and name.lower() != "content-length":  # we send our own
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _cgi
    do_POST = _cgi


class GitHTTPServer(CountingHTTPServer):
    def __init__(self, address: tuple[str, int], git_root: Path):
        self.git_root = git_root
        super().__init__(address, GitHandler)


class GitHTTPSServer(TLSHTTPServer):
    def __init__(self, address: tuple[str, int], git_root: Path, context: ssl.SSLContext):
        self.git_root = git_root
        super().__init__(address, GitHandler, context)


def make_git_repo(root: Path, name: str = "repo.git") -> str:
    """A bare repo under `root` with one commit holding GIT_FILE; returns its URL path."""
    work = root / "work"
    env = clean_env(
        root,
        GIT_AUTHOR_NAME="proxyd test",
        GIT_AUTHOR_EMAIL="test@proxyd.invalid",
        GIT_COMMITTER_NAME="proxyd test",
        GIT_COMMITTER_EMAIL="test@proxyd.invalid",
    )

    def git(*args: str, cwd: Path = root) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main", str(work))
    (work / GIT_FILE).write_text(GIT_FILE_CONTENT)
    git("add", GIT_FILE, cwd=work)
    git("commit", "-q", "-m", "initial", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / name))
    git("update-server-info", cwd=root / name)
    git("config", "http.receivepack", "false", cwd=root / name)
    return f"/{name}"


@dataclass
class Origins:
    """Addresses of the session's origin servers; see the module docstring."""

    http: tuple[str, int]
    https: tuple[str, int]
    speak_first: tuple[str, int]
    denied_http: tuple[str, int]
    offport_http: tuple[str, int]
    git_http: tuple[str, int]
    git_https: tuple[str, int]
    git_path: str
    ca_pem: Path
    _servers: dict[str, Any] = field(default_factory=dict, repr=False)

    def hits(self, name: str) -> int:
        """TCP connections accepted so far by the origin called `name` (e.g. "http")."""
        server = self._servers[name]
        with server.hits_lock:
            return int(server.hits)

    def denied_hits(self) -> int:
        return self.hits("denied_http")

    def reset_hits(self) -> None:
        """Each test counts from zero (the origins are shared by the whole session)."""
        for server in self._servers.values():
            with server.hits_lock:
                server.hits = 0

    def offport_hits(self) -> int:
        return self.hits("offport_http")

    def allowed_ports(self) -> list[int]:
        """Ports the `partners` rule lists (denied_http's too: it is denied by zone only)."""
        ports = {
            self.http[1],
            self.https[1],
            self.speak_first[1],
            self.denied_http[1],
            self.git_http[1],
            self.git_https[1],
        }
        return sorted(ports)

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()


def start_origins(workdir: Path) -> Origins:
    trustme = require_tool("trustme")
    require_tool("git")
    ca = trustme.CA()
    cert = ca.issue_cert(ORIGIN_HOST, "origin.test", "localhost")
    ca_pem = workdir / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)

    git_root = workdir / "git"
    git_root.mkdir()
    git_path = make_git_repo(git_root)

    servers: dict[str, Any] = {}
    try:
        servers["http"] = CountingHTTPServer((ORIGIN_HOST, 0), OriginHandler)
        http_port = servers["http"].server_address[1]
        servers["https"] = TLSHTTPServer((ORIGIN_HOST, 0), OriginHandler, context)
        servers["speak_first"] = SpeakFirstServer((ORIGIN_HOST, 0))
        try:
            servers["denied_http"] = CountingHTTPServer(
                (DENIED_HOST, http_port), DeniedOriginHandler
            )
        except OSError:
            servers["denied_http"] = CountingHTTPServer((DENIED_HOST, 0), DeniedOriginHandler)
        servers["offport_http"] = CountingHTTPServer((ORIGIN_HOST, 0), OriginHandler)
        servers["git_http"] = GitHTTPServer((ORIGIN_HOST, 0), git_root)
        servers["git_https"] = GitHTTPSServer((ORIGIN_HOST, 0), git_root, context)
    except BaseException:
        for server in servers.values():
            server.server_close()
        raise
    for name, server in servers.items():
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"origin-{name}",
            daemon=True,
        ).start()

    def addr(name: str) -> tuple[str, int]:
        host, port = servers[name].server_address[:2]
        return (str(host), int(port))

    return Origins(
        http=addr("http"),
        https=addr("https"),
        speak_first=addr("speak_first"),
        denied_http=addr("denied_http"),
        offport_http=addr("offport_http"),
        git_http=addr("git_http"),
        git_https=addr("git_https"),
        git_path=git_path,
        ca_pem=ca_pem,
        _servers=servers,
    )


# --------------------------------------------------------------------------- proxyd process


def proxyd_bin() -> Path:
    return Path(sys.executable).parent / "proxyd"


_LISTENING_RE = re.compile(r"proxyd: listening on (\S+):(\d+)\s*$")


class ProxydHandle:
    """A running `proxyd serve`; its stdout and stderr are collected by a reader thread."""

    def __init__(
        self,
        config_path: Path,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        launcher: Sequence[str] | None = None,
    ):
        """`launcher`: the command that stands for `proxyd` (default: the venv's)."""
        self.config_path = config_path
        self.host = ""
        self.port = 0
        self.returncode: int | None = None
        self.killed = False  # SIGTERM was not enough within STOP_TIMEOUT
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            [*(launcher or [str(proxyd_bin())]), "serve", "--config", str(config_path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=config_path.parent,
        )
        self._reader = threading.Thread(target=self._read, name="proxyd-log", daemon=True)
        self._reader.start()
        try:
            match = self.wait_for_log(_LISTENING_RE, timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.host, self.port = match.group(1).strip("[]"), int(match.group(2))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@{self.host}:{self.port}"

    def log(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = IO_TIMEOUT
    ) -> re.Match[str]:
        """The first log line matching `pattern` (searched per line), waiting up to `timeout`."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._eof:
                    raise AssertionError(
                        f"proxyd exited (status {self.proc.poll()}) before logging "
                        f"{regex.pattern!r}; log:\n{''.join(self._lines)}"
                    )
                if remaining <= 0:
                    raise AssertionError(
                        f"no log line matching {regex.pattern!r} within {timeout}s; "
                        f"log:\n{''.join(self._lines)}"
                    )
                self._cond.wait(remaining)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.returncode = self.proc.returncode
        return self.returncode


def write_proxyd_config(
    directory: Path,
    origins: Origins,
    *,
    algorithms: Sequence[str] = ("MD5", "SHA-256"),
    extra_rules: Sequence[Mapping[str, Any]] | None = None,
    nonce_lifetime: int = 300,
    **overrides: Any,
) -> Path:
    """config.yaml (plus hosts file) in `directory`; `overrides` replace top-level keys.

    Rules: `internal-noauth` (from 127.0.0.10, HTTP and HTTPS origin ports, no auth), then
    `extra_rules`, then `partners` (from any, to testzone, every origin port but offport,
    auth required).
    """
    import yaml

    (directory / "hosts").write_text(
        "# test resolver\n"
        f"{ORIGIN_HOST}\torigin.test\n"
        f"{DENIED_HOST}\tevil.test\n"
        f"{ORIGIN_HOST}\tmixed.test\n"
        f"{DENIED_HOST}\tmixed.test\n"
        f"{PROXY_HOST}\tproxy.test\n"
    )
    config: dict[str, Any] = {
        "listen": f"{PROXY_HOST}:0",
        # Open tunnels hold a SIGTERM this long (default 30 s): keep teardown quick.
        "drain_timeout": 2,
        "realm": REALM,
        "audit_log": "audit.log",
        "grants": {"last_use_file": "last-use.json"},
        "auth": {
            "users_file": "users.digest",
            "nonce_secret_file": "nonce.secret",
            "nonce_lifetime": nonce_lifetime,
            "algorithms": list(algorithms),
        },
        "dns": {"hosts_file": "hosts"},
        "zones": {
            "testzone": [f"{ORIGIN_HOST}/32"],
            "internal": [f"{INTERNAL_SOURCE}/32"],
        },
        "rules": [
            {
                "name": "internal-noauth",
                "from": ["internal"],
                "to": ["testzone"],
                "ports": [origins.http[1], origins.https[1]],
                "auth": "none",
            },
            *(dict(rule) for rule in extra_rules or ()),
            {
                "name": "partners",
                "from": ["any"],
                "to": ["testzone"],
                "ports": origins.allowed_ports(),
                "auth": "required",
            },
        ],
    }
    config.update(overrides)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def add_user(config_path: Path, name: str, password: str, env: Mapping[str, str]) -> None:
    proc = subprocess.run(
        [
            *(str(proxyd_bin()), "users", "--config", str(config_path), "add", name),
            *("--password-stdin", "--expires", GRANT_EXPIRES),
        ],
        input=f"{password}\n",
        text=True,
        capture_output=True,
        env=dict(env),
        timeout=60,
    )
    assert proc.returncode == 0, f"proxyd users add {name} failed: {proc.stdout}{proc.stderr}"


# --------------------------------------------------------------------------- digest client


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_WS = " \t"


def _parse_quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted-string starting at text[i] == '"'; returns (value, index after it)."""
    out = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ValueError(f"unterminated quoted-string in {text!r}")


def parse_challenge(value: str) -> dict[str, str]:
    """One challenge (`Digest realm="x", qop="auth", ...`) as a dict; `scheme` holds the
    scheme, parameter names are lower-cased. Quoted-strings may hold commas and escapes."""
    value = value.strip()
    match = _TOKEN_RE.match(value)
    if not match:
        raise ValueError(f"no auth scheme in {value!r}")
    result = {"scheme": match.group(0)}
    i = match.end()
    n = len(value)
    while i < n:
        while i < n and value[i] in _WS + ",":
            i += 1
        if i >= n:
            break
        match = _TOKEN_RE.match(value, i)
        if not match:
            raise ValueError(f"bad auth-param at {i} in {value!r}")
        name = match.group(0).lower()
        i = match.end()
        while i < n and value[i] in _WS:
            i += 1
        if i >= n or value[i] != "=":
            raise ValueError(f"auth-param {name!r} without '=' in {value!r}")
        i += 1
        while i < n and value[i] in _WS:
            i += 1
        if i < n and value[i] == '"':
            param, i = _parse_quoted(value, i)
        else:
            match = _TOKEN_RE.match(value, i)
            if not match:
                raise ValueError(f"bad value for {name!r} in {value!r}")
            param, i = match.group(0), match.end()
        if name in result:
            raise ValueError(f"duplicate auth-param {name!r} in {value!r}")
        result[name] = param
        while i < n and value[i] in _WS:
            i += 1
        if i < n and value[i] != ",":
            raise ValueError(f"junk after {name!r} in {value!r}")
    return result


def _header_values(headers: Any, name: str) -> list[str]:
    """Every value of header `name` from a list of pairs, a RawResponse, an
    email.message.Message / http.client.HTTPMessage, a urllib3 HTTPHeaderDict or a mapping."""
    if isinstance(headers, RawResponse):
        headers = headers.headers
    if hasattr(headers, "get_all"):
        return list(headers.get_all(name) or [])
    if hasattr(headers, "getlist"):
        return list(headers.getlist(name))
    if isinstance(headers, Mapping):
        return [v for k, v in headers.items() if k.lower() == name.lower()]
    return [v for k, v in headers if k.lower() == name.lower()]


def parse_challenges(headers: Any, header: str = "Proxy-Authenticate") -> list[dict[str, str]]:
    """Every challenge in every `header` field, in order (one challenge per field, as
    proxyd sends them)."""
    return [parse_challenge(value) for value in _header_values(headers, header)]


def digest_challenges(headers: Any) -> list[dict[str, str]]:
    return [c for c in parse_challenges(headers) if c["scheme"].lower() == "digest"]


# The tests' one independent Digest implementation, under the names the tests use.
digest_hash = digest_oracle.hash_hex
digest_response = digest_oracle.response


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digest_authorization(
    challenge: Mapping[str, str],
    user: str,
    password: str,
    method: str,
    uri: str,
    *,
    nc: int | str = 1,
    cnonce: str | None = None,
    algorithm: str | None = None,
    realm: str | None = None,
    nonce: str | None = None,
    response: str | None = None,
    omit: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
    scheme: str = "Digest",
) -> str:
    """A `Proxy-Authorization` value answering `challenge` (a parse_challenge dict).

    The response is computed from the given (or challenge's) algorithm, realm and nonce;
    `response=` forces a value, `omit=` drops fields, `extra=` adds raw fields (their
    values are inserted as quoted-strings), for crafting broken headers.
    """
    algorithm = algorithm or challenge.get("algorithm", "MD5")
    realm = challenge.get("realm", "") if realm is None else realm
    nonce = challenge["nonce"] if nonce is None else nonce
    nc_text = nc if isinstance(nc, str) else f"{nc:08x}"
    cnonce = cnonce or secrets.token_hex(8)
    qop = "auth"
    if response is None:
        response = digest_response(
            algorithm=algorithm,
            user=user,
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            nc=nc_text,
            cnonce=cnonce,
            qop=qop,
        )
    fields: list[tuple[str, str]] = [
        ("username", _quote(user)),
        ("realm", _quote(realm)),
        ("nonce", _quote(nonce)),
        ("uri", _quote(uri)),
        ("algorithm", algorithm),
        ("response", _quote(response)),
        ("qop", qop),
        ("nc", nc_text),
        ("cnonce", _quote(cnonce)),
    ]
    if "opaque" in challenge:
        fields.append(("opaque", _quote(challenge["opaque"])))
    skip = set(omit)
    parts = [f"{k}={v}" for k, v in fields if k not in skip]
    parts += [f"{k}={_quote(v)}" for k, v in (extra or {}).items()]
    return f"{scheme} " + ", ".join(parts)


def pick_challenge(challenges: Sequence[Mapping[str, str]], algorithm: str) -> Mapping[str, str]:
    for challenge in challenges:
        if challenge.get("algorithm", "MD5").upper() == algorithm.upper():
            return challenge
    raise AssertionError(f"no {algorithm} challenge among {challenges}")


# --------------------------------------------------------------------------- raw HTTP client


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = _header_values(self.headers, name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return _header_values(self.headers, name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class RawConnection:
    """One TCP connection to the proxy; requests are written verbatim, responses parsed.

    Bytes read beyond a response stay in `buffer`: after a 200 to CONNECT they are the
    first tunnel bytes (a speak-first server's banner can arrive with the 200).
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        source: str | None = None,
        timeout: float = IO_TIMEOUT,
    ):
        self.timeout = timeout
        self.sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("raw client: deadline passed")
        self.sock.settimeout(min(remaining, self.timeout))
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def recv_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buffer) < n:
            if not self._fill(deadline):
                raise ConnectionError(f"closed after {len(self.buffer)} of {n} bytes")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_until(
        self, marker: bytes, timeout: float | None = None, limit: int = 1 << 20
    ) -> bytes:
        """Bytes up to and including `marker`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buffer:
            if len(self.buffer) > limit:
                raise ValueError(f"no {marker!r} within {limit} bytes")
            if not self._fill(deadline):
                raise ConnectionError(f"closed before {marker!r}; got {self.buffer!r}")
        end = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def recv_available(self, timeout: float = 0.5) -> bytes:
        """Whatever arrives within `timeout` (b"" if nothing); for asserting silence."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, socket.timeout):
            while self._fill(deadline):
                pass
        data, self.buffer = self.buffer, b""
        return data

    def is_closed_by_peer(self, timeout: float = IO_TIMEOUT) -> bool:
        """True if the peer closes (EOF or reset) within `timeout` with no bytes pending."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def read_response(self, method: str = "GET", timeout: float | None = None) -> RawResponse:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            head = self.recv_until(b"\r\n\r\n", timeout=max(deadline - time.monotonic(), 0.01))
            lines = head.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            if not version.startswith("HTTP/"):
                raise ValueError(f"not an HTTP response: {head!r}")
            code_text, _, reason = rest.partition(" ")
            status = int(code_text)
            headers = []
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name.strip(), value.strip()))
            if 100 <= status < 200 and status != 101:
                continue  # interim response: the real one follows
            break
        response = RawResponse(status, reason, headers, b"", head)
        if (
            method.upper() == "HEAD"
            or status in (204, 304)
            or (method.upper() == "CONNECT" and 200 <= status < 300)
        ):
            return response
        te = (response.header("Transfer-Encoding") or "").lower()
        length = response.header("Content-Length")
        if "chunked" in te:
            body = bytearray()
            for _ in range(100_000):
                size_line = self.recv_until(b"\r\n", timeout=max(deadline - time.monotonic(), 0.01))
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.recv_until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self.recv_exact(size, timeout=max(deadline - time.monotonic(), 0.01))
                self.recv_exact(2)
            response.body = bytes(body)
        elif length is not None:
            response.body = self.recv_exact(
                int(length), timeout=max(deadline - time.monotonic(), 0.01)
            )
        else:
            while self._fill(deadline):
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        body: bytes = b"",
        *,
        host: str | None = None,
    ) -> RawResponse:
        """Send one request (Host defaults to the target's authority) and read the answer."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if not any(k.lower() == "host" for k, _ in pairs):
            pairs.insert(0, ("Host", host or _authority_of(method, target)))
        if body and not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("Content-Length", str(len(body))))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pairs)
        self.send(head.encode("latin-1") + b"\r\n" + body)
        return self.read_response(method)

    def request_with_digest(
        self,
        method: str,
        target: str,
        user: str,
        password: str,
        *,
        algorithm: str = "MD5",
        uri: str | None = None,
        headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        body: bytes = b"",
        host: str | None = None,
    ) -> tuple[RawResponse, RawResponse | None]:
        """Request without credentials; on 407 answer the `algorithm` challenge on the same
        connection. Returns (first response, retried response or None if no 407)."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        first = self.request(method, target, pairs, body, host=host)
        if first.status != 407:
            return first, None
        challenge = pick_challenge(digest_challenges(first), algorithm)
        auth = digest_authorization(
            challenge, user, password, method, uri if uri is not None else target
        )
        second = self.request(
            method, target, [*pairs, ("Proxy-Authorization", auth)], body, host=host
        )
        return first, second


def _authority_of(method: str, target: str) -> str:
    if method.upper() == "CONNECT":
        return target
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)", target)
    if match:
        return match.group(1).rpartition("@")[2]
    return "localhost"


def raw_proxy_request(
    proxy: tuple[str, int] | ProxydHandle,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes = b"",
    *,
    auth: tuple[str, str] | None = None,
    algorithm: str = "MD5",
    uri: str | None = None,
    host: str | None = None,
    source: str | None = None,
    timeout: float = IO_TIMEOUT,
) -> RawResponse:
    """One request over a fresh connection. With `auth=(user, password)` a 407 is answered
    once (Digest, `algorithm`) on the same connection and the final response returned."""
    address = proxy.address if isinstance(proxy, ProxydHandle) else proxy
    with RawConnection(address, source=source, timeout=timeout) as conn:
        if auth is None:
            return conn.request(method, target, headers, body, host=host)
        first, second = conn.request_with_digest(
            method,
            target,
            auth[0],
            auth[1],
            algorithm=algorithm,
            uri=uri,
            headers=headers,
            body=body,
            host=host,
        )
        return second or first


# --------------------------------------------------------------------------- subprocess


def run_client(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a client program, bounded, capturing text output."""
    return subprocess.run(
        list(args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


__all__ = [
    "BANNER",
    "CA_OVERRIDE_VARS",
    "DEFAULT_USERS",
    "DENIED_HOST",
    "GIT_FILE",
    "GIT_FILE_CONTENT",
    "INTERNAL_SOURCE",
    "ORIGIN_HOST",
    "PROXY_HOST",
    "REALM",
    "Origins",
    "ProxydHandle",
    "RawConnection",
    "RawResponse",
    "add_user",
    "clean_env",
    "digest_authorization",
    "digest_challenges",
    "digest_hash",
    "digest_response",
    "free_port",
    "parse_challenge",
    "parse_challenges",
    "pick_challenge",
    "raw_proxy_request",
    "require_tool",
    "run_client",
    "start_origins",
    "write_proxyd_config",
]


# --------------------------------------------------------------------------- curl


@dataclass
class CurlTransfer:
    code: int  # %{http_code}: the final response's status (0 if none)
    connect: int  # %{http_connect}: the proxy's answer to the last CONNECT (0 if none)
    body: str


@dataclass
class CurlResult:
    returncode: int
    transfers: list[CurlTransfer]
    stderr: str  # with -v: the request and response headers, `> ` and `< ` prefixed

    @property
    def code(self) -> int:
        return self.transfers[-1].code if self.transfers else 0

    @property
    def connect(self) -> int:
        return self.transfers[-1].connect if self.transfers else 0

    @property
    def body(self) -> str:
        return self.transfers[-1].body if self.transfers else ""

    def sent_headers(self, name: str) -> list[str]:
        prefix = f"> {name.lower()}:"
        return [
            line[len(prefix) :].strip()
            for line in self.stderr.splitlines()
            if line.lower().startswith(prefix)
        ]

    def received_headers(self, name: str) -> list[str]:
        prefix = f"< {name.lower()}:"
        return [
            line[len(prefix) :].strip()
            for line in self.stderr.splitlines()
            if line.lower().startswith(prefix)
        ]

    def describe(self) -> str:
        return f"curl exit {self.returncode}, transfers {self.transfers}\nstderr:\n{self.stderr}"


_CURL_MARK = "\n@@curl-transfer@@ "
_CURL_RESULT_RE = re.compile(r"(.*?)\n@@curl-transfer@@ (\d+) (\d+)\n", re.S)


def curl(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 30) -> CurlResult:
    """Run curl verbosely with `args` (URLs included); one CurlTransfer per URL."""
    binary = require_tool("curl")
    proc = run_client(
        [
            binary,
            "--silent",
            "--show-error",
            "--verbose",
            "--max-time",
            str(int(timeout)),
            "--write-out",
            _CURL_MARK.replace("\n", "\\n") + "%{http_code} %{http_connect}\\n",
            *args,
        ],
        env,
        timeout=timeout + 15,
    )
    transfers = [
        CurlTransfer(int(code), int(connect), body)
        for body, code, connect in _CURL_RESULT_RE.findall(proc.stdout)
    ]
    return CurlResult(proc.returncode, transfers, proc.stderr)


# --------------------------------------------------------------------------- tcp relay


class TcpRelay:
    """A loopback TCP relay to `target` that keeps what clients sent (for inspecting a
    client's requests to the proxy, e.g. the Proxy-Authorization a browser chose).

    Each accepted connection gets a fresh upstream connection; bytes are copied both ways
    and the client's first `keep` bytes per connection are stored. `stop()` closes it.
    `target` may be set after creation (the relay's port is known first), before use.
    """

    def __init__(
        self, target: tuple[str, int] | None = None, host: str = PROXY_HOST, keep: int = 65536
    ):
        self.target = target
        self.keep = keep
        self._lock = threading.Lock()
        self._sent: list[bytearray] = []
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-relay", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def client_bytes(self) -> bytes:
        """Everything clients sent so far, connection after connection."""
        with self._lock:
            return b"".join(bytes(chunk) for chunk in self._sent)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        record = bytearray()
        with self._lock:
            self._sent.append(record)
        try:
            if self.target is None:
                raise OSError("relay target not set")
            upstream = socket.create_connection(self.target, timeout=IO_TIMEOUT)
        except OSError:
            client.close()
            return
        client.settimeout(60)
        upstream.settimeout(60)

        def pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    if keep is not None and len(keep) < self.keep:
                        with self._lock:
                            keep += data[: self.keep - len(keep)]
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
        back.start()
        pump(client, upstream, record)
        back.join(60)
        client.close()
        upstream.close()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(STOP_TIMEOUT)

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def digest_get_status(
    proxy: ProxydHandle, origins: Origins, env: Mapping[str, str], user: str, password: str
) -> int:
    """curl --proxy-digest to the HTTP origin through `proxy`: the final status."""
    host, port = origins.http
    args = [
        "--proxy-digest",
        "-U",
        f"{user}:{password}",
        "-x",
        proxy.url,
        f"http://{host}:{port}/x",
    ]
    return curl(args, env).transfers[0].code


@contextlib.contextmanager
def syn_dropper(host: str = ORIGIN_HOST, port: int = 0) -> Iterator[int]:
    """A port on `host` whose SYNs the kernel drops: a listener with a backlog of 0 that
    never accepts, its accept queue filled by two connections (Linux drops a SYN to a full
    queue instead of refusing it, so a connect then hangs)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((host, port))
            fillers.append(s)
        time.sleep(0.2)  # the handshakes of the fillers complete in the kernel
        probe = socket.socket()
        probe.settimeout(1.0)
        with pytest.raises(TimeoutError):  # the premise: a connect here hangs
            probe.connect((host, port))
        probe.close()
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()
