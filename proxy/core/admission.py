"""Admission, sans-IO: one request or tunnel as it arrived in, one outcome out.

Both fronts ask this module and nothing else: connection cap, requests for the proxy
itself, the failed-login throttle, credentials, the destination, the policy. It is split
in two around the one piece of IO (resolving a name): `Admission.begin` returns an outcome
or a `Resolve` step, and `Admission.resolved` finishes it with the addresses.

The client's bytes come in as bytes (the Proxy-Authorization values, the method, the
CONNECT authority, the Host header) and are checked against their grammar before any of
them becomes text, so nothing later meets a character it cannot encode. Every input is
meant to give an outcome; the adapter still calls this inside one boundary that turns
any exception into a refusal (fail closed), because "meant to" is not a proof.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxy.core import authparams
from proxy.core.addresses import (
    IPAddress,
    canonical_ip,
    format_hostport,
    parse_ip_literal,
    split_hostport,
    validate_hostname,
)
from proxy.core.basic import BasicCredentials, parse_basic, verify_basic
from proxy.core.config import Config
from proxy.core.digest import DigestCredentials, DigestVerifier, parse_credentials, split_scheme
from proxy.core.errors import AuthFailure, BadDestination, MalformedCredentials
from proxy.core.policy import Policy, Verdict, Who
from proxy.core.throttle import LoginThrottle, ThrottleLimits

PAC_PATHS = ("/proxy.pac", "/wpad.dat")
# RFC 9110 token characters, as bytes: a method is one token.
_TCHAR = frozenset(ord(c) for c in authparams._TCHAR)


class Runtime(Protocol):
    """What a decision reads of the running config (service.runtime.Runtime has it): one
    config, its policy and the Digest verifier, swapped whole on reload."""

    @property
    def config(self) -> Config: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def verifier(self) -> DigestVerifier: ...

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port as bound, if there is one."""


# --- what comes in --------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One request head as a front saw it: plain values, the client's own bytes as bytes."""

    peer: str  # the client's address, as the socket gives it
    local: tuple[str, int] | None  # the address and port the client connected to
    method: bytes
    proxy_authorization: tuple[bytes, ...] = ()
    authority: bytes = b""  # CONNECT: the request target
    scheme: str = ""  # plain HTTP: the target's scheme as the engine parsed it
    host: str = ""  # plain HTTP: the target host as the engine parsed it
    port: int = 0  # plain HTTP: the target port
    path: bytes = b""  # plain HTTP: path and query
    host_header: bytes | None = None
    over_connection_limit: bool = False
    tls: bool = False  # the client's connection to the proxy is TLS

    @property
    def is_connect(self) -> bool:
        return self.method == b"CONNECT"

    def display_method(self) -> str:
        return printable(self.method.decode("latin-1"))

    def display_target(self) -> str:
        """For the access log: what the client asked for, never a character that breaks a line."""
        if self.is_connect:
            _, at, hostport = self.authority.decode("latin-1").rpartition("@")
            return printable(f"***@{hostport}" if at else hostport)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}.get(self.scheme)
        port = "" if self.port == default else f":{self.port}"
        return printable(f"{self.scheme}://{host}{port}{self.path.decode('latin-1')}")


def printable(text: str) -> str:
    """`text` with anything but printable ASCII escaped (`\\xff`, `\\n`, `\\udcff`)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if c.isascii() and c.isprintable() else ascii(c)[1:-1] for c in text)


# --- what goes out --------------------------------------------------------------------


@dataclass(frozen=True)
class Refuse:
    """An answer instead of forwarding: status, one-line reason, and why (for logs/metrics)."""

    status: int
    reason: str
    cause: str  # the log's decision label; for 407 and 429 also its `auth=` field
    user: str | None = None
    stale: bool = False
    rule: str | None = None

    @property
    def auth(self) -> str:
        """The access log's `auth=` field."""
        if self.status == 407 or self.cause in ("throttled", "bad_request"):
            return self.cause
        return "ok" if self.user else "none"

    @property
    def decision(self) -> str:
        return "auth_required" if self.status == 407 else self.cause


@dataclass(frozen=True)
class ServeLocal:
    """A request for the proxy itself (the PAC, or a 404): answered here, never forwarded."""

    method: str
    path: str
    pac_host: str  # the host the PAC points at when there is no public_address


@dataclass(frozen=True)
class Admit:
    """Forward to exactly this address and port: the ones the policy checked."""

    client: str
    user: str | None
    rule: str | None
    addresses: tuple[IPAddress, ...]  # every one checked, in the resolver's order
    port: int
    target: str  # for the access log: host:port for CONNECT (a name as written), else the URL
    who: Who | None = field(default=None, compare=False)  # user and groups, as judged

    @property
    def address(self) -> IPAddress:
        """The one address a single connection attempt goes to (plain HTTP)."""
        return self.addresses[0]


@dataclass(frozen=True)
class Resolve:
    """Resolve `name`, then call `Admission.resolved` with this step and the addresses."""

    name: str
    port: int
    ask: Ask
    user: str | None
    failure: AuthFailure | None
    target: str


Outcome = Refuse | ServeLocal | Admit | Resolve


# --- the decision ---------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """The Proxy-Authorization a request carries, parsed once: Digest or Basic
    credentials, a failure (Basic outside TLS), or a refusal (a header outside the
    grammar). No header: all None."""

    credentials: DigestCredentials | None = None
    basic: BasicCredentials | None = None
    failure: AuthFailure | None = None
    refusal: Refuse | None = None

    @property
    def username(self) -> str | None:
        offered = self.credentials or self.basic
        return offered.username if offered is not None else None


def read_offer(values: Sequence[bytes], basic_allowed: bool = False) -> Offer:
    if not values:
        return Offer()
    if len(values) > 1:
        return Offer(refusal=Refuse(400, "more than one Proxy-Authorization header", "bad_request"))
    try:
        scheme, rest = split_scheme(values[0])
        if scheme == "basic":
            if basic_allowed:
                return Offer(basic=parse_basic(rest))
            return Offer(failure=AuthFailure("basic"))
        return Offer(credentials=parse_credentials(values[0]))
    except MalformedCredentials as e:
        return Offer(refusal=Refuse(400, f"malformed Proxy-Authorization: {e}", "bad_request"))


@functools.lru_cache(maxsize=4096)  # the same few sources, again and again
def source_address(peer_host: str) -> IPAddress:
    return canonical_ip(ipaddress.ip_address(peer_host.split("%", 1)[0]))


class Admission:
    """The admission core. Holds only what outlives a reload (the failed-login buckets);
    the config comes with each call as a `Runtime`, one for the whole decision."""

    def __init__(self, limits: ThrottleLimits) -> None:
        self.throttle = LoginThrottle(limits)

    def begin(self, runtime: Runtime, ask: Ask, now: float) -> Outcome:
        if ask.over_connection_limit:
            limit = runtime.config.limits.max_connections_per_source
            return Refuse(429, f"more than {limit} connections from your address", "connections")
        if not ask.method or not set(ask.method) <= _TCHAR:
            return Refuse(400, "malformed request method", "bad_request")
        try:
            host, port = self._target(ask)
            literal = parse_ip_literal(host)
            name = None if literal is not None else validate_hostname(host)
        except BadDestination as e:
            return Refuse(400, str(e), "bad_destination")
        if not ask.is_connect and self._for_the_proxy(runtime, ask, host, literal, port):
            return self._serve_local(ask, host, port)
        if not ask.is_connect and ask.scheme != "http":
            return Refuse(400, "use CONNECT for https", "bad_request")
        offer = read_offer(ask.proxy_authorization, ask.tls and runtime.config.auth.basic_over_tls)
        if offer.refusal is not None:
            return offer.refusal
        user, failure = None, offer.failure
        claimed = offer.username
        if claimed is not None:
            if self.throttle.throttled(ask.peer, claimed, now):
                # Not even verified: a guesser learns nothing while throttled.
                return Refuse(429, "too many failed logins, retry later", "throttled", claimed)
            verifier = runtime.verifier
            try:
                if offer.basic is not None:
                    user = verify_basic(offer.basic, verifier.realm, verifier.lookup, now)
                else:
                    assert offer.credentials is not None
                    user = verifier.verify(
                        offer.credentials,
                        ask.method.decode("ascii"),
                        request_uris(ask, host, port),
                        now,
                    )
            except AuthFailure as e:
                failure = e
                self.throttle.failed(ask.peer, claimed, e.reason, now)
        target = format_hostport(literal or host, port) if ask.is_connect else ask.display_target()
        if name is not None:
            return Resolve(name, port, ask, user, failure, target)
        assert literal is not None
        return self._decide(runtime, ask, (literal,), port, user, failure, target, now)

    def resolved(
        self, runtime: Runtime, step: Resolve, addresses: Sequence[IPAddress], now: float
    ) -> Outcome:
        ask = step.ask
        if not addresses:
            return Refuse(502, f"cannot resolve {step.name}: no address", "dns", step.user)
        local = _local_address(ask)
        if (
            not ask.is_connect
            and local is not None
            and (local[0] in addresses)
            and (step.port == local[1])
        ):
            # A name for the proxy itself (its PAC URL by host name): served, not forwarded.
            return self._serve_local(ask, step.name, step.port)
        return self._decide(
            runtime, ask, addresses, step.port, step.user, step.failure, step.target, now
        )

    # --- the pieces -------------------------------------------------------------------

    @staticmethod
    def _target(ask: Ask) -> tuple[str, int]:
        if ask.is_connect:
            if b"@" in ask.authority:  # RFC 9110 9.3.6: host:port only; never echo a password
                raise BadDestination("invalid destination: user info in a CONNECT target")
            return split_hostport(header_target(ask.authority))
        host = ask.host
        if not host.isascii():  # the engine decoded an IDN: police its ASCII form
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise BadDestination(f"invalid host name: {printable(ask.host)!r}") from None
        return host, ask.port

    @staticmethod
    def _for_the_proxy(
        runtime: Runtime, ask: Ask, host: str, literal: IPAddress | None, port: int
    ) -> bool:
        """Its public address, or the address and port the client connected to?"""
        public = runtime.config.public_address
        if public is not None and (host.lower(), port) == public:
            return True
        local = _local_address(ask)
        return local is not None and literal == local[0] and port == local[1]

    @staticmethod
    def _serve_local(ask: Ask, host: str, port: int) -> ServeLocal:
        path = ask.path.decode("latin-1").split("?", 1)[0]
        if ask.host_header is not None:
            with contextlib.suppress(BadDestination):  # else the target's own host
                host = split_hostport(header_target(ask.host_header), port)[0]
        return ServeLocal(ask.display_method(), path, host)

    @staticmethod
    def _decide(
        runtime: Runtime,
        ask: Ask,
        addresses: Sequence[IPAddress],
        port: int,
        user: str | None,
        failure: AuthFailure | None,
        target: str,
        now: float,
    ) -> Outcome:
        source = source_address(ask.peer)
        itself = _is_the_proxy(runtime, ask, addresses, port)
        if itself is not None:
            return Refuse(403, itself, "denied", user)
        who = who_is(runtime, user)
        method = ask.method.decode("ascii")
        decision = runtime.policy.decide(source, addresses, port, who, now, method)
        if decision.verdict is Verdict.DENY:
            return Refuse(403, decision.reason, "denied", user)
        if failure is not None:
            # Credentials that were sent and are wrong are always refused, even where a rule
            # would let the request through without any: a client must not learn to ignore 407.
            return Refuse(
                407,
                _failure_text(runtime, ask, failure),
                failure.reason,
                user,
                failure.stale,
                decision.rule,
            )
        if decision.verdict is Verdict.AUTH_REQUIRED:
            return Refuse(407, "authentication required", "no_credentials", rule=decision.rule)
        return Admit(str(source), user, decision.rule, tuple(addresses), port, target, who)


def _failure_text(runtime: Runtime, ask: Ask, failure: AuthFailure) -> str:
    """The 407's one line. Basic refused on plain text says where it is accepted."""
    if failure.reason != "basic":
        return "authentication failed"
    tls_listen, tls_port = runtime.config.tls_listen, runtime.tls_port
    if tls_listen is None or tls_port is None or not runtime.config.auth.basic_over_tls:
        return "Basic is refused (it sends the password in clear): use Digest"
    public = runtime.config.public_address
    host = public[0] if public is not None else (ask.local[0] if ask.local else tls_listen[0])
    return (
        "Basic is refused on plain text (it sends the password in clear): use Digest, "
        f"or Basic over TLS: give the proxy as https://{format_hostport(host, tls_port)}"
    )


def who_is(runtime: Runtime, user: str | None) -> Who | None:
    """The authenticated user with its groups from the users file, for scoped rules."""
    if user is None:
        return None
    secrets = runtime.verifier.lookup(user)
    return Who(user, frozenset(secrets.groups) if secrets is not None else frozenset())


def header_target(raw: bytes) -> str:
    """A CONNECT authority or Host header as text, refused if outside printable ASCII."""
    if not raw or not all(0x21 <= b <= 0x7E for b in raw):
        raise BadDestination(f"invalid destination: {printable(raw.decode('latin-1'))!r}")
    return raw.decode("ascii")


def _local_address(ask: Ask) -> tuple[IPAddress, int] | None:
    if ask.local is None:
        return None
    try:
        return source_address(ask.local[0]), ask.local[1]
    except ValueError:
        return None


def _is_the_proxy(
    runtime: Runtime, ask: Ask, addresses: Sequence[IPAddress], port: int
) -> str | None:
    """Why this destination is the proxy itself, or None. The admin listener (metrics,
    health) and a tunnel into the proxy's own port are never destinations, even where a
    zone covers the proxy's address."""
    local = _local_address(ask)
    if local is not None and port == local[1] and local[0] in addresses:
        return "the proxy itself is not a destination"
    admin = runtime.config.admin_listen
    if admin is None or admin[1] != port:
        return None
    try:
        host = parse_ip_literal(admin[0]) if admin[0] else None
    except BadDestination:
        host = None
    if host is not None and not host.is_unspecified:
        own = {host}
    else:  # every local address: at least the one the client reached
        own = {local[0]} if local is not None else set()
    if own & set(addresses):
        return "the proxy's admin listener is not a destination"
    return None


def request_uris(ask: Ask, host: str, port: int) -> set[str]:
    """The `uri` values a client may put in its digest for this request.

    CONNECT: the authority (`host:port`). Otherwise the origin-form path (curl) or the
    absolute URI (other clients), with and without an explicit default port. Non-ASCII
    bytes stay as latin-1 characters: they can never equal a `uri` the grammar let through.
    """
    if ask.is_connect:
        return {ask.authority.decode("latin-1"), f"{host}:{port}"}
    host = host if ":" not in host else f"[{host}]"
    path = ask.path.decode("latin-1")
    uris = {path, f"{ask.scheme}://{host}:{port}{path}"}
    if port == 80:
        uris.add(f"{ask.scheme}://{host}{path}")
    return uris
