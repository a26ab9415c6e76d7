"""Property tests of the users file: any text either parses or is a ConfigError (never
another exception), and every user proxyd can write reads back the same."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.digest import UserSecrets
from proxy.core.errors import ConfigError
from proxy.core.users import format_users, parse_users

FIELD = st.text(alphabet=string.printable + "é!%", max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(FIELD, min_size=1, max_size=12), max_size=4))
def test_any_lines_parse_or_are_a_config_error(rows: list[list[str]]) -> None:
    text = "\n".join(":".join(row) for row in rows)
    try:
        parse_users(text, "users")
    except ConfigError as e:
        assert all(line.startswith("users:") for line in e.problems)


NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,20}", fullmatch=True)
# What check_note lets through: no controls, no surrogates (undecodable argv bytes).
TEXT = st.text(
    st.characters(min_codepoint=0x20, exclude_characters="\x7f", exclude_categories=["Cs"]),
    max_size=30,
)
GROUPS = st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    name=NAMES,
    note=TEXT,
    owner=TEXT,
    created_by=TEXT,
    groups=GROUPS,
    expires_day=st.none() | st.integers(0, 20000),
    created=st.none() | st.integers(0, 2**31),
    locked=st.booleans(),
)
def test_every_user_reads_back_the_same(
    name: str,
    note: str,
    owner: str,
    created_by: str,
    groups: list[str],
    expires_day: int | None,
    created: int | None,
    locked: bool,
) -> None:
    user = UserSecrets(
        name,
        "proxyd",
        {"MD5": "a" * 32, "SHA-256": "b" * 64},
        expires=None if expires_day is None else expires_day * 86400.0,
        note=note,
        locked=locked,
        groups=tuple(sorted(set(groups))),
        owner=owner,
        created_by=created_by,
        created_at=None if created is None else float(created),
    )
    assert parse_users(format_users([user]), "users") == {name: user}
