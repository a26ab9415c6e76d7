"""Access policy: named CIDR zones and first-match rules, sans-IO.

`Policy.decide` takes the facts of one request (source address, every address the
destination resolved to, port, method, who authenticated) and returns one `Decision`.
The adapter never decides anything itself. A rule may be scoped to users and groups
(`users:`, `groups:`): it then matches only them, and asks anyone else who reaches it
unauthenticated to authenticate first. A rule may be limited to methods (`methods:`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

import netaddr

from proxy.core.addresses import IPAddress


class Verdict(enum.Enum):
    ALLOW = "allow"
    AUTH_REQUIRED = "auth_required"
    DENY = "deny"


class AuthMode(enum.Enum):
    NONE = "none"
    REQUIRED = "required"


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class TrustedSource:
    """A partner's static egress address, allowed for a reason until a date."""

    name: str
    network: netaddr.IPNetwork
    owner: str
    reason: str
    expires: float  # seconds since the epoch: it stops matching at this instant

    def covers(self, address: netaddr.IPAddress, now: float) -> bool:
        return now < self.expires and address in self.network


@dataclass(frozen=True)
class AddressSet:
    """A set of networks with the names it was written as (for explain and the PAC)."""

    labels: tuple[str, ...]
    networks: netaddr.IPSet | None  # None: any address
    trusted: tuple[TrustedSource, ...] = ()  # time-limited members

    def contains(self, address: IPAddress, now: float) -> bool:
        if self.networks is None:
            return True
        ip = netaddr.IPAddress(int(address), address.version)  # no text round trip
        return ip in self.networks or any(t.covers(ip, now) for t in self.trusted)

    def __str__(self) -> str:
        return ", ".join(self.labels)


@dataclass(frozen=True)
class Who:
    """An authenticated user, with the groups the users file gives it."""

    name: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    name: str
    sources: AddressSet
    destinations: AddressSet
    ports: tuple[PortRange, ...]
    auth: AuthMode
    users: frozenset[str] = frozenset()  # with groups: the rule's scope; both empty: anyone
    groups: frozenset[str] = frozenset()
    methods: frozenset[str] | None = None  # None: every method

    @property
    def scoped(self) -> bool:
        return bool(self.users or self.groups)

    def in_scope(self, who: Who) -> bool:
        return not self.scoped or who.name in self.users or bool(self.groups & who.groups)

    def matches(
        self,
        source: IPAddress,
        destination: IPAddress,
        port: int,
        now: float,
        method: str | None = None,
    ) -> bool:
        """Source, destination, port and (when given) method; the scope is asked apart."""
        return (
            any(port in r for r in self.ports)
            and (method is None or self.methods is None or method in self.methods)
            and self.sources.contains(source, now)
            and self.destinations.contains(destination, now)
        )

    def needs_auth(self, who: Who | None) -> bool:
        return who is None and (self.auth is AuthMode.REQUIRED or self.scoped)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str | None
    reason: str

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


@dataclass(frozen=True)
class Policy:
    zones: dict[str, netaddr.IPSet]
    rules: tuple[Rule, ...]

    def open_to_anyone(self, destination: IPAddress, port: int) -> bool:
        """Whether a partner from anywhere may reach destination:port with a tunnel.

        This is what the jump accounts' PermitOpen list and their nc gate serve: rules with
        `from: [any]`, not scoped to proxy users, that allow CONNECT. Rules only ever
        allow, so any match is the answer.
        """
        # The source is irrelevant for these rules; trusted sources only widen sources.
        return any(rule.matches(destination, destination, port, 0.0) for rule in self.jump_rules())

    def jump_rules(self) -> list[Rule]:
        """The rules jump accounts are held to: `from: [any]`, not scoped to proxy users
        (an account is not one), allowing CONNECT (what a port forward is)."""
        return [
            rule
            for rule in self.public_rules()
            if not rule.scoped and (rule.methods is None or "CONNECT" in rule.methods)
        ]

    def public_rules(self) -> list[Rule]:
        """The rules a partner from anywhere may use (`from: [any]`), scoped ones too."""
        return [rule for rule in self.rules if rule.sources.networks is None]

    def first_match(
        self,
        source: IPAddress,
        destination: IPAddress,
        port: int,
        now: float | None = None,
        method: str | None = None,
        who: Who | None = None,
    ) -> Rule | None:
        """The first rule for this request. A scoped rule that `who` is not in is passed
        over; for no one (not authenticated) it is the answer: authenticating may allow."""
        when = time.time() if now is None else now
        for rule in self.rules:
            if rule.matches(source, destination, port, when, method) and (
                who is None or rule.in_scope(who)
            ):
                return rule
        return None

    def decide(
        self,
        source: IPAddress,
        destinations: Sequence[IPAddress],
        port: int,
        who: Who | None,
        now: float | None = None,
        method: str | None = None,
    ) -> Decision:
        """Every destination address must be allowed; the strictest answer wins.

        A name that resolves to an allowed and a denied address is denied: the client could
        otherwise pick (or DNS could rotate to) the denied one.
        """
        if not destinations:
            return Decision(Verdict.DENY, None, "destination has no address")
        when = time.time() if now is None else now  # trusted sources expire by the clock
        needs_auth: Rule | None = None
        first: Rule | None = None
        for destination in destinations:
            rule = self.first_match(source, destination, port, when, method, who)
            if rule is None:
                return Decision(
                    Verdict.DENY, None, f"no rule allows {source} to {destination} port {port}"
                )
            first = first or rule
            if rule.needs_auth(who) and needs_auth is None:
                needs_auth = rule
        if needs_auth is not None:
            return Decision(
                Verdict.AUTH_REQUIRED, needs_auth.name, f"rule {needs_auth.name!r} requires auth"
            )
        assert first is not None
        return Decision(Verdict.ALLOW, first.name, f"allowed by rule {first.name!r}")
