"""Fixtures for integration tests: session origins, per-test proxyd, clean client env.

Test modules import helpers with `from harness import ...` (this folder is on sys.path:
pytest's default rootdir-relative import puts it there, and we make sure below).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from harness import (  # noqa: E402
    DEFAULT_USERS,
    Origins,
    ProxydHandle,
    add_user,
    clean_env,
    proxyd_bin,
    start_origins,
    write_proxyd_config,
)

ProxydFactory = Callable[..., ProxydHandle]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach every proxyd log of a failed test to its report."""
    outcome = yield
    report = outcome.get_result()
    handles: list[ProxydHandle] = getattr(item, "_proxyd_handles", [])
    if report.failed:
        for handle in handles:
            report.sections.append(
                (f"proxyd log ({handle.config_path.parent.name}, port {handle.port})", handle.log())
            )


@pytest.fixture(scope="session")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Generator[Origins, None, None]:
    started = start_origins(tmp_path_factory.mktemp("origins"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(autouse=True)
def _fresh_hit_counts(request: pytest.FixtureRequest) -> None:
    """Hit counts per test: a DIRECT browser visit in one test is no leak in the next."""
    if "origins" in request.fixturenames:
        request.getfixturevalue("origins").reset_hits()


@pytest.fixture
def client_home(tmp_path: Path) -> Path:
    """An empty HOME for client programs (their own ~/.curlrc, ~/.gitconfig, ~/.wgetrc)."""
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    return home


@pytest.fixture
def client_env(client_home: Path) -> dict[str, str]:
    """clean_env() with HOME = client_home."""
    return clean_env(client_home)


@pytest.fixture
def proxyd_factory(
    request: pytest.FixtureRequest, tmp_path: Path, origins: Origins
) -> Generator[ProxydFactory, None, None]:
    """Start `proxyd serve` on 127.0.0.1:0 with a config written under tmp_path.

    proxyd_factory(algorithms=("MD5", "SHA-256"), users={"alice": "wonderland"},
                   extra_rules=None, nonce_lifetime=300, serve_args=(),
                   launcher=None, **config_overrides) -> ProxydHandle
    """
    if not proxyd_bin().exists():
        pytest.fail(f"{proxyd_bin()} missing: run `make .venv/bin/proxyd`", pytrace=False)
    handles: list[ProxydHandle] = []
    request.node._proxyd_handles = handles

    def start(
        algorithms: Sequence[str] = ("MD5", "SHA-256"),
        users: Mapping[str, str] | None = None,
        extra_rules: Sequence[Mapping[str, Any]] | None = None,
        nonce_lifetime: int = 300,
        serve_args: Sequence[str] = (),
        launcher: Sequence[str] | None = None,
        **config_overrides: Any,
    ) -> ProxydHandle:
        directory = tmp_path / f"proxyd{len(handles)}"
        directory.mkdir()
        home = directory / "home"
        home.mkdir()
        env = clean_env(home)
        config_path = write_proxyd_config(
            directory,
            origins,
            algorithms=algorithms,
            extra_rules=extra_rules,
            nonce_lifetime=nonce_lifetime,
            **config_overrides,
        )
        for name, password in (DEFAULT_USERS if users is None else users).items():
            add_user(config_path, name, password, env)
        handle = ProxydHandle(config_path, env, serve_args, launcher)
        handles.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in handles:
            handle.stop()


@pytest.fixture
def proxyd(proxyd_factory: ProxydFactory) -> ProxydHandle:
    return proxyd_factory()
