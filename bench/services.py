"""The processes under test and behind it: nginx, the TCP origin, Squid, the bare
mitmproxy engine (bare_engine.py) and proxyd; and the TLS listeners' certificate
(`make_proxy_tls`: a throwaway trustme CA, Squid's `https_port` and proxyd's `tls_listen`).

Every start waits with a deadline and every stop escalates SIGTERM -> SIGKILL, so a
broken component fails the bench instead of hanging it. All listen on loopback only.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import digest

ORIGIN_HOST = "127.0.0.2"
PROXY_HOST = "127.0.0.1"
SQUID = "/usr/sbin/squid"
NGINX = "/usr/sbin/nginx"
DIGEST_HELPER = "/usr/lib/squid/digest_file_auth"
SQUID_USER = "proxy"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
FILE_1K = b"x" * 1023 + b"\n"
REPO = Path(__file__).resolve().parent.parent
PROXYD = Path(sys.executable).parent / "proxyd"
# The name the TLS listeners' certificate is issued for (and 127.0.0.1); clients send it as
# SNI and check the certificate against it.
TLS_HOSTNAME = "proxy.bench.test"


class StartError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    address: tuple[str, int]
    argv: list[str]
    cwd: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The whole group: Squid's helpers, proxyd's workers.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)

    def restart(self) -> Service:
        """The same program on the same address, as a fresh process."""
        self.stop()
        return _spawn(self.name, self.argv, self.log_path, self.address, self.cwd)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def _spawn(
    name: str, argv: Sequence[str], log_path: Path, address: tuple[str, int], cwd: Path
) -> Service:
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=cwd,
            start_new_session=True,  # its own group, so a stuck tree can be killed whole
        )
    service = Service(name, proc, log_path, address, list(argv), cwd)
    deadline = time.monotonic() + START_TIMEOUT
    while not _accepts(address):
        if proc.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise StartError(f"{name} did not listen on {address}:\n{service.log_tail()}")
        time.sleep(0.05)
    return service


def pinned(argv: Sequence[str], cpus: set[int] | None) -> list[str]:
    """`argv` under taskset, so every thread and child starts with the affinity."""
    if cpus is None:
        return list(argv)
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *argv]


def version(argv: Sequence[str], pattern: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    match = re.search(pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


# --------------------------------------------------------------------------- origins


def start_nginx(directory: Path) -> Service:
    """nginx serving /1k (1 KiB) with keep-alive that never ends a connection mid-run."""
    directory.mkdir(mode=0o755)
    (directory / "www").mkdir(mode=0o755)
    (directory / "www" / "1k").write_bytes(FILE_1K)
    (directory / "www" / "1k").chmod(0o644)
    port = free_port(ORIGIN_HOST)
    (directory / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body-temp;
    proxy_temp_path {directory}/proxy-temp;
    fastcgi_temp_path {directory}/fastcgi-temp;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    open_file_cache max=16 inactive=600s;
    server {{
        listen {ORIGIN_HOST}:{port} backlog=4096;
        root {directory}/www;
        location = /1k {{ }}
    }}
}}
"""
    )
    argv = [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    argv += ["-e", str(directory / "error.log")]
    return _spawn("nginx", argv, directory / "nginx.out", (ORIGIN_HOST, port), directory)


def start_tcp_origin(directory: Path) -> Service:
    directory.mkdir(mode=0o755)
    port = free_port(ORIGIN_HOST)
    argv = [sys.executable, str(Path(__file__).with_name("origin.py")), ORIGIN_HOST, str(port)]
    return _spawn("tcp-origin", argv, directory / "origin.out", (ORIGIN_HOST, port), directory)


# --------------------------------------------------------------------------- proxies


@dataclass(frozen=True)
class TlsFiles:
    """The TLS listeners' certificate: PEM files, and the CA clients verify it with."""

    ca: Path
    certificate: Path  # the certificate, then its chain
    key: Path
    hostname: str
    key_type: str


def make_proxy_tls(directory: Path) -> TlsFiles:
    """A throwaway CA (trustme, in the venv with the test dependencies) and a certificate
    for TLS_HOSTNAME and PROXY_HOST; readable by Squid's user. trustme's default key type
    (ECDSA P-256), as an ACME client's default certificate today."""
    import trustme

    directory.mkdir(mode=0o755)
    ca = trustme.CA(organization_name="proxyd bench")
    leaf = ca.issue_cert(TLS_HOSTNAME, PROXY_HOST)
    files = TlsFiles(
        directory / "ca.pem",
        directory / "proxy.crt",
        directory / "proxy.key",
        TLS_HOSTNAME,
        "ECDSA P-256",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    files.certificate.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    account = pwd.getpwnam(SQUID_USER)
    for path, mode in ((files.ca, 0o644), (files.certificate, 0o644), (files.key, 0o640)):
        path.chmod(mode)
        os.chown(path, 0, account.pw_gid)
    return files


def start_squid(
    directory: Path,
    name: str,
    htdigest: Path | None,
    ports: Sequence[int],
    cpus: set[int] | None,
    tls: TlsFiles | None = None,
) -> Service:
    """Squid with proxyd's bench policy: only ORIGIN_HOST on `ports`, Digest if htdigest;
    with `tls` its only port is an `https_port` (TLS to the proxy, Debian's GnuTLS build),
    the rest of the configuration unchanged.

    Started as root it switches to `proxy`, so its folder and password file go to that
    user (as in tests/integration/squid_kit.py).
    """
    directory.mkdir(mode=0o755)
    account = pwd.getpwnam(SQUID_USER)
    os.chown(directory, account.pw_uid, account.pw_gid)
    port = free_port(PROXY_HOST)
    port_list = " ".join(str(p) for p in ports)
    if tls is None:
        listen = f"http_port {PROXY_HOST}:{port}"
    else:
        listen = f"https_port {PROXY_HOST}:{port} tls-cert={tls.certificate} tls-key={tls.key}"
    lines = [
        listen,
        f"cache_effective_user {SQUID_USER}",
        f"acl bench_ports port {port_list}",
        f"acl bench_zone dst {ORIGIN_HOST}/32",
        "http_access deny !bench_ports",
        "http_access deny !bench_zone",
    ]
    if htdigest is not None:
        passwords = directory / "passwords.htdigest"
        shutil.copyfile(htdigest, passwords)
        passwords.chmod(0o600)
        os.chown(passwords, account.pw_uid, account.pw_gid)
        lines += [
            f"auth_param digest program {DIGEST_HELPER} -c {passwords}",
            "auth_param digest children 2 startup=1 idle=1",
            f"auth_param digest realm {digest.REALM}",
            # Default 50: after 50 uses a nonce is stale and every client pays a 407 round
            # trip. Clients (and wrk here) reuse one nonce for the whole run.
            "auth_param digest nonce_max_count 2000000000",
            # Default on: Squid invalidates a nonce at the first nc not above the last one
            # seen, which 16-64 connections sharing a nonce deliver all the time. proxyd
            # keeps its replay check (a 1024-count window), so it does more work, not less.
            "auth_param digest check_nonce_count off",
            "auth_param digest nonce_strictness off",
            "acl authed proxy_auth REQUIRED",
            "http_access allow authed",
        ]
    else:
        lines.append("http_access allow all")
    lines += [
        "http_access deny all",
        "cache deny all",
        "cache_mem 8 MB",
        "access_log none",
        f"cache_log {directory}/cache.log",
        "cache_store_log none",
        "netdb_filename none",
        "pinger_enable off",
        "max_filedescriptors 20000",
        f"pid_filename {directory}/squid.pid",
        f"coredump_dir {directory}",
        "shutdown_lifetime 0 seconds",
    ]
    config = directory / "squid.conf"
    config.write_text("\n".join(lines) + "\n")
    argv = pinned([SQUID, "-N", "-f", str(config)], cpus)
    return _spawn(name, argv, directory / "squid.out", (PROXY_HOST, port), directory)


def proxyd_supports_workers() -> bool:
    """`--workers` is new: detected from `proxyd serve --help`, never assumed."""
    proc = subprocess.run(
        [str(PROXYD), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    return "--workers" in proc.stdout


def make_users(directory: Path) -> tuple[Path, Path]:
    """The bench account via `proxyd users add`; its htdigest export for Squid."""
    directory.mkdir(mode=0o755)
    config = directory / "users-config.yaml"
    _write_proxyd_config(config, directory / "users.digest", PROXY_HOST, 0, [1], auth=True)
    cli = [str(PROXYD), "users", "--config", str(config)]
    subprocess.run(
        [*cli, "add", digest.USER, "--password-stdin", "--no-expiry", "--note", "bench account"],
        input=f"{digest.PASSWORD}\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
    htdigest = directory / "users.htdigest"
    subprocess.run(
        [*cli, "export", "--format", "htdigest", "--output", str(htdigest)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory / "users.digest", htdigest


def _write_proxyd_config(
    path: Path,
    users: Path,
    host: str,
    port: int,
    ports: Sequence[int],
    *,
    auth: bool,
    tls: TlsFiles | None = None,
    tls_port: int = 0,
) -> None:
    import yaml  # proxyd's own dependency, in the same venv

    huge = {"burst": 100_000, "per_minute": 100_000}
    config: dict[str, Any] = {
        "listen": f"{host}:{port}",
        "realm": digest.REALM,
        "drain_timeout": 1,
        "auth": {
            "users_file": str(users),
            "nonce_secret_file": str(path.with_name(path.stem + ".nonce.secret")),
            "nonce_lifetime": 3600,
            "algorithms": ["MD5", "SHA-256"],
        },
        # Squid runs with `access_log none`; /dev/null is the nearest proxyd has.
        "access_log": {"path": "/dev/null", "format": "squid"},
        # The defaults (512 connections per source, failed-login buckets) would cap a
        # load that comes from one address.
        "limits": {
            "max_connections_per_source": 1_000_000,
            "auth_failures": {"per_source": huge, "per_user": huge},
        },
        "zones": {"bench": [f"{ORIGIN_HOST}/32"]},
        "rules": [
            {
                "name": "bench",
                "from": ["any"],
                "to": ["bench"],
                "ports": list(ports),
                "auth": "required" if auth else "none",
            }
        ],
    }
    if tls is not None:
        config["tls_listen"] = f"{host}:{tls_port}"
        config["tls"] = {"certificate": str(tls.certificate), "key": str(tls.key)}
        config["auth"]["basic_over_tls"] = True  # the Basic target; Digest works as well
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start_proxyd(
    directory: Path,
    name: str,
    users: Path,
    ports: Sequence[int],
    *,
    auth: bool,
    workers: int,
    cpus: set[int] | None,
    optimize: bool = False,
    tls: TlsFiles | None = None,
) -> Service:
    """`proxyd serve`; `optimize`: the same entry point under `python -O` (no asserts,
    and mitmproxy's per-message typechecks behind `__debug__` are skipped). With `tls`
    it also has `tls_listen` with that certificate and `auth.basic_over_tls`, and the
    service's address is the TLS listener's (the plain one is unused)."""
    directory.mkdir(mode=0o755)
    port = free_port(PROXY_HOST)
    tls_port = free_port(PROXY_HOST) if tls is not None else 0
    while tls is not None and tls_port == port:
        tls_port = free_port(PROXY_HOST)
    config = directory / "config.yaml"
    _write_proxyd_config(
        config, users, PROXY_HOST, port, ports, auth=auth, tls=tls, tls_port=tls_port
    )
    argv = [str(PROXYD), "serve", "--config", str(config)]
    if optimize:
        argv = [sys.executable, "-O", *argv]
    if workers > 1:
        argv += ["--workers", str(workers)]
    address = (PROXY_HOST, tls_port if tls is not None else port)
    return _spawn(name, pinned(argv, cpus), directory / "proxyd.out", address, directory)


def start_bare_engine(
    directory: Path, name: str, cpus: set[int] | None, *, optimize: bool = False
) -> Service:
    """bare_engine.py: a mitmproxy master with only plain proxying (no auth, no policy),
    on the venv's mitmproxy, with proxyd's engine options."""
    directory.mkdir(mode=0o755)
    port = free_port(PROXY_HOST)
    script = str(Path(__file__).with_name("bare_engine.py"))
    argv = [sys.executable, *(["-O"] if optimize else []), script, PROXY_HOST, str(port)]
    return _spawn(name, pinned(argv, cpus), directory / "engine.out", (PROXY_HOST, port), directory)
