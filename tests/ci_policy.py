"""What a test does when something it needs is missing: under CI, fail; elsewhere, skip.

A CI machine must have every tool and component (a silent skip there would pass a run
that tested nothing); a developer's machine may lack one and still run the rest.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    if under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
