"""Jump-account planning, sans-IO: names, expiry, the key line, plans, PermitOpen, the gate."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from proxy.core import config
from proxy.core.jump import (
    Account,
    JumpError,
    account_from_record,
    authorized_keys_line,
    check_expiry,
    check_name,
    format_grants,
    parse_gate_command,
    parse_grants,
    permit_open,
    plan_add,
    plan_sweep,
    sshd_config_block,
)

TODAY = datetime.date(2026, 11, 22)
NOW = datetime.datetime(2026, 11, 22, 15, 0, tzinfo=datetime.UTC).timestamp()
GATE = "/opt/proxyd/.venv/bin/proxyd jump-gate --config /etc/proxyd/proxyd.yaml"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3rlvWwQknUkfghp9beIzvUNqdS1RWxB3Gg5FrEM+hF a@b"


def account(
    name: str = "acme-alice", profile: str = "tunnel", expires: str = "2027-03-31"
) -> Account:
    return Account(name, profile, datetime.date.fromisoformat(expires), "", "SHA256:x", KEY)


@pytest.mark.parametrize("name", ["acme-alice", "ab", "a" + "b" * 30])
def test_good_names(name: str) -> None:
    assert check_name(name, existing_unmanaged=False) == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("a", "invalid account name"),
        ("a" * 32, "invalid account name"),
        ("Alice", "invalid account name"),
        ("-x", "invalid account name"),
        ("1abc", "invalid account name"),
        ("a/b", "invalid account name"),
        ("../x", "invalid account name"),
        ("alice\n", "invalid account name"),
        ("a b", "invalid account name"),
        ("root", "reserved"),
        ("sshd", "reserved"),
        ("nobody", "reserved"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(JumpError, match=message):
        check_name(name, existing_unmanaged=False)


def test_existing_unmanaged_account_is_never_taken_over() -> None:
    with pytest.raises(JumpError, match="does not manage"):
        check_name("postgres-x", existing_unmanaged=True)


@pytest.mark.parametrize(
    "text", ["2026-11-22", "2020-01-01", "tomorrow", "2027-02-30", "27-01-01x"]
)
def test_bad_expiry(text: str) -> None:
    with pytest.raises(JumpError):
        check_expiry(text, NOW, 90)


def test_expiry_within_max_lifetime() -> None:
    assert check_expiry("2026-11-23", NOW, 90) == datetime.date(2026, 11, 23)
    # It may run through the day 90 days on: the first day refused is the 91st.
    assert check_expiry("2027-02-21", NOW, 90) == datetime.date(2027, 2, 21)
    with pytest.raises(JumpError, match=r"more than grants.max_lifetime \(90 days\)"):
        check_expiry("2027-02-22", NOW, 90)
    with pytest.raises(JumpError, match=r"\(7 days\)"):
        check_expiry("2026-12-01", NOW, 7)
    with pytest.raises(JumpError, match="passed already"):
        check_expiry("2026-11-22", NOW, 90)


def test_key_lines_per_profile() -> None:
    tunnel = authorized_keys_line(account(), GATE)
    assert tunnel == (f'restrict,port-forwarding,command="{GATE}",expiry-time="20270331Z" {KEY}\n')
    shell = authorized_keys_line(account(profile="shell"), GATE)
    assert shell == f'restrict,port-forwarding,pty,expiry-time="20270331Z" {KEY}\n'


def test_add_plan_order_and_dry_run_text() -> None:
    steps = plan_add(account(), config.JumpConfig(), GATE)
    assert [s.action for s in steps] == [
        "ensure_group",
        "create_user",
        "lock_password",
        "write_keys",
        "write_state",
        "audit",
    ]
    assert str(steps[1]) == (
        "create_user    acme-alice home=/home/acme-alice group=proxyd-jump expires=2027-03-31"
    )
    # Each step carries every value its executor uses: the state record in full, the key
    # line as written, the audit line's facts.
    assert account_from_record(dict(steps[4].args)) == account()
    assert steps[3].arg("line") == authorized_keys_line(account(), GATE).rstrip("\n")
    assert dict(steps[5].args) == {
        "action": "add",
        "expires": "2027-03-31",
        "fingerprint": "SHA256:x",
    }


@pytest.mark.parametrize(
    "record",
    [
        [],
        {"name": "x"},
        {"name": "x", "profile": "tunnel", "expires": 5, "note": "", "fingerprint": "", "key": ""},
        {
            "name": "x",
            "profile": "tunnel",
            "expires": "soon",
            "note": "",
            "fingerprint": "",
            "key": "",
        },
        {
            "name": "x",
            "profile": "tunnel",
            "expires": "2027-01-01",
            "note": "",
            "fingerprint": "",
            "key": "",
            "extra": "field",
        },
    ],
)
def test_a_broken_state_record_is_a_value_error(record: object) -> None:
    with pytest.raises(ValueError):
        account_from_record(record)


def test_a_record_from_before_owners_reads_with_empty_ones() -> None:
    old = {
        "name": "x",
        "profile": "tunnel",
        "expires": "2027-01-01",
        "note": "n",
        "fingerprint": "f",
        "key": "k",
    }
    assert account_from_record(old).owner == ""


def test_sweep_plans_only_expired_accounts() -> None:
    steps = plan_sweep(
        [account("old-one", expires="2026-11-22"), account("new-one", expires="2026-11-23")], TODAY
    )
    assert {s.account for s in steps} == {"old-one"}
    assert [s.action for s in steps][:3] == ["lock_account", "kill_sessions", "delete_user"]


POLICY = """
auth: {users_file: u, nonce_secret_file: s}
zones: {pre: [192.0.2.0/30], internal: [10.0.0.0/8], v6: ["2001:db8::/127"]}
rules:
  - {name: internal, from: [internal], to: [pre], ports: [22, 2222]}
  - {name: partners, from: [any], to: [pre, v6], ports: [22, 443]}
"""


def policy() -> config.Policy:
    return config.parse(POLICY, Path("t.yaml")).policy


def test_permit_open_expands_partner_zones_on_jump_ports() -> None:
    entries = permit_open(policy(), [22, 2222], limit=100)
    assert entries == [
        "192.0.2.0:22",
        "192.0.2.1:22",
        "192.0.2.2:22",
        "192.0.2.3:22",
        "[2001:db8::]:22",
        "[2001:db8::1]:22",
    ]  # 2222 only by the internal rule, which sshd can't tell apart: left out
    block = sshd_config_block("proxyd-jump", entries, Path("/etc/ssh/keys"))
    assert "Match Group proxyd-jump\n    AuthorizedKeysFile /etc/ssh/keys/%u\n" in block
    assert "    PermitOpen 192.0.2.0:22 192.0.2.1:22" in block
    assert "    AllowTcpForwarding local\n" in block and "    PermitListen none\n" in block


def test_permit_open_limit_and_empty() -> None:
    with pytest.raises(JumpError, match="more than 3 PermitOpen entries"):
        permit_open(policy(), [22], limit=3)
    assert "PermitOpen none" in sshd_config_block(
        "g", permit_open(policy(), [80], limit=10), Path("/k")
    )


@pytest.mark.parametrize(
    "command, expected",
    [
        ("nc 192.0.2.1 22", ("192.0.2.1", 22)),
        ("nc vm.preprod.example 22", ("vm.preprod.example", 22)),
        ("nc [2001:db8::1] 22", ("[2001:db8::1]", 22)),
    ],
)
def test_gate_accepts_only_nc_host_port(command: str, expected: tuple[str, int]) -> None:
    assert parse_gate_command(command) == expected


@pytest.mark.parametrize(
    "command",
    [
        None,
        "",
        "id",
        "nc",
        "nc host",
        "nc -e /bin/sh host 22",
        "nc host 22; id",
        "nc $(id) 22",
        "nc `id` 22",
        "nc host 22 extra",
        "nc host 22\nid",
        "nc  host 22",
        "nc host 22 | sh",
        "nc host 0",
        "nc host 99999",
        "ncat host 22",
        " nc host 22",
        "nc host 22 ",
    ],
)
def test_gate_refuses_everything_else(command: str | None) -> None:
    with pytest.raises(JumpError):
        parse_gate_command(command)


def test_the_published_grants_round_trip_and_refuse_junk() -> None:
    text = format_grants([account("b-one"), account("a-two", expires="2027-01-02")])
    assert json.loads(text) == {"a-two": "2027-01-02", "b-one": "2027-03-31"}
    assert parse_grants(text)["a-two"] == 1798848000.0  # 2027-01-02T00:00Z
    for junk in (b"", b"[]", b'{"x": "soon"}', b"\xff"):
        with pytest.raises(ValueError):
            parse_grants(junk)
