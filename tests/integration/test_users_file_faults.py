"""Users-file faults under a live `proxyd serve`: they fail safe and say so.

Whatever happens to the users file while proxyd serves (emptied, deleted, a dangling link
as in a half-done kubelet `..data` swap, a symlink loop, a folder the proxy's user may no
longer read), the users already loaded keep working, nobody else gets in, nothing reaches
a denied origin, and the fault is one ERROR line and one `proxyd_reloads_total{what=
"users",result="error"}`. The unreadable folder needs proxyd running as an unprivileged
user (root reads any folder): it runs as `nobody`, from the world-readable install.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from harness import (
    DENIED_HOST,
    ORIGIN_HOST,
    Origins,
    ProxydHandle,
    RawConnection,
    add_user,
    clean_env,
    digest_get_status,
    write_proxyd_config,
)
from test_observability import admin_get, samples, value

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
NOT_RELOADED = "users file not reloaded, keeping 1 users"


def empty(path: Path) -> None:
    path.write_bytes(b"")  # truncated in place, as by `> users.digest`


def deleted(path: Path) -> None:
    path.unlink()


def dangling(path: Path) -> None:
    path.unlink()
    path.symlink_to("..data/users.digest")  # ..data is gone: a swap caught half-way


def symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def undo(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()


def eventually(
    proxyd: ProxydHandle,
    origins: Origins,
    env: dict[str, str],
    user: str,
    password: str,
    status: int,
) -> None:
    """Requests until `user` gets `status` (the users file is looked at when one arrives)."""
    time.sleep(1.2)  # past the stat interval: unknown-user guesses meanwhile cost tokens
    deadline = time.monotonic() + 5
    while digest_get_status(proxyd, origins, env, user, password) != status:
        assert time.monotonic() < deadline, f"{user}: never {status}:\n{proxyd.log()}"
        time.sleep(0.2)


def assert_fails_safe(proxyd: ProxydHandle, origins: Origins, env: dict[str, str]) -> None:
    time.sleep(1.2)  # past the users file's stat interval
    assert digest_get_status(proxyd, origins, env, USER, PASSWORD) == 200
    assert digest_get_status(proxyd, origins, env, USER, "not-the-password") == 407
    assert digest_get_status(proxyd, origins, env, "mallory", "any-password") == 407
    denied = f"{DENIED_HOST}:{origins.denied_http[1]}"
    allowed = f"{ORIGIN_HOST}:{origins.https[1]}"
    for user, target, status in ((USER, denied, 403), ("mallory", allowed, 407)):
        with RawConnection(proxyd.address) as conn:
            first, reply = conn.request_with_digest("CONNECT", target, user, "guess-1234")
            assert (reply or first).status == status, (user, target, first, reply)
    assert origins.denied_hits() == 0
    log = proxyd.log()
    assert log.count(NOT_RELOADED) == 1, log
    assert "Traceback" not in log and "Addon error" not in log
    status, text = admin_get(proxyd, "/metrics")
    assert status == 200
    assert value(samples(text), "proxyd_reloads_total", what="users", result="error") == 1


@pytest.mark.parametrize("fault", [empty, deleted, dangling, symlink_loop])
def test_a_users_file_fault_keeps_the_loaded_users(
    proxyd_factory, origins: Origins, client_env: dict[str, str], fault: Callable[[Path], None]
) -> None:
    proxyd = proxyd_factory(admin_listen="127.0.0.1:0")
    users_file = proxyd.config_path.with_name("users.digest")
    assert digest_get_status(proxyd, origins, client_env, USER, PASSWORD) == 200
    fault(users_file)
    assert_fails_safe(proxyd, origins, client_env)
    undo(users_file)
    add_user(proxyd.config_path, "bob", "bob-password", clean_env())
    eventually(proxyd, origins, client_env, "bob", "bob-password", 200)
    assert "users file reloaded: 1 users" in proxyd.log()
    assert digest_get_status(proxyd, origins, client_env, USER, PASSWORD) == 407


def test_removing_the_last_user_with_proxyd_users_is_meant(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    from test_users_lifecycle import users_cli

    assert users_cli(proxyd, "remove", USER).returncode == 0
    eventually(proxyd, origins, client_env, USER, PASSWORD, 407)
    assert "users file reloaded: 0 users" in proxyd.log()
    assert NOT_RELOADED not in proxyd.log()


def test_a_reload_to_a_missing_users_file_is_refused(
    proxyd: ProxydHandle, origins: Origins, client_env: dict[str, str]
) -> None:
    config = yaml.safe_load(proxyd.config_path.read_text())
    config["auth"]["users_file"] = "nowhere/users.digest"
    proxyd.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proxyd.proc.send_signal(signal.SIGHUP)
    proxyd.wait_for_log("reload refused")
    assert "nowhere/users.digest: does not exist" in proxyd.log()
    assert digest_get_status(proxyd, origins, client_env, USER, PASSWORD) == 200


def test_the_first_start_creates_an_empty_users_file(proxyd_factory) -> None:
    proxyd = proxyd_factory(users={})
    users_file = proxyd.config_path.with_name("users.digest")
    assert users_file.read_text().startswith("# proxyd users file")
    assert users_file.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- as nobody


@pytest.fixture
def nobody_proxyd(origins: Origins, world_proxyd: Path) -> Iterator[tuple[ProxydHandle, Path]]:
    """`proxyd serve` as `nobody`, its users file in `auth/`, all in a folder it owns."""
    nobody = pwd.getpwnam("nobody")
    directory = Path(tempfile.mkdtemp(prefix="proxyd-nobody-", dir="/tmp"))
    handle: ProxydHandle | None = None
    try:
        config_path = write_proxyd_config(directory, origins, admin_listen="127.0.0.1:0")
        config = yaml.safe_load(config_path.read_text())
        config["auth"]["users_file"] = "auth/users.digest"
        config["auth"]["nonce_secret_file"] = "auth/nonce.secret"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        (directory / "auth").mkdir()
        add_user(config_path, USER, PASSWORD, clean_env())
        for folder, _, files in os.walk(directory):
            for path in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(directory, 0o755)
        drop = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
        launcher = [*drop, "--clear-groups", "--", str(world_proxyd)]
        handle = ProxydHandle(config_path, clean_env(directory), (), launcher)
        yield handle, directory / "auth"
    finally:
        if handle is not None:
            handle.stop()
        os.chmod(directory / "auth", 0o700)
        shutil.rmtree(directory, ignore_errors=True)


def test_an_unreadable_folder_keeps_the_loaded_users(
    nobody_proxyd: tuple[ProxydHandle, Path], origins: Origins, client_env: dict[str, str]
) -> None:
    proxyd, auth = nobody_proxyd
    assert digest_get_status(proxyd, origins, client_env, USER, PASSWORD) == 200
    os.chmod(auth, 0o000)  # the proxy's user may no longer search its auth folder
    assert_fails_safe(proxyd, origins, client_env)
    assert "Permission denied" in proxyd.log()
    os.chmod(auth, 0o700)
    time.sleep(1.2)
    assert digest_get_status(proxyd, origins, client_env, USER, PASSWORD) == 200
    assert "users file reloaded: 1 users" in proxyd.log()
