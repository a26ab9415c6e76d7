"""Fixtures for the jump-account tests (real OpenSSH on loopback, run as root).

- `targets` (session): an sshd on 127.0.0.2 that root may log in to with a test key, and
  speak-first servers on 127.0.0.3 (outside the zones) and on two 127.0.0.2 ports that
  jump accounts must not reach. Their connection counters must stay 0.
- `prefix` (per test): `pjt` + 4 random letters + `-`. Every account and group a test
  creates carries it; teardown kills their processes and deletes them, also on failure.
- `jump` (per test): a JumpHost (config in a fresh 0755 folder under /tmp, group
  `<prefix>jump`); call `jump.start_sshd()` after adding accounts or changing the config.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import ci_policy
import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from jumpkit import (  # noqa: E402
    SSHD,
    JumpHost,
    Targets,
    new_prefix,
    proxyd_bin,
    purge_prefix,
    start_targets,
)


def _require_root_and_openssh() -> None:
    missing = [
        tool
        for tool in (SSHD, "ssh", "ssh-keygen", "useradd", "userdel", "chage", "pkill")
        if not shutil.which(tool)
    ]
    message = ""
    if os.geteuid() != 0:
        message = "jump tests create Unix accounts and run sshd: they run as root"
    elif missing:
        message = f"missing tools for the jump tests: {missing}"
    if message:
        ci_policy.missing(message)
    if not proxyd_bin().exists():
        pytest.fail(f"{proxyd_bin()} missing: run `make .venv/bin/proxyd`", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the sshd logs and the audit log of a failed test to its report."""
    outcome = yield
    report = outcome.get_result()
    host: JumpHost | None = getattr(item, "_jump_host", None)
    if report.failed and host is not None:
        if host.sshd is not None:
            report.sections.append(("jump sshd log", host.sshd.log()[-8000:]))
        if host.audit_log.exists():
            report.sections.append(("jump audit log", host.audit_log.read_text()[-4000:]))


@pytest.fixture(scope="session")
def targets() -> Generator[Targets, None, None]:
    _require_root_and_openssh()
    directory = Path(tempfile.mkdtemp(prefix="proxyd-jump-targets-", dir="/tmp"))
    started = start_targets(directory)
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def prefix() -> Generator[str, None, None]:
    """A unique account-name prefix; every account/group with it is removed afterwards."""
    _require_root_and_openssh()
    value = new_prefix()
    try:
        yield value
    finally:
        problems = purge_prefix(value)
        assert not problems, f"could not clean up test accounts: {problems}"


@pytest.fixture
def jump(
    request: pytest.FixtureRequest, targets: Targets, prefix: str, world_proxyd: Path
) -> Generator[JumpHost, None, None]:
    directory = Path(tempfile.mkdtemp(prefix="proxyd-jump-", dir="/tmp"))
    host = JumpHost(targets, prefix, directory, world_proxyd)
    request.node._jump_host = host
    try:
        yield host
    finally:
        # Sessions and sshd first (they hold the accounts' processes), then `prefix`'s
        # teardown deletes the accounts, then the folder (homes included) goes.
        host.stop()
        purge_prefix(prefix)
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(host.keys_dir, ignore_errors=True)
