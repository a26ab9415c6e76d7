"""Users over time: expiry (407 `expired`), renew, notes, and htdigest export for Squid."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    GRANT_EXPIRES,
    Origins,
    ProxydHandle,
    clean_env,
    digest_get_status,
    proxyd_bin,
    require_tool,
)

pytestmark = pytest.mark.timeout(120)

SQUID_DIGEST_HELPER = "/usr/lib/squid/digest_file_auth"


def expire_in_file(proxyd: ProxydHandle, name: str) -> None:
    """A user whose expiry has passed, as time makes one (`users add` refuses a past date)."""
    users_file = proxyd.config_path.parent / "users.digest"
    lines = users_file.read_text().splitlines(keepends=True)
    out = []
    for line in lines:
        if line.startswith(f"{name}:"):
            fields = line.rstrip("\n").split(":")
            fields[4] = "2020-01-01"
            line = ":".join(fields) + "\n"
        out.append(line)
    users_file.write_text("".join(out))


def users_cli(
    proxyd: ProxydHandle, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(proxyd_bin()), "users", "--config", str(proxyd.config_path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )


def get(
    proxyd: ProxydHandle,
    origins: Origins,
    env: dict[str, str],
    user: str,
    password: str,
) -> int:
    return digest_get_status(proxyd, origins, env, user, password)


def test_expired_user_is_refused_and_renew_restores_access(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    added = users_cli(
        proxyd,
        "add",
        "carol",
        "--password-stdin",
        "--expires",
        GRANT_EXPIRES,
        "--note",
        "partner X: project Y",
        stdin="carol-password\n",
    )
    assert added.returncode == 0, added.stderr
    expire_in_file(proxyd, "carol")
    deadline = time.monotonic() + 5.0  # the users file is re-read within a second
    while get(proxyd, origins, client_env, "carol", "carol-password") != 407:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proxyd.wait_for_log(r"TCP_DENIED/407 .* auth=expired")

    listing = users_cli(proxyd, "list").stdout
    (line,) = [line for line in listing.splitlines() if line.startswith("carol ")]
    assert "2020-01-01" in line and "partner X: project Y" in line and "EXPIRED" in line

    renewed = users_cli(proxyd, "renew", "carol", "--expires", GRANT_EXPIRES)
    assert renewed.returncode == 0, renewed.stderr
    deadline = time.monotonic() + 2.0
    while get(proxyd, origins, client_env, "carol", "carol-password") != 200:
        assert time.monotonic() < deadline, "renewal not seen within 2 s"
        time.sleep(0.1)


def test_wrong_password_of_expired_user_says_bad_response_not_expired(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    """Expiry is only revealed to someone who knows the password."""
    users_cli(
        proxyd,
        "add",
        "dave",
        "--password-stdin",
        "--expires",
        GRANT_EXPIRES,
        stdin="dave-password\n",
    )
    expire_in_file(proxyd, "dave")
    time.sleep(1.2)  # re-read within a second
    assert get(proxyd, origins, client_env, "dave", "not-the-password") == 407
    proxyd.wait_for_log(r"TCP_DENIED/407 .* auth=bad_response")
    assert "auth=expired" not in proxyd.log()


@pytest.mark.parametrize("bad", ["2027-02-30", "tomorrow", "31.03.2027"])
def test_bad_expiry_dates_are_refused(proxyd: ProxydHandle, bad: str) -> None:
    before = (proxyd.config_path.parent / "users.digest").read_bytes()
    run = users_cli(
        proxyd, "add", "erin", "--password-stdin", "--expires", bad, stdin="erin-password\n"
    )
    assert run.returncode == 1 and "not a date" in run.stderr
    assert (proxyd.config_path.parent / "users.digest").read_bytes() == before


def test_export_is_read_by_squids_digest_file_auth(proxyd: ProxydHandle, tmp_path: Path) -> None:
    helper = require_tool(SQUID_DIGEST_HELPER)
    users_cli(
        proxyd,
        "add",
        "gone",
        "--password-stdin",
        "--expires",
        GRANT_EXPIRES,
        stdin="gone-password\n",
    )
    expire_in_file(proxyd, "gone")
    out = tmp_path / "export.htdigest"
    run = users_cli(proxyd, "export", "--format", "htdigest", "--output", str(out))
    assert run.returncode == 0, run.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    lines = out.read_text().splitlines()
    assert [line.split(":")[:2] for line in lines] == [["alice", "proxyd"]]  # expired left out
    answer = subprocess.run(
        [helper, "-c", str(out)],
        input='"alice":"proxyd"\n"gone":"proxyd"\n',
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.splitlines()
    assert answer[0] == f'OK ha1="{lines[0].split(":")[2]}"'
    assert answer[1].startswith("ERR")
