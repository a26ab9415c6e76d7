"""Helpers for the jump-account tests: keys, a real sshd, the gate wrapper, the ssh client.

Everything runs on loopback (127.0.0.1 jump sshd, 127.0.0.2 allowed target, 127.0.0.3
outside the zones) and every wait is bounded by a deadline; nothing sleeps a fixed time
to "let things settle".

Test accounts and groups all start with a per-test prefix `pjt` + 4 random lowercase
letters + `-` (see `new_prefix`); `purge_prefix` removes every one of them, whatever the
test did, and refuses any prefix that does not look like ours.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import json
import os
import pwd
import re
import secrets
import signal
import socket
import socketserver
import string
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROXY_HOST = "127.0.0.1"
TARGET_HOST = "127.0.0.2"
DENIED_HOST = "127.0.0.3"
INTERNAL_SOURCE = "127.0.0.10"
REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
BANNER = b"SSH-2.0-proxyd-jump-speak-first\r\n"
START_TIMEOUT = 20.0
IO_TIMEOUT = 30.0
_PREFIX_RE = re.compile(r"pjt[a-z]{4}-")


# --------------------------------------------------------------------------- processes


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never a shell), text output, bounded by `timeout`."""
    if isinstance(input, bytes):
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, env=env, timeout=timeout
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
    return subprocess.run(
        list(argv), input=input, capture_output=True, text=True, env=env, timeout=timeout
    )


def proxyd_bin() -> Path:
    return Path(sys.executable).parent / "proxyd"


def client_env(home: Path) -> dict[str, str]:
    """os.environ without an ssh agent, proxy variables or the caller's HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")
    }
    env["HOME"] = str(home)
    env["LC_ALL"] = "C"
    return env


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free_on(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def live_processes(uid: int) -> list[int]:
    """PIDs of processes of `uid` that are not zombies (a killed process whose parent
    died waits, as a zombie, for PID 1 to reap it: it runs nothing)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(status.parent.name))
    return pids


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- keys


def keygen(path: Path, key_type: str = "ed25519", bits: int | None = None) -> Path:
    """A fresh key pair at `path` (no passphrase); returns the .pub path."""
    argv = [
        "ssh-keygen",
        "-q",
        "-t",
        key_type,
        "-N",
        "",
        "-C",
        f"test-{path.name}",
        "-f",
        str(path),
    ]
    if bits is not None:
        argv[1:1] = ["-b", str(bits)]
    proc = run(argv)
    assert proc.returncode == 0, f"ssh-keygen {key_type} failed: {proc.stderr}"
    return path.with_name(path.name + ".pub")


def fingerprint(pub: Path) -> str:
    """SHA256:... as `ssh-keygen -l -f` prints it."""
    proc = run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[1]


# --------------------------------------------------------------------------- test accounts


def new_prefix() -> str:
    return "pjt" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(4)) + "-"


def prefixed_users(prefix: str) -> list[str]:
    return [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(prefix)]


def prefixed_groups(prefix: str) -> list[str]:
    return [g.gr_name for g in grp.getgrall() if g.gr_name.startswith(prefix)]


def purge_prefix(prefix: str) -> list[str]:
    """Kill the processes of, then delete, every user and group named `prefix*`.

    Returns what could not be removed (the caller reports it). Only our own prefixes."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"refusing to purge {prefix!r}: not a test prefix")
    problems: list[str] = []
    for name in prefixed_users(prefix):
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(name).pw_uid
            if uid != 0:
                for _ in range(3):
                    run(["pkill", "-KILL", "-U", str(uid)])
                    if run(["pgrep", "-U", str(uid)]).returncode != 0:
                        break
                    time.sleep(0.1)
        proc = run(["userdel", "--remove", "--force", "--", name])
        if name in prefixed_users(prefix):
            problems.append(f"user {name}: {proc.stderr.strip()}")
    for name in prefixed_groups(prefix):
        proc = run(["groupdel", "--", name])
        if name in prefixed_groups(prefix):
            problems.append(f"group {name}: {proc.stderr.strip()}")
    return problems


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def shadow_expire_day(name: str) -> int | None:
    """The account-expiry field of /etc/shadow (days since 1970-01-01), None if empty."""
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[7]) if fields[7] else None
    raise KeyError(name)


def shadow_password(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[1]
    raise KeyError(name)


def epoch_day(day: datetime.date) -> int:
    return (day - datetime.date(1970, 1, 1)).days


def today_utc() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def days_ahead(days: int) -> datetime.date:
    """A date `days` after today, read at each call: the CLI reads today at
    each call too, so a date fixed at import goes stale when a run crosses
    midnight UTC (a tomorrow taken at 23:59 is today at 00:01)."""
    return today_utc() + datetime.timedelta(days=days)


# --------------------------------------------------------------------------- gate wrapper


def write_gate(path: Path, launcher: Path) -> Path:
    """An executable that runs this checkout's `proxyd` for any user.

    sshd runs the forced command as the jump account, not as root, and a newcomer's
    checkout and venv may live where other users cannot reach them (under /root, mode
    0700, or `mktemp -d`): the gate runs the world-readable install (`world_install`).
    """
    path.write_text(f"#!/bin/sh\nexec '{launcher}' \"$@\"\n")
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- servers


class Sshd:
    """`sshd -D -e -f CONFIG` on host:port; stderr (its log) goes to a file."""

    def __init__(self, config: Path, host: str, port: int, log: Path) -> None:
        self.config, self.host, self.port, self.log_path = config, host, port, log
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        check = run([SSHD, "-t", "-f", str(config)])
        assert check.returncode == 0, f"sshd -t refused {config}:\n{check.stderr}"
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(host, port):
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not listen on {host}:{port}:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def sshd_config(
    host: str,
    port: int,
    host_key: Path,
    *,
    strict_modes: bool,
    use_pam: bool = False,
    extra: str = "",
    authorized_keys: str = ".ssh/authorized_keys",
    permit_root: str = "no",
) -> str:
    return (
        f"ListenAddress {host}:{port}\n"
        f"HostKey {host_key}\n"
        "PidFile none\n"
        f"UsePAM {'yes' if use_pam else 'no'}\n"
        f"StrictModes {'yes' if strict_modes else 'no'}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        f"PermitRootLogin {permit_root}\n"
        "LogLevel VERBOSE\n"
        "MaxStartups 100:30:200\n"
        "Subsystem sftp internal-sftp\n" + extra
    )


class SpeakFirst(socketserver.ThreadingTCPServer):
    """Sends BANNER on accept, then echoes; counts accepted connections in `hits`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int) -> None:
        self.hits = 0
        self.lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _SpeakFirstHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.lock:
            self.hits += 1
        return True

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _SpeakFirstHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(IO_TIMEOUT)
        with contextlib.suppress(OSError):
            self.request.sendall(BANNER)
            while data := self.request.recv(65536):
                self.request.sendall(data)


# --------------------------------------------------------------------------- the targets


@dataclass
class Targets:
    """Session-wide: an sshd on 127.0.0.2 that lets root in with `key`, and speak-first
    servers that must never be reached through the jump host."""

    directory: Path
    key: Path  # private key root logs in to the target sshd with
    port: int  # the target sshd, 127.0.0.2; in the policy and in jump.ports
    sshd: Sshd
    denied: SpeakFirst  # 127.0.0.3:port (same number as the target when possible)
    offport: SpeakFirst  # 127.0.0.2, a port the policy allows but jump.ports does not
    jumponly: SpeakFirst  # 127.0.0.2, a port in jump.ports but in no rule
    servers: list[SpeakFirst] = field(default_factory=list)

    def hits(self) -> int:
        return self.denied.hits + self.offport.hits + self.jumponly.hits

    def stop(self) -> None:
        self.sshd.stop()
        for server in (self.denied, self.offport, self.jumponly):
            server.stop()


def start_targets(directory: Path) -> Targets:
    directory.chmod(0o755)
    host_key = directory / "target_host_key"
    keygen(host_key)
    key = directory / "target_root_key"
    pub = keygen(key)
    authorized = directory / "target_authorized_keys"
    authorized.write_text(pub.read_text())
    port = free_port(TARGET_HOST)
    for _ in range(20):
        if port_free_on(DENIED_HOST, port):
            break
        port = free_port(TARGET_HOST)
    config = directory / "target_sshd_config"
    # StrictModes no: the authorized_keys file lives under /tmp (mode 1777), which sshd's
    # path check would reject for root, whose home is elsewhere.
    config.write_text(
        sshd_config(
            TARGET_HOST,
            port,
            host_key,
            strict_modes=False,
            authorized_keys=str(authorized),
            permit_root="prohibit-password",
        )
    )
    sshd = Sshd(config, TARGET_HOST, port, directory / "target_sshd.log")
    denied = SpeakFirst(DENIED_HOST, port if port_free_on(DENIED_HOST, port) else 0)
    offport = SpeakFirst(TARGET_HOST, 0)
    jumponly = SpeakFirst(TARGET_HOST, 0)
    return Targets(directory, key, port, sshd, denied, offport, jumponly)


def port_of(server: SpeakFirst) -> int:
    return int(server.server_address[1])


# --------------------------------------------------------------------------- the jump host


def base_config(targets: Targets, directory: Path, group: str, gate: Path) -> dict[str, Any]:
    """A proxyd config: partners (from any, authenticated) may reach 127.0.0.2 on the
    target port and the off-port; jump accounts only on the target port and the
    jump-only port (which no rule allows); 127.0.0.3 is in no zone a partner rule names."""
    (directory / "hosts").write_text(
        "# test resolver\n"
        f"{TARGET_HOST}\ttarget.test\n"
        f"{DENIED_HOST}\tevil.test\n"
        f"{TARGET_HOST}\tmixed.test\n"
        f"{DENIED_HOST}\tmixed.test\n"
    )
    return {
        "listen": f"{PROXY_HOST}:0",
        "realm": "proxyd",
        "auth": {"users_file": "users.digest", "nonce_secret_file": "nonce.secret"},
        "dns": {"hosts_file": "hosts", "timeout": 5},
        "zones": {"testzone": [f"{TARGET_HOST}/32"], "internal": [f"{INTERNAL_SOURCE}/32"]},
        "rules": [
            {
                "name": "partners",
                "from": ["any"],
                "to": ["testzone"],
                "ports": [targets.port, port_of(targets.offport)],
                "auth": "required",
            }
        ],
        "jump": {
            "group": group,
            "home_base": str(directory / "home"),
            "state_dir": str(directory / "state"),
            "keys_dir": str(keys_dir_for(group)),
            "audit_log": str(directory / "audit.log"),
            "grants_file": str(directory / "jump-grants.json"),
            "rsa_min_bits": 3072,
            "ports": [targets.port, port_of(targets.jumponly)],
            "gate": str(gate),
        },
    }


def keys_dir_for(group: str) -> Path:
    """Under /run, not /tmp: sshd's StrictModes wants every folder above the keys owned by
    root and not world-writable, and /tmp is 1777."""
    return Path("/run") / f"proxyd-{group}-keys"


class JumpHost:
    """One test's jump host: a proxyd config, its accounts (named with `prefix`), a real
    sshd whose config ends with `proxyd jump sshd-config`, and an ssh client."""

    def __init__(self, targets: Targets, prefix: str, directory: Path, launcher: Path) -> None:
        import yaml

        self.yaml = yaml
        self.targets = targets
        self.prefix = prefix
        self.group = f"{prefix}jump"
        self.directory = directory
        directory.chmod(0o755)  # the gate, run as the account, reads the config
        self.home_base = directory / "home"
        self.state_dir = directory / "state"
        self.keys_dir = keys_dir_for(self.group)
        self.audit_log = directory / "audit.log"
        self.markers = directory / "markers"
        self.markers.mkdir()
        self.markers.chmod(0o1777)  # an injected command could write here if it ran
        self.client_home = directory / "client-home"
        self.client_home.mkdir(mode=0o700)
        self.gate = write_gate(directory / "proxyd-gate", launcher)
        self.config_path = directory / "proxyd.yaml"
        self.config: dict[str, Any] = base_config(targets, directory, self.group, self.gate)
        self.write_config()
        self.keys = directory / "keys"
        self.keys.mkdir(mode=0o700)
        self.sshd: Sshd | None = None
        self.port = 0
        self.sessions: list[subprocess.Popen[bytes]] = []

    # -- config ---------------------------------------------------------------------------

    def write_config(self) -> None:
        self.config_path.write_text(self.yaml.safe_dump(self.config, sort_keys=False))
        self.config_path.chmod(0o644)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def key(self, label: str, key_type: str = "ed25519", bits: int | None = None) -> Path:
        """A client key pair; returns the private key path (the .pub is beside it)."""
        path = self.keys / label
        if not path.exists():
            keygen(path, key_type, bits)
        return path

    # -- proxyd ---------------------------------------------------------------------------

    def proxyd(
        self, *args: str, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`proxyd jump --config F ARGS` as root."""
        return run(
            [str(proxyd_bin()), "jump", "--config", str(self.config_path), *args], input=input
        )

    def add(
        self,
        suffix: str,
        key: Path | None = None,
        *,
        expires: datetime.date | None = None,
        profile: str = "tunnel",
    ) -> tuple[str, Path]:
        """Add account prefix+suffix with `key` (default: a fresh ed25519); asserts it worked."""
        name = self.name(suffix)
        key = key or self.key(suffix)
        expires = expires or today_utc() + datetime.timedelta(days=30)
        proc = self.proxyd(
            "add",
            name,
            "--key",
            f"{key}.pub",
            "--expires",
            expires.isoformat(),
            "--profile",
            profile,
            "--note",
            "jump test",
        )
        assert proc.returncode == 0, f"add {name} failed: {proc.stdout}{proc.stderr}"
        return name, key

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def authorized_keys(self, name: str) -> Path:
        return self.keys_dir / name

    # -- sshd -----------------------------------------------------------------------------

    def sshd_block(self) -> str:
        proc = self.proxyd("sshd-config")
        assert proc.returncode == 0, f"sshd-config failed: {proc.stderr}"
        return proc.stdout

    def start_sshd(self, use_pam: bool = True) -> int:
        """Start the jump sshd (again, after a config change) with the current block.

        UsePAM yes by default, as Debian's sshd_config has it: with UsePAM no, sshd itself
        refuses every account whose password field starts with "!" ("account is locked"),
        and `jump add` locks passwords with `usermod --lock`."""
        if self.sshd is not None:
            self.sshd.stop()
        host_key = self.directory / "jump_host_key"
        if not host_key.exists():
            keygen(host_key)
        self.port = free_port(PROXY_HOST)
        config = self.directory / "jump_sshd_config"
        # StrictModes yes (the default) works: sshd checks authorized_keys, ~/.ssh and the
        # home, and stops at the home; the homes useradd creates here are the account's.
        config.write_text(
            sshd_config(PROXY_HOST, self.port, host_key, strict_modes=True, use_pam=use_pam)
            + "\n"
            + self.sshd_block()
        )
        self.sshd = Sshd(config, PROXY_HOST, self.port, self.directory / "jump_sshd.log")
        return self.port

    def sshd_denied(self, host: str, port: int) -> bool:
        """Whether sshd logged refusing a direct-tcpip open to host:port (PermitOpen)."""
        assert self.sshd is not None
        return f"to connect to host {host} port {port}, but the request was denied" in (
            self.sshd.log()
        )

    def sshd_effective(self, user: str) -> dict[str, list[str]]:
        """`sshd -T -C user=...`: the settings sshd would apply to `user` (from 127.0.0.1)."""
        assert self.sshd is not None
        proc = run(
            [
                SSHD,
                "-T",
                "-f",
                str(self.sshd.config),
                "-C",
                f"user={user},host=localhost,addr=127.0.0.1",
            ]
        )
        assert proc.returncode == 0, proc.stderr
        settings: dict[str, list[str]] = {}
        for line in proc.stdout.splitlines():
            key, _, value = line.partition(" ")
            settings.setdefault(key, []).append(value)
        return settings

    # -- ssh client -----------------------------------------------------------------------

    def client_config(self, jump_key: Path | None, label: str = "client") -> Path:
        """An ssh_config: no host-key prompts, batch mode, only the named keys.

        `-J` starts the hop's ssh with `-F` of the outer command but not its `-o`/`-i`
        options, so every option lives in this file."""
        path = self.directory / f"ssh_config.{label}"
        jump_identity = f"    IdentityFile {jump_key}\n" if jump_key else "    IdentityFile none\n"
        path.write_text(
            "Host 127.0.0.1\n"
            + jump_identity
            + f"Host {TARGET_HOST} {DENIED_HOST} *.test 127.1.*\n"
            f"    IdentityFile {self.targets.key}\n"
            "Host *\n"
            "    StrictHostKeyChecking no\n"
            "    UserKnownHostsFile /dev/null\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    BatchMode yes\n"
            "    IdentitiesOnly yes\n"
            "    ConnectTimeout 10\n"
            "    ConnectionAttempts 1\n"
            "    LogLevel INFO\n"
            "    ControlMaster no\n"
            "    ControlPath none\n"
            "    UpdateHostKeys no\n"
        )
        return path

    def ssh_argv(self, config: Path, *args: str) -> list[str]:
        return ["ssh", "-F", str(config), *args]

    def ssh(
        self,
        config: Path,
        *args: str,
        input: str | bytes | None = "",
        env: Mapping[str, str] | None = None,
        timeout: float = IO_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            self.ssh_argv(config, *args),
            input=input,
            env=dict(env or client_env(self.client_home)),
            timeout=timeout,
        )

    def via_proxycommand(
        self, config: Path, user: str, host: str, port: int, *command: str
    ) -> subprocess.CompletedProcess[str]:
        """The guide's form: ssh -o ProxyCommand="ssh USER@proxy nc %h %p" root@host."""
        proxy = f"ssh -F {config} -p {self.port} {user}@{PROXY_HOST} nc %h %p"
        return self.ssh(
            config, "-o", f"ProxyCommand={proxy}", "-p", str(port), f"root@{host}", *command
        )

    def via_jump(
        self, config: Path, user: str, host: str, port: int, *command: str
    ) -> subprocess.CompletedProcess[str]:
        """ssh -J USER@proxy:PORT root@host."""
        return self.ssh(
            config,
            "-J",
            f"{user}@{PROXY_HOST}:{self.port}",
            "-p",
            str(port),
            f"root@{host}",
            *command,
        )

    def on_proxy(
        self, config: Path, user: str, *command: str, options: Sequence[str] = (), **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """ssh [OPTIONS] -p PORT USER@proxy COMMAND (what the forced command sees)."""
        return self.ssh(
            config, *options, "-p", str(self.port), f"{user}@{PROXY_HOST}", *command, **kw
        )

    def popen_ssh(self, config: Path, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self.ssh_argv(config, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=client_env(self.client_home),
            start_new_session=True,
        )
        self.sessions.append(proc)
        return proc

    # -- teardown -------------------------------------------------------------------------

    def stop(self) -> None:
        for proc in self.sessions:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self.sshd is not None:
            self.sshd.stop()


def read_line(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or AssertionError after `timeout`."""
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise AssertionError(f"no line within {timeout}s")
    return result[0]


def refused_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("proxyd: refused:")]


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*")) if directory.exists() else []


def sweep_at(jump: JumpHost, day: datetime.date, *extra: str) -> subprocess.CompletedProcess[str]:
    """`proxyd jump sweep` as if today (UTC) were `day`: the CLI with its clock replaced.
    (Accounts cannot be added with a past date, so time has to pass for the sweeper.)"""
    code = (
        "import datetime, sys\n"
        "import proxy.cli.jump as j\n"
        "assert hasattr(j, '_today'), 'proxy.cli.jump._today is gone: update this test'\n"
        "j._today = lambda: datetime.date.fromisoformat(sys.argv[1])\n"
        "from proxy.cli.main import main\n"
        "sys.exit(main(sys.argv[2:]))\n"
    )
    return run(
        [
            sys.executable,
            "-c",
            code,
            day.isoformat(),
            "jump",
            "--config",
            str(jump.config_path),
            "sweep",
            *extra,
        ]
    )
