"""The auth-param parser's fast path (one pattern per list element) against its reference
scanner: the same dict or the same refusal, for every input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.authparams import _scan_auth_params, parse_auth_params
from proxy.core.errors import MalformedCredentials


def outcome(parse: Callable[[str], dict[str, str]], text: str) -> tuple[str, object]:
    try:
        return "ok", parse(text)
    except MalformedCredentials as refusal:
        return "refused", str(refusal)


# Every character class the grammar tells apart, so random text hits each branch.
PIECES = st.sampled_from(
    [
        '"',
        "\\",
        ",",
        "=",
        " ",
        "\t",
        "a",
        "Z",
        "9",
        "-",
        "~",
        "\x00",
        "\x1f",
        "\x7f",
        "\xff",
        "\udcff",
        "é",
        "nonce",
        "qop=auth",
        'uri="/a,b"',
        ", ",
        'x="\\"q\\""',
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=24).map("".join))
def test_the_fast_path_agrees_with_the_scanner(text: str) -> None:
    assert outcome(parse_auth_params, text) == outcome(_scan_auth_params, text)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80))
def test_the_fast_path_agrees_on_any_text(text: str) -> None:
    assert outcome(parse_auth_params, text) == outcome(_scan_auth_params, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'username="alice", uri="/a,b", qop=auth',
            {"username": "alice", "uri": "/a,b", "qop": "auth"},
        ),
        (", ,a=b,,", {"a": "b"}),
        ('a="x\\"y\\\\z"', {"a": 'x"y\\z'}),
        ("A=1, b = 2", {"a": "1", "b": "2"}),
        ("", {}),
    ],
)
def test_well_formed_lists(text: str, expected: dict[str, str]) -> None:
    assert parse_auth_params(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a=1, A=2", "given twice"),
        ("a=1 b=2", "expected ','"),
        ('a="open', "unterminated"),
        ('a="\x01"', "control character"),
        ("a=", "empty value"),
        ("=1", "parameter name"),
        ("a", "no value"),
    ],
)
def test_malformed_lists_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(MalformedCredentials, match=why):
        parse_auth_params(text)
