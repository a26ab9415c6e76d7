"""Basic credentials inside TLS: the grammar of the header, and the check against HA1."""

from __future__ import annotations

import base64

import digest_oracle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.basic import BasicCredentials, parse_basic, password_matches, verify_basic
from proxy.core.digest import UserSecrets
from proxy.core.errors import AuthFailure, MalformedCredentials

REALM = "proxyd"
NOW = 1_800_000_000.0


def user(name: str = "alice", password: str = "wonderland", **kw: object) -> UserSecrets:
    ha1 = {a: digest_oracle.ha1(a, name, REALM, password) for a in ("MD5", "SHA-256")}
    return UserSecrets(name, REALM, ha1, **kw)  # type: ignore[arg-type]


def token(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_parse_splits_at_the_first_colon() -> None:
    creds = parse_basic(token(b"alice:secret:with:colons"))
    assert creds == BasicCredentials("alice", "secret:with:colons")
    assert "secret" not in repr(creds)


@pytest.mark.parametrize(
    "text",
    ["", "!!!", token(b"no-colon"), token(b"alice:\xff"), token(b"\xc3(:pw"), "YWxpY2U6cHc"],
)
def test_malformed_basic_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(MalformedCredentials):
        parse_basic(text)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200).map(token), st.text(max_size=200)))
def test_any_header_bytes_parse_or_raise_malformed(text: str) -> None:
    try:
        creds = parse_basic(text)
    except MalformedCredentials:
        return
    assert isinstance(creds.username, str) and isinstance(creds.password, str)


def test_verify_against_either_hash() -> None:
    users = {"alice": user(), "old": UserSecrets("old", REALM, {"MD5": user("old").ha1["MD5"]})}
    assert verify_basic(BasicCredentials("alice", "wonderland"), REALM, users.get, NOW) == "alice"
    assert verify_basic(BasicCredentials("old", "wonderland"), REALM, users.get, NOW) == "old"


@pytest.mark.parametrize(
    ("creds", "stored", "reason"),
    [
        (BasicCredentials("alice", "wrong"), user(), "bad_password"),
        (BasicCredentials("bob", "wonderland"), user(), "unknown_user"),
        (BasicCredentials("", "wonderland"), user(), "unknown_user"),
        (BasicCredentials("alice", "wonderland"), user(expires=NOW - 1), "expired"),
        (BasicCredentials("alice", "wonderland"), user(locked=True), "locked"),
    ],
)
def test_verify_failures(creds: BasicCredentials, stored: UserSecrets, reason: str) -> None:
    with pytest.raises(AuthFailure) as failure:
        verify_basic(creds, REALM, {"alice": stored}.get, NOW)
    assert failure.value.reason == reason


def test_a_locked_or_expired_user_is_only_said_to_whoever_knows_the_password() -> None:
    with pytest.raises(AuthFailure) as failure:
        verify_basic(
            BasicCredentials("alice", "guess"), REALM, {"alice": user(locked=True)}.get, NOW
        )
    assert failure.value.reason == "bad_password"


def test_password_matches_needs_the_realm_too() -> None:
    other = user()
    other = UserSecrets("alice", "elsewhere", other.ha1)
    assert not password_matches(BasicCredentials("alice", "wonderland"), REALM, other)
    assert not password_matches(BasicCredentials("alice", "wonderland"), REALM, None)
