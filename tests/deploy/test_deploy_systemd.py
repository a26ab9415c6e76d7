"""The systemd units: `systemd-analyze verify`, offline security exposure, and the commands.

`verify` refuses a unit whose ExecStart binary does not exist, and the units name the
documented install path /opt/proxyd/.venv/bin/proxyd, which this machine does not have
(and a test must not create it there). So the units are copied to a temporary folder with
that one path replaced by this venv's real proxyd, and the copies are verified: everything
else is checked exactly as shipped. Warnings (an unknown key, a bad value) count as
failures, since `verify` reports them but still exits 0.

certbot-deploy-hook.sh, the certbot deploy hook for the TLS listener's certificate, is run
as certbot runs it, on a certbot-like /etc/letsencrypt under a temporary folder (its
PROXYD_* variables point it there, and a fake systemctl stands in for the real one), and
once under a running proxyd, which must serve the renewed certificate without a restart.
"""

from __future__ import annotations

import configparser
import grp
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from deploy_kit import DEPLOY, VENV_BIN, proxyd_argv_ok, tool, uncommented_tls

pytestmark = pytest.mark.timeout(120)

UNITS = DEPLOY / "systemd"
INSTALLED_PROXYD = "/opt/proxyd/.venv/bin/proxyd"
UNIT_FILES = sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))
MAX_EXPOSURE = {"proxyd.service": 2.0, "proxyd-jump-sweep.service": 5.0}


def read_unit(name: str) -> configparser.RawConfigParser:
    """A unit as sections of key -> list of values (keys may repeat in systemd)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None, dict_type=_Multi)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


class _Multi(dict[str, object]):
    """configparser dict that keeps repeated keys as a list (systemd allows repeats)."""

    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and key in self:
            existing = super().__getitem__(key)
            assert isinstance(existing, list)
            existing.extend(value)
        else:
            super().__setitem__(key, value)


def values(unit: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    raw = unit.get(section, key, raw=True, fallback=None)
    if raw is None:
        return []
    return [line.strip() for line in str(raw).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def installed_copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("units")
    for name in UNIT_FILES:
        text = (UNITS / name).read_text()
        (folder / name).write_text(text.replace(INSTALLED_PROXYD, str(VENV_BIN / "proxyd")))
    return folder


def test_the_expected_units_exist() -> None:
    assert UNIT_FILES == [
        "proxyd-jump-sweep.service",
        "proxyd-jump-sweep.timer",
        "proxyd.service",
    ]


@pytest.mark.parametrize("name", UNIT_FILES)
def test_systemd_analyze_verify(installed_copies: Path, name: str) -> None:
    analyze = tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(installed_copies / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed_copies,  # a timer's service is found next to it
    )
    # Only lines about our units count: on a booted machine, verify also loads the stock
    # units ours depend on (multi-user.target and what it pulls in) and may warn about those.
    ours = [line for line in proc.stderr.splitlines() if any(u in line for u in UNIT_FILES)]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_verify_really_checks(tmp_path: Path) -> None:
    """Not vacuous: a unit with a missing binary fails, an unknown key is reported."""
    analyze = tool("systemd-analyze")
    broken = tmp_path / "broken.service"
    broken.write_text("[Service]\nExecStart=/nonexistent/proxyd serve\nRestartt=always\n")
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "Unknown key" in proc.stderr and "not executable" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_security_exposure(installed_copies: Path, name: str) -> None:
    """`systemd-analyze security --offline`: 0 is fully locked down, 10 is none at all."""
    analyze = tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(installed_copies / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE[name], proc.stdout


def test_proxyd_service_hardening() -> None:
    unit = read_unit("proxyd.service")
    service = {key: values(unit, "Service", key) for key in unit.options("Service")}
    assert service["User"] == ["proxyd"] and service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(service["LimitNOFILE"][0]) >= 16384, "thousands of tunnels, two sockets each"
    for key, want in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == [want], key
    # Listening above 1024 needs no capability at all.
    assert service["CapabilityBoundingSet"] == [] and service["AmbientCapabilities"] == []
    writable = " ".join(service["ReadWritePaths"]).split()
    assert sorted(writable) == ["/var/lib/proxyd/proxy", "/var/log/proxyd/proxy"]
    # systemd creates (and re-owns) exactly these for User=; not their parents, which hold
    # the jump host's root-owned audit log and state.
    assert service["LogsDirectory"] == ["proxyd/proxy"]
    assert service["StateDirectory"] == ["proxyd/proxy"]
    # Stopping waits for the drain (30 s by default) before systemd's SIGKILL.
    assert int(service["TimeoutStopSec"][0]) > 30


def test_exec_commands_are_proxyd_subcommands() -> None:
    """Every Exec line that runs proxyd runs the documented install path, with arguments
    that proxyd's own CLI accepts (a renamed option would otherwise break at boot)."""
    seen = 0
    for name in UNIT_FILES:
        unit = read_unit(name)
        if not unit.has_section("Service"):
            continue
        for key in ("ExecStartPre", "ExecStart", "ExecReload"):
            for line in values(unit, "Service", key):
                argv = shlex.split(line.lstrip("-+!@:"))
                if Path(argv[0]).name != "proxyd":
                    assert argv[0] == "/bin/kill", f"{name}: {key}={line}"
                    continue
                assert argv[0] == INSTALLED_PROXYD, f"{name}: {key}={line}"
                problem = proxyd_argv_ok(argv[1:])
                assert problem is None, f"{name}: {problem}"
                seen += 1
    assert seen == 3  # check-config, serve, jump sweep


def test_sweep_timer_runs_the_sweep_every_15_minutes_and_catches_up() -> None:
    timer = read_unit("proxyd-jump-sweep.timer")
    assert values(timer, "Timer", "OnCalendar") == ["*:0/15"]
    # Persistent= only acts on OnCalendar= timers (systemd.timer(5)).
    assert values(timer, "Timer", "Persistent") == ["true"]
    sweep = read_unit("proxyd-jump-sweep.service")
    assert values(sweep, "Service", "Type") == ["oneshot"]
    assert values(sweep, "Service", "ProtectHome") == ["no"], "userdel --remove needs /home"


# The certbot deploy hook: run as certbot runs it (RENEWED_LINEAGE, a live/ folder of
# symlinks into archive/), against temporary folders (PROXYD_TLS_DIR, PROXYD_GROUP).
HOOK = UNITS / "certbot-deploy-hook.sh"


def test_the_hook_parses_and_passes_shellcheck() -> None:
    """bash -n, and shellcheck (Debian's `shellcheck`, which `make test` installs) at its
    strictest severity."""
    parsed = subprocess.run(["bash", "-n", str(HOOK)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    assert HOOK.stat().st_mode & 0o111, "executable: certbot runs it by its path"
    shellcheck = tool("shellcheck")
    proc = subprocess.run(
        [shellcheck, "--severity=style", "--shell=bash", str(HOOK)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Lineage:
    """/etc/letsencrypt as certbot lays it out: archive/NAME/fullchainN.pem and
    privkeyN.pem (the key 0600), live/NAME/*.pem symlinks to the newest."""

    def __init__(self, root: Path, name: str = "proxy.example.net") -> None:
        from tls_kit import proxy_ca

        self.ca = proxy_ca(root / "ca")
        self.archive = root / "letsencrypt" / "archive" / name
        self.live = root / "letsencrypt" / "live" / name
        self.archive.mkdir(parents=True, mode=0o700)
        self.live.mkdir(parents=True, mode=0o700)
        self.version = 0

    def renew(self) -> tuple[bytes, bytes]:
        """A new version, as `certbot renew` writes it: (fullchain, privkey)."""
        self.version += 1
        chain, key = self.ca.issue(f"v{self.version}")
        blobs = {"fullchain": chain.read_bytes(), "privkey": key.read_bytes()}
        for kind, blob in blobs.items():
            target = self.archive / f"{kind}{self.version}.pem"
            target.write_bytes(blob)
            target.chmod(0o600 if kind == "privkey" else 0o644)
            link = self.live / f"{kind}.pem"
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(target, self.live))
        return blobs["fullchain"], blobs["privkey"]


def _run_hook(
    tmp: Path, lineage: Path | None, tls_dir: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    fake_bin = tmp / "bin"
    fake_bin.mkdir(exist_ok=True)
    base = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "PROXYD_TLS_DIR": str(tls_dir),
        "PROXYD_GROUP": grp.getgrgid(os.getgid()).gr_name,
        "PROXYD_RELOAD": "0",
    }
    if lineage is not None:
        base["RENEWED_LINEAGE"] = str(lineage)
    return subprocess.run(
        [str(HOOK)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
        stdin=subprocess.DEVNULL,
    )


def _fake_systemctl(tmp: Path, status: int) -> Path:
    """A `systemctl` first on the hook's PATH that records its arguments."""
    calls = tmp / "systemctl.calls"
    fake = tmp / "bin" / "systemctl"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\nexit {status}\n')
    fake.chmod(0o755)
    return calls


def test_the_hook_installs_each_renewal_readable_by_the_group_only(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path)
    tls_dir = tmp_path / "etc-proxyd" / "tls"
    versions = []
    for _ in range(2):
        chain, key = lineage.renew()
        proc = _run_hook(tmp_path, lineage.live, tls_dir)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (tls_dir / "tls.crt").read_bytes() == chain
        assert (tls_dir / "tls.key").read_bytes() == key
        for name in ("tls.crt", "tls.key"):
            st = (tls_dir / name).stat()
            assert stat.S_IMODE(st.st_mode) == 0o640, name
            assert st.st_gid == os.getgid(), name
            assert not (tls_dir / name).is_symlink(), "a copy, not a link into certbot's folders"
        assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o750
        assert sorted(p.name for p in tls_dir.iterdir()) == ["tls.crt", "tls.key"], "no leftovers"
        versions.append({n: (tls_dir / n).stat().st_ino for n in ("tls.crt", "tls.key")})
    # Renamed into place (a new inode each time), never rewritten where proxyd reads.
    assert all(versions[0][n] != versions[1][n] for n in versions[0])

    # What was installed is what proxyd loads: check-config with the config's tls: keys
    # pointing at the hook's folder.
    text, _ = uncommented_tls((DEPLOY / "container" / "proxyd.yaml").read_text())
    config = tmp_path / "proxyd.yaml"
    config.write_text(text.replace("/etc/proxyd/tls/", f"{tls_dir}/"))
    check = subprocess.run(
        [str(VENV_BIN / "proxyd"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_hook_reloads_proxyd_and_a_failed_reload_is_only_a_warning(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path)
    lineage.renew()
    tls_dir = tmp_path / "tls"
    calls = _fake_systemctl(tmp_path, 0)
    assert _run_hook(tmp_path, lineage.live, tls_dir).returncode == 0
    assert not calls.exists(), "PROXYD_RELOAD=0: no systemctl"
    proc = _run_hook(tmp_path, lineage.live, tls_dir, PROXYD_RELOAD="1")
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text() == "try-reload-or-restart proxyd.service\n"
    # ExecReload, which that runs, is the SIGHUP that re-reads the certificate files.
    assert values(read_unit("proxyd.service"), "Service", "ExecReload") == [
        "/bin/kill -HUP $MAINPID"
    ]

    _fake_systemctl(tmp_path, 1)
    failed = _run_hook(tmp_path, lineage.live, tls_dir, PROXYD_RELOAD="1")
    assert failed.returncode == 0, "the files are in place: certbot need not report a failure"
    assert "systemctl reload failed" in failed.stderr, failed.stderr


def test_the_hook_leaves_other_certificates_and_broken_lineages_alone(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path)
    lineage.renew()
    tls_dir = tmp_path / "tls"
    other = _run_hook(tmp_path, lineage.live, tls_dir, PROXYD_CERT_NAME="mail.example.net")
    assert other.returncode == 0 and not tls_dir.exists(), other.stderr
    mine = _run_hook(tmp_path, lineage.live, tls_dir, PROXYD_CERT_NAME=lineage.live.name)
    assert mine.returncode == 0 and (tls_dir / "tls.crt").exists(), mine.stderr
    before = (tls_dir / "tls.crt").read_bytes(), (tls_dir / "tls.key").read_bytes()

    unset = _run_hook(tmp_path, None, tls_dir)
    assert unset.returncode != 0 and "RENEWED_LINEAGE" in unset.stderr, unset.stderr
    (lineage.live / "privkey.pem").unlink()
    missing = _run_hook(tmp_path, lineage.live, tls_dir)
    assert missing.returncode == 1 and "privkey.pem" in missing.stderr, missing.stderr
    # A failed run changes nothing and leaves no temporary file.
    assert ((tls_dir / "tls.crt").read_bytes(), (tls_dir / "tls.key").read_bytes()) == before
    assert sorted(p.name for p in tls_dir.iterdir()) == ["tls.crt", "tls.key"]


def test_a_renewal_through_the_hook_reaches_a_running_proxyd(
    proxyd_factory: object, tmp_path: Path
) -> None:
    """The watcher alone (PROXYD_RELOAD=0, no SIGHUP): new handshakes get the renewed
    certificate within a couple of seconds, no restart."""
    from harness import PROXY_HOST
    from tls_kit import serial_of, tls_connect

    lineage = Lineage(tmp_path)
    tls_dir = tmp_path / "tls"
    lineage.renew()
    assert _run_hook(tmp_path, lineage.live, tls_dir).returncode == 0
    proxy = proxyd_factory(  # type: ignore[operator]
        tls_listen=f"{PROXY_HOST}:0",
        tls={"certificate": str(tls_dir / "tls.crt"), "key": str(tls_dir / "tls.key")},
        admin_listen=f"{PROXY_HOST}:0",
    )
    port = int(proxy.wait_for_log(r"TLS listening on \S+:(\d+)").group(1))
    with tls_connect(port, lineage.ca) as first:
        issued = serial_of(first)

    lineage.renew()
    proc = _run_hook(tmp_path, lineage.live, tls_dir)
    assert proc.returncode == 0, proc.stderr
    proxy.wait_for_log(r"certificate reloaded", timeout=3.0)
    with tls_connect(port, lineage.ca) as renewed:
        assert serial_of(renewed) != issued
