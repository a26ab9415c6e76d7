"""File executors: atomic 0600 writes, the nonce secret, and the reloading users file."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.core.errors import ConfigError
from proxy.core.users import format_users, make_user
from proxy.effects.files import SECRET_BYTES, atomic_write, load_or_create_secret
from proxy.effects.userfile import UserFile, create_users_file


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- atomic_write ----------------------------------------------------------------------


@pytest.mark.usefixtures("umask_0")
def test_atomic_write_is_private_even_with_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "users.digest"
    atomic_write(path, b"one\n")
    assert path.read_bytes() == b"one\n"
    assert mode(path) == 0o600
    assert listing(tmp_path) == ["users.digest"]


@pytest.mark.usefixtures("umask_0")
def test_atomic_write_replaces_content_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.digest"
    path.write_bytes(b"old content that is longer\n")
    path.chmod(0o644)
    atomic_write(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert mode(path) == 0o600
    assert listing(tmp_path) == ["users.digest"]


def test_atomic_write_other_mode(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f", b"x", mode=0o640)
    assert mode(tmp_path / "f") == 0o640


def test_atomic_write_into_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "users.digest", b"x")
    assert listing(tmp_path) == []


def test_atomic_write_onto_a_folder_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "users.digest").mkdir()
    with pytest.raises(OSError):
        atomic_write(tmp_path / "users.digest", b"x")
    assert listing(tmp_path) == ["users.digest"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "users.digest"
    path.write_bytes(b"old\n")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old\n"
    assert listing(tmp_path) == ["users.digest"]


def test_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.digest"
    path.write_bytes(b"old\n")

    def refuse(src: str, dst: str) -> None:
        raise PermissionError("refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic_write(path, b"new\n")
    assert path.read_bytes() == b"old\n"
    assert listing(tmp_path) == ["users.digest"]


# --- the nonce secret ------------------------------------------------------------------


@pytest.mark.usefixtures("umask_0")
def test_secret_is_created_private_with_32_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "proxyd" / "nonce.secret"
    secret = load_or_create_secret(path)
    assert len(secret) == SECRET_BYTES == 32
    assert path.read_bytes() == secret
    assert mode(path) == 0o600
    assert listing(path.parent) == ["nonce.secret"]
    assert load_or_create_secret(tmp_path / "other") != secret


def test_existing_secret_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "nonce.secret"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    path.write_bytes(b"s" * 16)
    assert load_or_create_secret(path) == b"s" * 16


@pytest.mark.parametrize("size", [0, 1, 15])
def test_short_secret_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "nonce.secret"
    path.write_bytes(b"s" * size)
    with pytest.raises(ValueError, match=f"too short \\({size} bytes"):
        load_or_create_secret(path)
    assert path.read_bytes() == b"s" * size


# --- UserFile ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write_users(path: Path, *names: str, realm: str = "proxyd") -> None:
    atomic_write(path, format_users(make_user(n, realm, "password-" + n) for n in names).encode())


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    path = tmp_path / "users.digest"
    write_users(path, "alice")
    return path


def test_users_are_loaded(users_path: Path) -> None:
    users = UserFile(users_path, "proxyd", clock=Clock())
    assert len(users) == 1
    alice = users.lookup("alice")
    assert alice is not None and alice.ha1 == make_user("alice", "proxyd", "password-alice").ha1
    assert users.lookup("bob") is None


def test_change_is_seen_after_the_interval(users_path: Path) -> None:
    clock = Clock()
    users = UserFile(users_path, "proxyd", interval=1.0, clock=clock)
    assert users.lookup("alice") is not None
    write_users(users_path, "alice", "bob")
    clock.now += 0.5
    assert users.lookup("bob") is None  # not stat'ed again yet
    clock.now += 0.5
    assert users.lookup("bob") is not None
    write_users(users_path, "bob")
    clock.now += 1
    assert users.lookup("alice") is None
    assert len(users) == 1


def test_broken_file_keeps_the_old_users(
    users_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    users = UserFile(users_path, "proxyd", clock=clock)
    users_path.write_text("alice:proxyd:not-a-hash\n")
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="proxyd.users"):
        assert users.lookup("alice") is not None
    assert "not reloaded, keeping 1 users" in caplog.text
    assert "not-a-hash" not in caplog.text
    caplog.clear()
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="proxyd.users"):
        assert users.lookup("alice") is not None
    assert caplog.text == ""  # the same broken file is not logged every second
    write_users(users_path, "bob")
    clock.now += 2
    assert users.lookup("bob") is not None
    assert users.lookup("alice") is None


def test_users_of_another_realm_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.digest"
    text = format_users(
        [make_user("alice", "proxyd", "password-a"), make_user("eve", "elsewhere", "password-e")]
    )
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="proxyd.users"):
        users = UserFile(path, "proxyd", clock=Clock())
    assert users.lookup("alice") is not None
    assert users.lookup("eve") is None
    assert "another realm" in caplog.text and "eve" in caplog.text


def test_missing_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "users.digest"
    with pytest.raises(ConfigError, match=r"users\.digest: does not exist"):
        UserFile(path, "proxyd", clock=Clock())


def test_a_created_users_file_has_no_users_until_one_is_added(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "auth" / "users.digest"
    create_users_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    users = UserFile(path, "proxyd", clock=clock)
    assert len(users) == 0
    write_users(path, "alice")
    create_users_file(path)  # a second start changes nothing
    clock.now += 2
    assert users.lookup("alice") is not None


def _truncate(path: Path) -> None:
    path.write_bytes(b"")


def _comments_only(path: Path) -> None:
    path.write_text("# nobody here\n")


def _delete(path: Path) -> None:
    path.unlink()


def _dangle(path: Path) -> None:
    # A kubelet `..data` swap caught half-way: the link's target is gone.
    path.unlink()
    path.symlink_to(path.with_name("..data-gone") / "users.digest")


def _loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _latin1(path: Path) -> None:
    path.write_bytes(b"# caf\xe9\n")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (_truncate, "not written by `proxyd users`"),
        (_comments_only, "not written by `proxyd users`"),
        (_delete, "does not exist"),
        (_dangle, "does not exist"),
        (_loop, "cannot read: Too many levels of symbolic links"),
        (_folder, "cannot read: Is a directory"),
        (_latin1, "not UTF-8"),
    ],
)
def test_a_fault_while_serving_keeps_the_users_and_is_an_error_once(
    users_path: Path,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[Path], None],
    message: str,
) -> None:
    clock = Clock()
    users = UserFile(users_path, "proxyd", clock=clock)
    reloads: list[bool] = []
    users.on_reload = reloads.append
    fault(users_path)
    for _ in range(3):
        clock.now += 2
        with caplog.at_level(logging.INFO, logger="proxyd.users"):
            assert users.lookup("alice") is not None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "not reloaded, keeping 1 users" in errors[0].getMessage()
    assert message in errors[0].getMessage()
    assert reloads == [False]
    if users_path.is_dir() and not users_path.is_symlink():
        users_path.rmdir()
    else:
        users_path.unlink(missing_ok=True)
    write_users(users_path, "bob")
    clock.now += 2
    assert users.lookup("bob") is not None and users.lookup("alice") is None
    assert reloads == [False, True]


def test_a_file_proxyd_wrote_may_hold_no_users(users_path: Path) -> None:
    clock = Clock()
    users = UserFile(users_path, "proxyd", clock=clock)
    write_users(users_path)  # what `proxyd users remove` leaves after the last user
    clock.now += 2
    assert users.lookup("alice") is None
    assert len(users) == 0


def test_broken_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "users.digest"
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match=f"{path}:1: expected"):
        UserFile(path, "proxyd", clock=Clock())
