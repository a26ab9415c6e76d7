"""Fixtures every test folder may use."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import world_install


@pytest.fixture(scope="session")
def world_proxyd() -> Iterator[Path]:
    """A `proxyd` launcher that any user may run (see world_install)."""
    root, launcher = world_install.make()
    try:
        yield launcher
    finally:
        shutil.rmtree(root, ignore_errors=True)
