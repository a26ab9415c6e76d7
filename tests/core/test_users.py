"""The users file format (a superset of Apache htdigest), names and passwords."""

from __future__ import annotations

import hashlib

import pytest
from passlib.hash import htdigest

from proxy.core.digest import UserSecrets
from proxy.core.errors import ConfigError
from proxy.core.users import (
    HEADER,
    BadUserInput,
    check_password,
    check_username,
    format_users,
    make_user,
    parse_users,
)

MD5 = "a" * 32
SHA = "b" * 64


def md5_user(name: str, realm: str = "proxyd", md5: str = MD5) -> UserSecrets:
    return UserSecrets(name, realm, {"MD5": md5})


def test_make_user_matches_htdigest() -> None:
    user = make_user("alice", "proxyd", "wonderland")
    assert user.ha1["MD5"] == hashlib.md5(b"alice:proxyd:wonderland").hexdigest()
    assert user.ha1["MD5"] == htdigest.hash("wonderland", user="alice", realm="proxyd")
    assert user.ha1["SHA-256"] == hashlib.sha256(b"alice:proxyd:wonderland").hexdigest()
    assert (user.name, user.realm) == ("alice", "proxyd")


def test_make_user_encodes_utf8() -> None:
    user = make_user("jose", "proxyd", "contraseña-1")
    assert user.ha1["MD5"] == hashlib.md5("jose:proxyd:contraseña-1".encode()).hexdigest()


@pytest.mark.parametrize("name, password", [("a:b", "long enough"), ("alice", "short")])
def test_make_user_checks_its_input(name: str, password: str) -> None:
    with pytest.raises(BadUserInput):
        make_user(name, "proxyd", password)


def test_round_trip() -> None:
    users = {
        "alice": make_user("alice", "proxyd", "wonderland"),
        "bob": md5_user("bob"),
        "carol": UserSecrets("carol", "other realm", {"SHA-256": SHA}),
    }
    text = format_users(users.values())
    assert text.startswith(HEADER)
    assert parse_users(text, "users") == users
    assert format_users(parse_users(text, "users").values()) == text


def test_format_is_sorted_and_keeps_empty_fields() -> None:
    text = format_users([md5_user("zed"), UserSecrets("amy", "proxyd", {"SHA-256": SHA})])
    assert text.splitlines()[1:] == [f"amy:proxyd::{SHA}", f"zed:proxyd:{MD5}:"]


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(f"bob:proxyd:{MD5}\n", {"bob": md5_user("bob")}, id="htdigest-line"),
        pytest.param(f"bob:proxyd:{MD5.upper()}\n", {"bob": md5_user("bob")}, id="upper-hex"),
        pytest.param(f"bob:proxyd:{MD5}\r\n", {"bob": md5_user("bob")}, id="crlf"),
        pytest.param(f"bob:proxyd:{MD5}", {"bob": md5_user("bob")}, id="no-final-newline"),
        pytest.param(
            f"# c\n\n   \n  # indented\nbob:proxyd:{MD5}:\n",
            {"bob": md5_user("bob")},
            id="comments-and-blanks",
        ),
        pytest.param(
            f"bob:proxyd::{SHA}\n",
            {"bob": UserSecrets("bob", "proxyd", {"SHA-256": SHA})},
            id="sha-256-only",
        ),
        pytest.param(
            f"bob:Other Realm:{MD5}\n", {"bob": md5_user("bob", "Other Realm")}, id="other-realm"
        ),
        pytest.param("", {}, id="empty"),
    ],
)
def test_parse_users(text: str, expected: dict[str, UserSecrets]) -> None:
    assert parse_users(text, "users") == expected


GOOD = f"alice:proxyd:{MD5}:{SHA}"


@pytest.mark.parametrize(
    "line, message",
    [
        pytest.param("bob:proxyd", "expected name:realm:md5-ha1[:sha256-ha1", id="two-fields"),
        pytest.param(
            f"bob:proxyd:{MD5}:{SHA}:2027-01-01:note:x:y",
            "expected name:realm:md5-ha1[:sha256-ha1",
            id="eight-fields",
        ),
        pytest.param(
            f"bob:proxyd:{MD5}:{SHA}:2027-01-01:note:Acme",
            "user 'bob': invalid group name 'Acme'",
            id="bad-group",
        ),
        pytest.param(
            f"bob:proxyd:{MD5}:{SHA}:x",
            "user 'bob': expires: not a date like 2027-03-31: 'x'",
            id="bad-expiry",
        ),
        pytest.param("bob", "expected name:realm:md5-ha1[:sha256-ha1", id="one-field"),
        pytest.param(f"bob:proxyd:{'g' * 32}", "user 'bob': malformed MD5 hash", id="bad-hex"),
        pytest.param(f"bob:proxyd:{MD5[:-1]}", "user 'bob': malformed MD5 hash", id="short-md5"),
        pytest.param(
            f"bob:proxyd:{MD5}:{SHA[:-2]}", "user 'bob': malformed SHA-256 hash", id="short-sha"
        ),
        pytest.param(f"bob:proxyd:{SHA}", "user 'bob': malformed MD5 hash", id="sha-in-md5-field"),
        pytest.param(f"b b:proxyd:{MD5}", "invalid user name 'b b'", id="space-in-name"),
        pytest.param(f":proxyd:{MD5}", "invalid user name ''", id="empty-name"),
        pytest.param(f" bob:proxyd:{MD5}", "invalid user name ' bob'", id="leading-space"),
        pytest.param(GOOD, "user 'alice' listed twice", id="duplicate"),
        pytest.param("bob:proxyd:", "user 'bob' has no hash", id="no-hash"),
        pytest.param("bob:proxyd::", "user 'bob' has no hash", id="no-hashes"),
    ],
)
def test_bad_lines_are_located(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_users(f"# header\n{GOOD}\n{line}\n", "users.digest")
    found = info.value.problems
    assert found[0].startswith(f"users.digest:3: {message}"), found
    assert all(p.startswith("users.digest:3: ") for p in found), found


def test_every_bad_line_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_users(f"bob\n{GOOD}\nx y:r:{MD5}\ncarol:r:zz\n", "u")
    assert {p.split(":", 2)[1] for p in info.value.problems} == {"1", "3", "4"}


@pytest.mark.parametrize(
    "name",
    ["alice", "a", "A1", "a.b-c_d@example.org", "7of9", "x" * 64],
)
def test_valid_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("-x", id="leading-hyphen"),
        pytest.param(".x", id="leading-dot"),
        pytest.param("_x", id="leading-underscore"),
        pytest.param("../x", id="path"),
        pytest.param("a:b", id="colon"),
        pytest.param("x y", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("x" * 65, id="65-chars"),
        pytest.param("al\nice", id="newline-inside"),
        pytest.param("alice\r", id="carriage-return"),
        pytest.param("jösé", id="non-ascii"),
        pytest.param("(|(uid=*))", id="ldap-ish"),
        pytest.param(
            "alice\n",
            id="trailing-newline",
        ),
    ],
)
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(BadUserInput, match="invalid user name"):
        check_username(name)


@pytest.mark.parametrize(
    "password", ["8chars!!", "x" * 1024, "correct horse battery staple", "pässwört", "a:b:c:d:e"]
)
def test_valid_passwords(password: str) -> None:
    assert check_password(password) == password


@pytest.mark.parametrize(
    "password, message",
    [
        pytest.param("", "too short", id="empty"),
        pytest.param("7chars!", "too short", id="seven"),
        pytest.param("x" * 1025, "too long", id="1025"),
        pytest.param("password\n", "control characters", id="trailing-newline"),
        pytest.param("pass\nword", "control characters", id="newline-inside"),
        pytest.param("password\r", "control characters", id="carriage-return"),
        pytest.param("pass\tword", "control characters", id="tab"),
        pytest.param("\x00password", "control characters", id="nul"),
        pytest.param("password\x7f", "control characters", id="del"),
        pytest.param("pass\x1bword", "control characters", id="escape"),
    ],
)
def test_invalid_passwords(password: str, message: str) -> None:
    with pytest.raises(BadUserInput, match=message):
        check_password(password)


# --- expiry and notes (issue: users over time) ------------------------------------------


def test_expiry_and_note_round_trip_with_awkward_characters() -> None:
    from proxy.core.users import format_date, parse_date

    user = UserSecrets(
        "zoe",
        "proxyd",
        {"MD5": "a" * 32, "SHA-256": "b" * 64},
        expires=parse_date("2027-03-31"),
        note="ACME: 100% (ticket #42) ünï",
    )
    text = format_users([user])
    assert text.splitlines()[1].count(":") == 5
    (parsed,) = parse_users(text, "u").values()
    assert parsed == user
    assert format_date(parsed.expires or 0) == "2027-03-31"


def test_four_field_lines_stay_four_fields() -> None:
    user = UserSecrets("zoe", "proxyd", {"MD5": "a" * 32, "SHA-256": "b" * 64})
    assert format_users([user]).splitlines()[1].count(":") == 3


def test_bad_expiry_in_file_is_located() -> None:
    with pytest.raises(ConfigError) as e:
        parse_users(f"zoe:proxyd:{'a' * 32}:{'b' * 64}:2027-13-01\n", "users.digest")
    assert e.value.problems == [
        "users.digest:1: user 'zoe': expires: not a date like 2027-03-31: '2027-13-01'"
    ]


def test_user_secrets_repr_and_str_hide_the_hashes() -> None:
    """An HA1 answers any challenge of its realm: a log line or a failing test must not
    show it. The repr keeps everything else, so a test failure still says who it is."""
    user = make_user("alice", "proxyd", "password-a", note="partner a")
    for text in (repr(user), str(user), f"{user}", repr([user]), repr({"alice": user})):
        assert "password-a" not in text
        for value in user.ha1.values():
            assert value not in text
        assert "'alice'" in text and "'partner a'" in text
        assert "'MD5': '***'" in text and "'SHA-256': '***'" in text
    assert user.ha1["MD5"] == htdigest.hash("password-a", user="alice", realm="proxyd")


# --- the lock (a password sent in clear) ----------------------------------------------


def test_a_lock_is_a_mark_before_the_md5_field_and_survives_a_round_trip() -> None:
    import dataclasses

    from proxy.core.users import format_htdigest

    alice = dataclasses.replace(make_user("alice", "proxyd", "wonderland"), locked=True)
    bob = make_user("bob", "proxyd", "bobsecret1")
    text = format_users([alice, bob])
    line = next(line for line in text.splitlines() if line.startswith("alice:"))
    assert line.split(":")[2] == "!" + alice.ha1["MD5"]
    parsed = parse_users(text, "users")
    assert parsed["alice"].locked and not parsed["bob"].locked
    assert parsed["alice"].ha1 == alice.ha1
    assert format_htdigest(parsed.values()).startswith("bob:")  # htdigest has no lock


def test_a_new_password_unlocks() -> None:
    import dataclasses

    locked = dataclasses.replace(make_user("alice", "proxyd", "wonderland"), locked=True)
    assert locked.locked
    assert not make_user("alice", "proxyd", "another-password").locked


def test_a_lock_mark_alone_is_not_a_hash() -> None:
    with pytest.raises(ConfigError, match="has no hash"):
        parse_users("alice:proxyd:!:\n", "users")


def test_groups_round_trip() -> None:
    import dataclasses

    bob = dataclasses.replace(make_user("bob", "proxyd", "bobsecret1"), groups=("acme", "beta"))
    text = format_users([bob])
    assert text.splitlines()[1].endswith("::acme,beta")
    assert parse_users(text, "users")["bob"].groups == ("acme", "beta")


def test_owner_and_creator_round_trip_with_awkward_characters() -> None:
    import dataclasses

    from proxy.core.users import parse_instant

    made = parse_instant("20261205T060102Z")
    bob = dataclasses.replace(
        make_user("bob", "proxyd", "bobsecret1"),
        owner="ACME: Ops 100%",
        created_by="jane:doe",
        created_at=made,
    )
    line = format_users([bob]).splitlines()[1]
    assert line.count(":") == 9 and line.endswith(":ACME%3A Ops 100%25:jane%3Adoe:20261205T060102Z")
    assert parse_users(format_users([bob]), "users")["bob"] == bob


@pytest.mark.parametrize("fields", [8, 9])
def test_a_half_written_creator_is_a_located_error(fields: int) -> None:
    line = ":".join(["bob", "proxyd", MD5, SHA, "", "", "", "ACME", "jane"][:fields])
    with pytest.raises(ConfigError, match="users:1: expected name:realm"):
        parse_users(line + "\n", "users")


def test_a_bad_created_at_is_a_located_error() -> None:
    line = f"bob:proxyd:{MD5}:{SHA}::::ACME:jane:2026-12-05T06:00"
    with pytest.raises(ConfigError, match="expected"):  # its colons make it 13 fields
        parse_users(line + "\n", "users")
    line = f"bob:proxyd:{MD5}:{SHA}::::ACME:jane:yesterday"
    with pytest.raises(ConfigError, match="users:1: user 'bob': created_at: not an instant"):
        parse_users(line + "\n", "users")


def test_a_file_from_before_owners_is_still_proxyd_s() -> None:
    from proxy.core.users import written_by_proxyd

    old = "# proxyd users file: name:realm:md5-ha1:sha256-ha1[:expires[:note[:groups]]] (w)\n"
    assert written_by_proxyd(old) and written_by_proxyd(format_users([]))
