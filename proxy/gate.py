"""The admission decision for one request, sans-IO: facts in, an `Admission` out.

Split in two around the one piece of IO (resolving a name): `identify` checks the target
and the credentials; `admit` applies the policy to the resolved addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from .addresses import IPAddress, canonical_ip, parse_ip_literal, validate_hostname
from .digest import DigestCredentials, parse_credentials, split_scheme
from .errors import AuthFailure, BadDestination, MalformedCredentials
from .policy import Decision, Policy, Verdict
from .runtime import Runtime


@dataclass(frozen=True)
class Refusal:
    """An answer instead of forwarding: status, one-line reason, and why (for logs/metrics)."""

    status: int
    reason: str
    cause: str
    stale: bool = False
    rule: str | None = None


@dataclass(frozen=True)
class Target:
    host: str  # as the client wrote it
    port: int
    literal: IPAddress | None  # set when host is an IP literal (normalised)
    name: str | None = None  # set when host is a name to resolve


@dataclass
class Identity:
    user: str | None = None
    auth_failure: AuthFailure | None = None
    refusal: Refusal | None = field(default=None)


def parse_target(host: str, port: int) -> Target:
    literal = parse_ip_literal(host)
    if literal is not None:
        return Target(host, port, literal)
    return Target(host, port, None, validate_hostname(host))


@dataclass(frozen=True)
class Offer:
    """The Proxy-Authorization a request carries, parsed once: Digest credentials, or what
    is wrong with the header. No header: all None (anonymous)."""

    credentials: DigestCredentials | None = None
    failure: AuthFailure | None = None
    refusal: Refusal | None = None

    @property
    def claimed_username(self) -> str | None:
        """The user name claimed, unverified (to throttle guessing per user)."""
        return self.credentials.username if self.credentials is not None else None


def read_offer(header_values: Sequence[str]) -> Offer:
    """One header or none. A bad header: a refusal (400); Basic: a failure (407)."""
    if not header_values:
        return Offer()
    if len(header_values) > 1:
        return Offer(refusal=Refusal(400, "more than one Proxy-Authorization header", "malformed"))
    try:
        scheme, _ = split_scheme(header_values[0])
        if scheme == "basic":
            return Offer(failure=AuthFailure("basic"))
        return Offer(credentials=parse_credentials(header_values[0]))
    except MalformedCredentials as e:
        return Offer(refusal=Refusal(400, f"malformed Proxy-Authorization: {e}", "malformed"))


def identify(
    runtime: Runtime, offer: Offer, method: str, request_uris: set[str], now: float
) -> Identity:
    """Who is asking: anonymous, a verified user, or why not."""
    if offer.credentials is None:
        return Identity(auth_failure=offer.failure, refusal=offer.refusal)
    try:
        user = runtime.verifier.verify(offer.credentials, method, request_uris, now)
    except AuthFailure as e:
        return Identity(auth_failure=e)
    return Identity(user=user)


# Failures that are part of normal operation are not held against a client.
NOT_ABUSE = frozenset({"stale", "no_credentials"})


def admit(
    policy: Policy,
    source: IPAddress,
    addresses: Sequence[IPAddress],
    port: int,
    identity: Identity,
    now: float,
) -> tuple[Decision, Refusal | None]:
    """The policy's decision and, unless it allows, the refusal to send."""
    authenticated = identity.user is not None
    decision = policy.decide(source, addresses, port, authenticated, now)
    if decision.verdict is Verdict.DENY:
        return decision, Refusal(403, decision.reason, "denied")
    if identity.auth_failure is not None:
        # Credentials that were sent and are wrong are always refused, even where a rule
        # would let the request through without any: a client must not learn to ignore 407.
        failure = identity.auth_failure
        return decision, Refusal(
            407, "authentication failed", failure.reason, stale=failure.stale, rule=decision.rule
        )
    if decision.verdict is Verdict.AUTH_REQUIRED:
        return decision, Refusal(
            407, "authentication required", "no_credentials", rule=decision.rule
        )
    return decision, None


def source_address(peer_host: str) -> IPAddress:
    return canonical_ip(ipaddress.ip_address(peer_host.split("%", 1)[0]))


__all__ = ["BadDestination", "Identity", "Refusal", "Target", "admit", "identify", "parse_target"]
