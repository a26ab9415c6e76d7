"""A real Squid with `digest_file_auth` on loopback: the second Digest proxy.

`start_squid(htdigest, allowed_ports)` runs `squid -N -f squid.conf` (foreground, no disk
cache) on 127.0.0.1:<free port> with realm `proxyd`, users from an htdigest file (as
`proxyd users export --format htdigest` writes it), CONNECT only to 127.0.0.2 on
`allowed_ports`. Squid started as root switches to `cache_effective_user` (Debian: proxy),
so its folder, password file and logs are handed to that user. Every wait is bounded.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import ORIGIN_HOST, PROXY_HOST, free_port

SQUID = "/usr/sbin/squid"
DIGEST_HELPER = "/usr/lib/squid/digest_file_auth"
SQUID_USER = "proxy"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def squid_version() -> str:
    out = subprocess.run([SQUID, "-v"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"Version (\S+)", out)
    return match.group(1) if match else "unknown"


@dataclass
class Squid:
    host: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        parts = []
        for name in ("squid.out", "cache.log", "access.log"):
            try:
                text = (self.directory / name).read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {name}\n{text}")
        return "\n".join(parts)

    def access_log(self) -> str:
        try:
            return (self.directory / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_squid(htdigest: Path, allowed_ports: Sequence[int]) -> Squid:
    # Not under pytest's tmp folders: those are 0700 root, which `proxy` can't enter.
    directory = Path(tempfile.mkdtemp(prefix="proxyd-squid-"))
    directory.chmod(0o755)
    account = pwd.getpwnam(SQUID_USER)
    passwords = directory / "passwords.htdigest"
    shutil.copyfile(htdigest, passwords)
    passwords.chmod(0o600)
    os.chown(passwords, account.pw_uid, account.pw_gid)
    os.chown(directory, account.pw_uid, account.pw_gid)
    port = free_port(PROXY_HOST)
    config = directory / "squid.conf"
    config.write_text(
        f"http_port {PROXY_HOST}:{port}\n"
        f"cache_effective_user {SQUID_USER}\n"
        f"auth_param digest program {DIGEST_HELPER} -c {passwords}\n"
        "auth_param digest children 2 startup=1 idle=1\n"
        "auth_param digest realm proxyd\n"
        f"acl SSH_port port {' '.join(str(port) for port in allowed_ports)}\n"
        "acl CONNECT method CONNECT\n"
        "acl authed proxy_auth REQUIRED\n"
        f"acl dst_ok dst {ORIGIN_HOST}\n"
        "http_access deny CONNECT !SSH_port\n"
        "http_access deny !dst_ok\n"
        "http_access allow authed\n"
        "http_access deny all\n"
        "cache deny all\n"
        "cache_mem 8 MB\n"
        f"access_log stdio:{directory}/access.log\n"
        f"cache_log {directory}/cache.log\n"
        "cache_store_log none\n"
        "netdb_filename none\n"
        f"pid_filename {directory}/squid.pid\n"
        f"coredump_dir {directory}\n"
        "shutdown_lifetime 0 seconds\n"
    )
    with (directory / "squid.out").open("wb") as out:
        proc = subprocess.Popen(
            [SQUID, "-N", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=directory,
            start_new_session=True,
        )
    squid = Squid(PROXY_HOST, port, directory, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while not _accepts(PROXY_HOST, port):
        if proc.poll() is not None:
            log = squid.log()
            squid.stop()
            raise AssertionError(f"squid exited ({proc.returncode}):\n{log}")
        if time.monotonic() > deadline:
            log = squid.log()
            squid.stop()
            raise AssertionError(f"squid did not listen on {PROXY_HOST}:{port}:\n{log}")
        time.sleep(0.05)
    return squid
