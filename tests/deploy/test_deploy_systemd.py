"""The systemd units: `systemd-analyze verify`, offline security exposure, and the commands.

`verify` refuses a unit whose ExecStart binary does not exist, and the units name the
documented install path /opt/proxyd/.venv/bin/proxyd, which this machine does not have
(and a test must not create it there). So the units are copied to a temporary folder with
that one path replaced by this venv's real proxyd, and the copies are verified: everything
else is checked exactly as shipped. Warnings (an unknown key, a bad value) count as
failures, since `verify` reports them but still exits 0.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from deploy_kit import DEPLOY, VENV_BIN, proxyd_argv_ok, tool

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
