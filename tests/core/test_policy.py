"""Policy decisions, one row per case, on a policy built through the real config parser."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from proxy.core import config
from proxy.core.policy import Decision, Policy, Verdict, Who

CONFIG = """\
realm: proxyd
auth: {users_file: users, nonce_secret_file: secret}
zones:
  prod: [160.44.192.0/20]
  preprod: [80.158.0.0/23]
  lab6: ["2001:db8:1::/48"]
  partners: [203.0.113.0/24, "2001:db8:ffff::/48"]
rules:
  - name: prod-to-preprod
    from: [prod]
    to: [preprod]
    ports: [80, 443, 8443]
    auth: none
  - name: lab6-ranges
    from: [any]
    to: [lab6]
    ports: ["8000-8099", 22]
    auth: none
  - name: partners
    from: [any]
    to: [prod, preprod]
    ports: [22, 80, 443, 8443]
    auth: required
  - name: shadowed-by-partners
    from: [partners]
    to: [preprod]
    ports: [80]
    auth: none
  - name: monitoring
    from: [198.51.100.7/32]
    to: [10.20.0.0/16]
    ports: ["1-65535"]
    auth: none
"""

PROD = "160.44.192.5"
PREPROD = "80.158.0.10"
PARTNER = "203.0.113.9"
OUTSIDE = "10.0.0.1"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return config.parse(CONFIG, Path("t.yaml")).policy


@dataclasses.dataclass(frozen=True)
class Case:
    source: str
    destinations: tuple[str, ...]
    port: int
    verdict: Verdict
    rule: str | None
    authenticated: bool = False


CASES = [
    # First match wins, and matching includes the port.
    pytest.param(Case(PROD, (PREPROD,), 443, Verdict.ALLOW, "prod-to-preprod"), id="prod-no-auth"),
    pytest.param(
        Case(PROD, (PREPROD,), 443, Verdict.ALLOW, "prod-to-preprod", authenticated=True),
        id="prod-authenticated-anyway",
    ),
    pytest.param(
        Case(PROD, (PREPROD,), 22, Verdict.AUTH_REQUIRED, "partners"),
        id="prod-port-not-in-first-rule",
    ),
    pytest.param(
        Case(PARTNER, (PREPROD,), 80, Verdict.AUTH_REQUIRED, "partners"),
        id="earlier-rule-shadows-later",
    ),
    pytest.param(
        Case(PARTNER, (PREPROD,), 80, Verdict.ALLOW, "partners", authenticated=True),
        id="partner-authenticated",
    ),
    pytest.param(Case("8.8.8.8", (PROD,), 22, Verdict.AUTH_REQUIRED, "partners"), id="any-source"),
    pytest.param(
        Case("2001:db8:9::1", (PREPROD,), 443, Verdict.AUTH_REQUIRED, "partners"),
        id="any-source-v6",
    ),
    pytest.param(
        Case("8.8.8.8", (PROD,), 443, Verdict.ALLOW, "partners", authenticated=True),
        id="auth-required-and-given",
    ),
    # Denials: port, zone, no destination.
    pytest.param(Case("8.8.8.8", (PROD,), 25, Verdict.DENY, None), id="denied-port"),
    pytest.param(
        Case("8.8.8.8", (PROD,), 25, Verdict.DENY, None, authenticated=True),
        id="denied-port-even-authenticated",
    ),
    pytest.param(
        Case(PROD, (OUTSIDE,), 80, Verdict.DENY, None, authenticated=True), id="denied-zone"
    ),
    pytest.param(Case(PROD, ("80.158.2.0",), 80, Verdict.DENY, None), id="just-outside-the-zone"),
    pytest.param(
        Case(PROD, ("80.158.1.255",), 80, Verdict.ALLOW, "prod-to-preprod"),
        id="last-address-of-the-zone",
    ),
    pytest.param(Case(PROD, (), 80, Verdict.DENY, None, authenticated=True), id="no-destination"),
    # Port ranges.
    pytest.param(
        Case("8.8.8.8", ("2001:db8:1::5",), 8000, Verdict.ALLOW, "lab6-ranges"), id="range-low"
    ),
    pytest.param(
        Case("8.8.8.8", ("2001:db8:1::5",), 8099, Verdict.ALLOW, "lab6-ranges"), id="range-high"
    ),
    pytest.param(Case("8.8.8.8", ("2001:db8:1::5",), 7999, Verdict.DENY, None), id="below-range"),
    pytest.param(Case("8.8.8.8", ("2001:db8:1::5",), 8100, Verdict.DENY, None), id="above-range"),
    pytest.param(
        Case("8.8.8.8", ("2001:db8:1::5",), 22, Verdict.ALLOW, "lab6-ranges"),
        id="range-and-single-port",
    ),
    pytest.param(
        Case("198.51.100.7", ("10.20.1.1",), 1, Verdict.ALLOW, "monitoring"), id="full-range-low"
    ),
    pytest.param(
        Case("198.51.100.7", ("10.20.1.1",), 65535, Verdict.ALLOW, "monitoring"),
        id="full-range-high",
    ),
    # IPv6 zones, and sources given as a CIDR.
    pytest.param(
        Case("2001:db8:ffff::1", ("2001:db8:1:ffff::1",), 8050, Verdict.ALLOW, "lab6-ranges"),
        id="v6-zone",
    ),
    pytest.param(Case("8.8.8.8", ("2001:db8:2::1",), 8050, Verdict.DENY, None), id="v6-outside"),
    pytest.param(
        Case("198.51.100.8", ("10.20.1.1",), 80, Verdict.DENY, None), id="source-cidr-neighbour"
    ),
    pytest.param(
        Case("::ffff:198.51.100.7", ("10.20.1.1",), 80, Verdict.DENY, None),
        id="mapped-source-is-not-canonicalised-here",
    ),
    # Every destination address must be allowed; the strictest answer wins.
    pytest.param(
        Case(PROD, (PREPROD, OUTSIDE), 443, Verdict.DENY, None, authenticated=True),
        id="allowed-then-denied",
    ),
    pytest.param(
        Case(PROD, (OUTSIDE, PREPROD), 443, Verdict.DENY, None, authenticated=True),
        id="denied-then-allowed",
    ),
    pytest.param(
        Case(PROD, (PREPROD, "160.44.192.9"), 443, Verdict.AUTH_REQUIRED, "partners"),
        id="no-auth-plus-needs-auth",
    ),
    pytest.param(
        Case(PROD, ("160.44.192.9", PREPROD), 443, Verdict.AUTH_REQUIRED, "partners"),
        id="needs-auth-plus-no-auth",
    ),
    pytest.param(
        Case(
            PROD,
            (PREPROD, "160.44.192.9"),
            443,
            Verdict.ALLOW,
            "prod-to-preprod",
            authenticated=True,
        ),
        id="mixed-rules-authenticated",
    ),
    pytest.param(
        Case(PROD, ("160.44.192.9", PREPROD, OUTSIDE), 443, Verdict.DENY, None),
        id="needs-auth-then-denied",
    ),
    pytest.param(
        Case("8.8.8.8", (PREPROD, "2001:db8:1::1"), 22, Verdict.AUTH_REQUIRED, "partners"),
        id="v4-and-v6-answers",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_decide(policy: Policy, case: Case) -> None:
    decision = policy.decide(
        ipaddress.ip_address(case.source),
        [ipaddress.ip_address(d) for d in case.destinations],
        case.port,
        Who("alice") if case.authenticated else None,
    )
    assert (decision.verdict, decision.rule) == (case.verdict, case.rule)
    assert decision.allowed is (case.verdict is Verdict.ALLOW)
    if case.rule is not None:
        assert repr(case.rule) in decision.reason


@pytest.mark.parametrize(
    "destinations, reason",
    [
        ((), "destination has no address"),
        ((OUTSIDE,), f"no rule allows {PROD} to {OUTSIDE} port 80"),
        ((PREPROD,), "allowed by rule 'prod-to-preprod'"),
    ],
)
def test_reasons_are_one_line(policy: Policy, destinations: tuple[str, ...], reason: str) -> None:
    decision = policy.decide(
        ipaddress.ip_address(PROD), [ipaddress.ip_address(d) for d in destinations], 80, None
    )
    assert decision.reason == reason


def test_rule_order_is_the_file_order() -> None:
    """The shadowed rule, moved first, now answers: first match, not best match."""
    early = "  - {name: early, from: [partners], to: [preprod], ports: [80], auth: none}\n"
    swapped = CONFIG.replace("rules:\n", "rules:\n" + early)
    policy = config.parse(swapped, Path("t.yaml")).policy
    decision = policy.decide(
        ipaddress.ip_address(PARTNER), [ipaddress.ip_address(PREPROD)], 80, None
    )
    assert decision == Decision(Verdict.ALLOW, "early", "allowed by rule 'early'")


def test_first_match_names_the_rule(policy: Policy) -> None:
    rule = policy.first_match(ipaddress.ip_address(PARTNER), ipaddress.ip_address(PREPROD), 80)
    assert rule is not None and rule.name == "partners"
    assert (
        policy.first_match(ipaddress.ip_address(PARTNER), ipaddress.ip_address(OUTSIDE), 80) is None
    )


# --- scopes (users, groups) and methods ------------------------------------------------

SCOPED = """\
realm: proxyd
auth: {users_file: users, nonce_secret_file: secret}
groups:
  acme: ACME GmbH, jane@acme.example
  beta: Beta Ltd
zones:
  acme-project: [80.158.0.0/28]
  preprod: [80.158.0.0/23]
rules:
  - {name: acme, from: [any], to: [acme-project], ports: [443], groups: [acme]}
  - {name: carol, from: [any], to: [preprod], ports: [443], users: [carol]}
  - {name: tunnels-only, from: [any], to: [preprod], ports: [8443], methods: [connect]}
  - {name: web-only, from: [any], to: [preprod], ports: [80], methods: [GET, HEAD]}
"""
ACME_VM, OTHER_VM = "80.158.0.5", "80.158.1.5"


@pytest.fixture(scope="module")
def scoped() -> Policy:
    return config.parse(SCOPED, Path("t.yaml")).policy


def decide(policy: Policy, to: str, port: int, who: Who | None, method: str = "CONNECT") -> str:
    d = policy.decide(
        ipaddress.ip_address(PARTNER), [ipaddress.ip_address(to)], port, who, None, method
    )
    return f"{d.verdict.value}:{d.rule}"


@pytest.mark.parametrize(
    ("to", "port", "who", "expected"),
    [
        (ACME_VM, 443, Who("alice", frozenset({"acme"})), "allow:acme"),
        (ACME_VM, 443, Who("bob", frozenset({"beta"})), "deny:None"),  # not in the scope
        (ACME_VM, 443, None, "auth_required:acme"),  # who it is decides: authenticate
        (OTHER_VM, 443, Who("alice", frozenset({"acme"})), "deny:None"),
        (OTHER_VM, 443, Who("carol"), "allow:carol"),
        (ACME_VM, 443, Who("carol"), "allow:carol"),  # acme's rule passes over, carol's allows
    ],
)
def test_scoped_rules(scoped: Policy, to: str, port: int, who: Who | None, expected: str) -> None:
    assert decide(scoped, to, port, who) == expected


def test_methods(scoped: Policy) -> None:
    alice = Who("alice")
    assert decide(scoped, OTHER_VM, 8443, alice, "CONNECT") == "allow:tunnels-only"
    assert decide(scoped, OTHER_VM, 8443, alice, "GET") == "deny:None"
    assert decide(scoped, OTHER_VM, 80, alice, "GET") == "allow:web-only"
    assert decide(scoped, OTHER_VM, 80, alice, "CONNECT") == "deny:None"


def test_jump_accounts_get_neither_scoped_nor_plain_http_only_rules(scoped: Policy) -> None:
    assert [r.name for r in scoped.jump_rules()] == ["tunnels-only"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("groups: [nobody]", "unknown group 'nobody' (declare it in groups:)"),
        ("groups: [Acme]", "not a group name: 'Acme'"),
        ("users: [':bad']", "not a user name"),
        ("users: []", "must name at least one user name"),
        ("methods: []", "must name at least one method"),
        ("methods: ['GE T']", "not a method"),
        ("users: [carol], auth: none", "a rule scoped to users or groups needs auth: required"),
    ],
)
def test_scope_errors(rule: str, message: str) -> None:
    text = SCOPED.replace("groups: [acme]}", rule + "}", 1)
    with pytest.raises(config.ConfigError) as error:
        config.parse(text, Path("t.yaml"))
    assert any(message in p for p in error.value.problems), error.value.problems


def test_group_declarations_need_an_owner() -> None:
    text = SCOPED.replace("beta: Beta Ltd", "beta: ''")
    with pytest.raises(config.ConfigError, match="say who answers for the group"):
        config.parse(text, Path("t.yaml"))
