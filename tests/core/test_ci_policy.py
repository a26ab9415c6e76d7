"""The one rule for missing tools: fail under CI, skip elsewhere."""

from __future__ import annotations

import ci_policy
import pytest


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        (" TRUE ", True),
        ("false", False),
        ("0", False),
        ("", False),
        ("no", False),
    ],
)
def test_under_ci(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert ci_policy.under_ci() is ci


def test_missing_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        ci_policy.missing("no tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        ci_policy.missing("no tool")
