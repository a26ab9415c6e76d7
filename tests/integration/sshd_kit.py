"""A real OpenSSH server on loopback for the `proxyd connect` tests.

`start_sshd(directory)` runs `/usr/sbin/sshd -D -e -f CONFIG` on 127.0.0.2 (a free port,
loopback only) with its own host key, key-only login for root, and a fresh ed25519 client
key in a root-owned authorized_keys file. Every wait is bounded.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import ORIGIN_HOST, free_port

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair at `path` (no passphrase); returns the .pub path."""
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"test-{path.name}", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"ssh-keygen failed: {proc.stderr}"
    return path.with_name(path.name + ".pub")


@dataclass
class SshTarget:
    """A running sshd: root logs in on host:port with the private key `key`."""

    host: str
    port: int
    key: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def start_sshd(directory: Path, host: str = ORIGIN_HOST) -> SshTarget:
    directory.chmod(0o755)
    host_key = directory / "host_key"
    keygen(host_key)
    key = directory / "client_key"
    pub = keygen(key)
    authorized = directory / "authorized_keys"
    authorized.write_text(pub.read_text())
    authorized.chmod(0o600)  # root-owned (we are root), readable by sshd only
    port = free_port(host)
    config = directory / "sshd_config"
    # StrictModes no: the authorized_keys file lives under /tmp (mode 1777), and sshd's
    # path check refuses any world-writable folder above a key file. The file itself is
    # root's and 0600, so nothing weaker is accepted in practice.
    config.write_text(
        f"ListenAddress {host}:{port}\n"
        f"HostKey {host_key}\n"
        "PidFile none\n"
        "UsePAM no\n"
        "StrictModes no\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "LogLevel VERBOSE\n"
        "MaxStartups 100:30:200\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, f"sshd -t refused {config}:\n{check.stderr}"
    log_path = directory / "sshd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    target = SshTarget(host, port, key, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not accepts(host, port):
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited ({proc.returncode}):\n{target.log()}")
        if time.monotonic() > deadline:
            target.stop()
            raise AssertionError(f"sshd did not listen on {host}:{port}:\n{target.log()}")
        time.sleep(0.02)
    return target
