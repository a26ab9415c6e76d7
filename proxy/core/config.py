"""The config file: YAML in, a frozen `Config` out, every error located (`file:line: key: ...`).

Validation gathers all errors rather than stopping at the first, so `check-config` shows
an operator everything wrong in one run. Nothing here touches the network or writes files.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import netaddr

from proxy.core import yamlloc
from proxy.core.addresses import parse_port, split_hostport
from proxy.core.digest import ALGORITHMS
from proxy.core.errors import BadDestination, ConfigError
from proxy.core.grants import checked_expiry
from proxy.core.policy import AddressSet, AuthMode, Policy, PortRange, Rule, TrustedSource
from proxy.core.throttle import BucketSpec, ThrottleLimits
from proxy.core.users import GROUP_RE, USERNAME_RE
from proxy.core.yamlloc import Located
from proxy.core.yamlloc import Path as KeyPath

T = TypeVar("T")

DEFAULT_CONFIG = Path("config/proxyd.yaml")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_REALM_RE = re.compile(r"^[A-Za-z0-9 ._@-]{1,64}$")
RESERVED_SELECTORS = frozenset({"any"})
BROADEST_TRUSTED = {4: 28, 6: 56}  # "we will not whitelist large network segments"
# A rule's `to` may cover at most as many addresses as one IPv4 /8 and one IPv6 /16 unless
# it says `allow_broad: true`: `0.0.0.0/0`, `::/0`, a zone holding them, or enough smaller
# networks to add up to more are as good as `to: any`, an open proxy. Counted over the
# union, so two /1s are as broad as the /0 they make.
BROADEST_DESTINATION = {4: 8, 6: 16}
# Every key a config file may hold, section by section: the one list of keys. The builder
# refuses any other (`_known`), config/proxyd.yaml explains each and README's
# Configuration names each (tests/core/test_config_schema.py holds both to it). A key maps
# to the keys of the mapping it holds, or to None when its value is not a mapping of fixed
# keys: a scalar, a list of scalars, or `zones` (its keys are the operator's zone names).
# `rules` and `trusted_sources` hold lists of mappings with the keys given.
type Schema = Mapping[str, Schema | None]

_BUCKET: Schema = {"burst": None, "per_minute": None}
SCHEMA: Schema = {
    "listen": None,
    "realm": None,
    "auth": {
        "users_file": None,
        "nonce_secret_file": None,
        "nonce_lifetime": None,
        "algorithms": None,
        "basic_over_tls": None,
        "lock_on_plaintext": None,
    },
    "tls_listen": None,
    "audit_log": None,
    "grants": {"max_lifetime": None, "last_use_file": None},
    "tls": {"certificate": None, "key": None},
    "dns": {"hosts_file": None, "timeout": None},
    "zones": None,
    "rules": {
        "name": None,
        "from": None,
        "to": None,
        "ports": None,
        "auth": None,
        "allow_broad": None,
        "users": None,
        "groups": None,
        "methods": None,
    },
    "groups": None,
    "trusted_sources": {
        "name": None,
        "cidr": None,
        "owner": None,
        "reason": None,
        "expires": None,
        "allow_broad": None,
    },
    "admin_listen": None,
    "access_log": {"path": None, "format": None},
    "public_address": None,
    "pac": {"domains": None},
    "drain_timeout": None,
    "pid_file": None,
    "limits": {
        "auth_failures": {"per_source": _BUCKET, "per_user": _BUCKET, "per_user_total": _BUCKET},
        "max_header_bytes": None,
        "max_connections_per_source": None,
        "idle_timeout": None,
    },
    "upstream": {"connect_timeout": None, "read_timeout": None},
    "jump": {
        "group": None,
        "home_base": None,
        "state_dir": None,
        "keys_dir": None,
        "audit_log": None,
        "rsa_min_bits": None,
        "ports": None,
        "gate": None,
        "permit_open_limit": None,
        "grants_file": None,
    },
}


def _known(*section: str) -> frozenset[str]:
    """The keys SCHEMA allows in the mapping at `section` (keys, not list indexes)."""
    schema: Schema | None = SCHEMA
    for key in section:
        assert schema is not None, section
        schema = schema[key]
    assert schema is not None, f"{'.'.join(section)} is not a section"
    return frozenset(schema)


TOP_LEVEL_KEYS = _known()
DEFAULT_AUDIT_LOG = Path("/var/log/proxyd/audit.log")
# In the proxy's own state folder (the systemd unit's StateDirectory=proxyd/proxy).
DEFAULT_LAST_USE_FILE = Path("/var/lib/proxyd/proxy/last-use.json")
_METHOD_RE = re.compile(r"^[A-Za-z]{1,20}$")
_DOMAIN_RE = re.compile(
    r"^\.?([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?\.)*[a-zA-Z0-9-]{1,63}$"
)


@dataclass(frozen=True)
class AuthConfig:
    users_file: Path
    nonce_secret_file: Path
    nonce_lifetime: int
    algorithms: tuple[str, ...]
    # Basic credentials are accepted inside TLS only (the TLS listener, or a TLS handshake
    # on the plain port); on plain text they stay refused.
    basic_over_tls: bool = False
    # A valid Basic password sent in clear to the TLS port locks its user until the
    # password is changed (it has crossed the wire readable).
    lock_on_plaintext: bool = False


@dataclass(frozen=True)
class TlsConfig:
    """The proxy's own certificate (PEM, with its chain) and key: read and checked by
    effects/tlsfiles.py, never here."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class AccessLogConfig:
    path: Path | None  # None: standard output
    format: str  # squid | json


# A user mistyping a password a few times is never slowed; a guesser is, within seconds.
# per_user counts guesses at a name from one address, so a stranger can't lock a user out
# who logs in from elsewhere; per_user_total, over all addresses, is ten times higher.
AUTH_FAILURES = ThrottleLimits(
    per_source=BucketSpec(burst=20, per_minute=10),
    per_user=BucketSpec(burst=10, per_minute=5),
    per_user_total=BucketSpec(burst=100, per_minute=50),
)


@dataclass(frozen=True)
class Limits:
    auth_failures: ThrottleLimits = AUTH_FAILURES
    max_header_bytes: int = 32 * 1024
    max_connections_per_source: int = 512
    # A client connection (keep-alive or tunnel) with no byte either way for this long is
    # closed; one that stops reading what it was sent is aborted as long after.
    idle_timeout: int = 600


@dataclass(frozen=True)
class UpstreamConfig:
    # The kernel retries a SYN that is dropped for about two minutes; partners get a 504 first.
    connect_timeout: float = 10.0
    # How long an upstream may take to start its response (status line and headers) once
    # the request has been sent: then 504. A body that stalls later meets idle_timeout.
    read_timeout: float = 60.0


@dataclass(frozen=True)
class JumpConfig:
    group: str = "proxyd-jump"
    home_base: Path = Path("/home")
    state_dir: Path = Path("/var/lib/proxyd/jump")
    # Root-owned, read by sshd (AuthorizedKeysFile): a partner's own home can't hold the
    # key, since the partner could replace anything in it.
    keys_dir: Path = Path("/etc/ssh/proxyd-jump-keys")
    audit_log: Path | None = None  # None: the config's one audit_log
    rsa_min_bits: int = 3072
    ports: tuple[int, ...] = (22,)
    gate: Path | None = None  # the proxyd executable sshd runs; default: this one
    permit_open_limit: int = 65536
    # What the proxy may know of jump accounts (names and expiries, for its metrics):
    # written 0644 by `proxyd jump`, since state_dir is root's alone.
    grants_file: Path = Path("/var/lib/proxyd/jump-grants.json")


@dataclass(frozen=True)
class Config:
    source: Path
    listen_host: str
    listen_port: int
    realm: str
    auth: AuthConfig
    hosts_file: Path | None
    dns_timeout: float
    policy: Policy
    admin_listen: tuple[str, int] | None = None
    public_address: tuple[str, int] | None = None  # what the PAC points clients at
    pac_domains: tuple[str, ...] = ()
    trusted_sources: tuple[TrustedSource, ...] = ()
    drain_timeout: float = 30.0  # seconds open tunnels get to finish on SIGTERM
    pid_file: Path | None = None
    limits: Limits = Limits()
    upstream: UpstreamConfig = UpstreamConfig()
    jump: JumpConfig = JumpConfig()
    access_log: AccessLogConfig = AccessLogConfig(None, "squid")
    tls_listen: tuple[str, int] | None = None  # the TLS listener (`https://host:port`)
    audit_log: Path = DEFAULT_AUDIT_LOG  # every grant change, JSON lines
    max_lifetime_days: int = 90  # grants.max_lifetime: the longest a grant may run
    last_use_file: Path | None = DEFAULT_LAST_USE_FILE  # grants.last_use_file (false: None)
    tls: TlsConfig | None = None  # also serves a TLS handshake on the plain port
    groups: Mapping[str, str] = field(default_factory=dict)  # group name -> its owner


def parse_hostport(text: str, *, allow_zero: bool) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port) (`addresses.split_hostport`, the one
    splitter), or ValueError with a message. `:port` means every address. `allow_zero`
    for a listener (port 0: any free port)."""
    try:
        if text.startswith(":") and text.count(":") == 1:
            return "", parse_port(text[1:], allow_zero=allow_zero)
        return split_hostport(text, allow_zero=allow_zero)
    except BadDestination as e:
        raise ValueError(f"expected host:port or [v6]:port, got {text!r}: {e}") from None


class _Checker:
    """Reads typed values out of the located document, recording errors instead of raising."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.errors: list[str] = []

    def error(self, path: KeyPath, message: str) -> None:
        self.errors.append(f"{self.doc.where(path)}: {message}")

    def mapping(self, value: Any, path: KeyPath, known: Set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {type(value).__name__}")
            return {}
        for key in value:
            if key not in known:
                self.error((*path, key), f"unknown key (known: {', '.join(sorted(known))})")
        return value

    def field(
        self,
        mapping: dict[str, Any],
        path: KeyPath,
        key: str,
        convert: Callable[[Any], T],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        if key not in mapping or mapping[key] is None:
            if required:
                self.error((*path, key), "required")
            return default
        try:
            return convert(mapping[key])
        except (TypeError, ValueError) as e:
            self.error((*path, key), str(e))
            return default

    def items(self, value: Any, path: KeyPath) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {type(value).__name__}")
            return []
        return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, not {value}")
        return value

    return convert


def _public_address(value: Any) -> tuple[str, int]:
    host, port = parse_hostport(_string(value), allow_zero=False)
    if not host or host in ("0.0.0.0", "::"):  # noqa: S104 (refusing it)
        raise ValueError("must be the host:port clients reach the proxy at")
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise ValueError(f"invalid host {host!r}")  # it is written into JavaScript
    return host.lower(), port


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def parse_expiry(value: Any) -> float:
    """A date (the first day it is no longer valid, from 00:00 UTC) or an ISO date-time."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, datetime.date):
        moment = datetime.datetime.combine(value, datetime.time())
    elif isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"must be a date like 2027-03-31, not {value!r}") from None
    else:
        raise ValueError(f"must be a date like 2027-03-31, not {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _unix_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise ValueError(f"must be a Unix group name, not {value!r}")
    return value


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1e6:
        raise ValueError(f"must be a positive number per minute, not {value!r}")
    return float(value)


def _seconds_up_to(most: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
            raise ValueError(f"must be a number of seconds in (0, {most:g}], not {value!r}")
        return float(value)

    return convert


_seconds = _seconds_up_to(3600)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def _realm(value: Any) -> str:
    # The realm is quoted into every challenge header: no quotes, backslashes or controls.
    if not isinstance(value, str) or not _REALM_RE.fullmatch(value):
        raise ValueError("must be 1-64 characters of letters, digits, space and ._@-")
    return value


def _network(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise ValueError(f"must be a CIDR string such as 10.0.0.0/8, not {text!r}")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"invalid CIDR {text!r}: {e}") from e


def _too_broad(networks: netaddr.IPSet) -> str | None:
    """Why `networks` is too broad for a rule's `to` (see BROADEST_DESTINATION), or None."""
    sizes = {4: 0, 6: 0}
    for cidr in networks.iter_cidrs():
        sizes[cidr.version] += cidr.size
    for version, prefix in BROADEST_DESTINATION.items():
        if sizes[version] > 2 ** ((32 if version == 4 else 128) - prefix):
            return (
                f"covers more addresses than one IPv{version} /{prefix}: as broad as 'any', "
                "an open proxy (set allow_broad: true on the rule to mean it)"
            )
    return None


def _auth_mode(value: Any) -> AuthMode:
    try:
        return AuthMode(value)
    except ValueError:
        raise ValueError(f"must be 'none' or 'required', not {value!r}") from None


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return convert


def _port_range(value: Any) -> PortRange:
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and value.count("-") == 1:
        try:
            low, high = (parse_port(p) for p in value.split("-"))
        except BadDestination as e:
            raise ValueError(f"invalid port range {value!r}: {e}") from None
    else:
        raise ValueError(f"must be a port number or an 'a-b' range, not {value!r}")
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"invalid port range {value!r} (1-65535, low <= high)")
    return PortRange(low, high)


class _Builder:
    def __init__(self, doc: Located, source: Path, now: float) -> None:
        self.c = _Checker(doc)
        self.source = source
        self.base = source.parent
        self.now = now  # what "within grants.max_lifetime" counts from

    def path(self, value: Any) -> Path:
        p = Path(_string(value))
        return p if p.is_absolute() else self.base / p

    def build(self) -> Config:
        c = self.c
        top = c.mapping(c.doc.value, (), TOP_LEVEL_KEYS)
        if not top and c.doc.value is None:
            c.error((), "the config file is empty")
        listen = c.field(
            top,
            (),
            "listen",
            lambda v: parse_hostport(_string(v), allow_zero=True),
            ("0.0.0.0", 3128),  # noqa: S104 (a proxy for partners listens publicly)
        )
        realm = c.field(top, (), "realm", _realm, "proxyd")
        auth = self.auth(top.get("auth"))
        tls_listen = c.field(
            top, (), "tls_listen", lambda v: parse_hostport(_string(v), allow_zero=True)
        )
        tls = self.tls(top.get("tls"), tls_listen, listen)
        audit_log = c.field(top, (), "audit_log", self.path, DEFAULT_AUDIT_LOG)
        grants = c.mapping(top.get("grants"), ("grants",), _known("grants"))
        max_lifetime = c.field(grants, ("grants",), "max_lifetime", _integer(1, 3650), 90)
        last_use_file: Path | None = None  # `last_use_file: false`: not kept
        if grants.get("last_use_file") is not False:
            last_use_file = c.field(
                grants, ("grants",), "last_use_file", self.path, DEFAULT_LAST_USE_FILE
            )
        dns = c.mapping(top.get("dns"), ("dns",), _known("dns"))
        hosts_file = c.field(dns, ("dns",), "hosts_file", self.path)
        dns_timeout = c.field(dns, ("dns",), "timeout", _seconds, 5.0)
        admin_listen = c.field(
            top, (), "admin_listen", lambda v: parse_hostport(_string(v), allow_zero=True)
        )
        access_log = self.access_log(top.get("access_log"))
        public_address = c.field(top, (), "public_address", _public_address)
        drain_timeout = c.field(top, (), "drain_timeout", _seconds, 30.0)
        pid_file = c.field(top, (), "pid_file", self.path)
        limits = self.limits(top.get("limits"))
        upstream = self.upstream(top.get("upstream"))
        jump = self.jump(top.get("jump"))
        pac = c.mapping(top.get("pac"), ("pac",), _known("pac"))
        pac_domains = []
        for i, domain in enumerate(c.items(pac.get("domains"), ("pac", "domains"))):
            if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
                c.error(("pac", "domains", i), f"not a domain such as .example.net: {domain!r}")
            else:
                pac_domains.append(domain.lower())
        zones = self.zones(top.get("zones"))
        trusted = self.trusted_sources(top.get("trusted_sources"), zones, max_lifetime or 90)
        groups = self.groups(top.get("groups"))
        rules = self.rules(top.get("rules"), zones, trusted, groups)
        if c.errors:
            raise ConfigError(c.errors)
        assert listen and realm and auth and dns_timeout
        return Config(
            source=self.source,
            listen_host=listen[0],
            listen_port=listen[1],
            realm=realm,
            auth=auth,
            hosts_file=hosts_file,
            dns_timeout=dns_timeout,
            policy=Policy(zones=zones, rules=tuple(rules)),
            admin_listen=admin_listen,
            access_log=access_log,
            public_address=public_address,
            pac_domains=tuple(pac_domains),
            trusted_sources=tuple(trusted.values()),
            drain_timeout=drain_timeout or 30.0,
            pid_file=pid_file,
            limits=limits,
            upstream=upstream,
            jump=jump,
            tls_listen=tls_listen,
            tls=tls,
            groups=groups,
            audit_log=audit_log or DEFAULT_AUDIT_LOG,
            max_lifetime_days=max_lifetime or 90,
            last_use_file=last_use_file,
        )

    def tls(
        self, value: Any, tls_listen: tuple[str, int] | None, listen: tuple[str, int] | None
    ) -> TlsConfig | None:
        c, path = self.c, ("tls",)
        if value is None:
            if tls_listen is not None:
                c.error(path, "tls_listen needs tls.certificate and tls.key")
            return None
        tls = c.mapping(value, path, _known(*path))
        certificate = c.field(tls, path, "certificate", self.path, required=True)
        key = c.field(tls, path, "key", self.path, required=True)
        if (
            tls_listen is not None
            and listen is not None
            and tls_listen[1] != 0
            and tls_listen[1] == listen[1]
        ):
            c.error(("tls_listen",), "must be another port than listen")
        if certificate is None or key is None:
            return None
        return TlsConfig(certificate, key)

    def jump(self, value: Any) -> JumpConfig:
        c, path, d = self.c, ("jump",), JumpConfig()
        section = c.mapping(value, path, _known(*path))
        group = c.field(section, path, "group", _unix_name, d.group)
        ports = []
        for i, item in enumerate(c.items(section.get("ports", list(d.ports)), (*path, "ports"))):
            try:
                ports.append(_integer(1, 65535)(item))
            except ValueError as e:
                c.error((*path, "ports", i), str(e))
        return JumpConfig(
            group=group or d.group,
            home_base=c.field(section, path, "home_base", self.path, d.home_base) or d.home_base,
            state_dir=c.field(section, path, "state_dir", self.path, d.state_dir) or d.state_dir,
            keys_dir=c.field(section, path, "keys_dir", self.path, d.keys_dir) or d.keys_dir,
            audit_log=c.field(section, path, "audit_log", self.path),
            rsa_min_bits=c.field(
                section, path, "rsa_min_bits", _integer(2048, 16384), d.rsa_min_bits
            )
            or d.rsa_min_bits,
            ports=tuple(ports),
            gate=c.field(section, path, "gate", self.path),
            permit_open_limit=c.field(
                section, path, "permit_open_limit", _integer(1, 1_000_000), d.permit_open_limit
            )
            or d.permit_open_limit,
            grants_file=c.field(section, path, "grants_file", self.path, d.grants_file)
            or d.grants_file,
        )

    def limits(self, value: Any) -> Limits:
        c, path, default = self.c, ("limits",), Limits()
        section = c.mapping(value, path, _known(*path))
        bucket_names = ("per_source", "per_user", "per_user_total")  # ThrottleLimits' order
        failures = c.mapping(
            section.get("auth_failures"), (*path, "auth_failures"), _known(*path, "auth_failures")
        )
        buckets = []
        for key in bucket_names:
            fallback: BucketSpec = getattr(default.auth_failures, key)
            where: KeyPath = (*path, "auth_failures", key)
            spec = c.mapping(failures.get(key), where, _known(*path, "auth_failures", key))
            burst = c.field(spec, where, "burst", _integer(1, 100_000), fallback.burst)
            rate = c.field(spec, where, "per_minute", _rate, fallback.per_minute)
            buckets.append(BucketSpec(burst or fallback.burst, rate or fallback.per_minute))
        header_bytes = c.field(
            section, path, "max_header_bytes", _integer(1024, 1 << 20), default.max_header_bytes
        )
        connections = c.field(
            section,
            path,
            "max_connections_per_source",
            _integer(1, 1_000_000),
            default.max_connections_per_source,
        )
        idle = c.field(section, path, "idle_timeout", _integer(1, 86400), default.idle_timeout)
        return Limits(
            ThrottleLimits(*buckets),
            header_bytes or default.max_header_bytes,
            connections or default.max_connections_per_source,
            idle or default.idle_timeout,
        )

    def upstream(self, value: Any) -> UpstreamConfig:
        c, path, default = self.c, ("upstream",), UpstreamConfig()
        section = c.mapping(value, path, _known(*path))
        connect = c.field(section, path, "connect_timeout", _seconds, default.connect_timeout)
        read = c.field(section, path, "read_timeout", _seconds, default.read_timeout)
        return UpstreamConfig(connect or default.connect_timeout, read or default.read_timeout)

    def access_log(self, value: Any) -> AccessLogConfig:
        c, path = self.c, ("access_log",)
        section = c.mapping(value, path, _known(*path))
        target = c.field(section, path, "path", _string, "-")
        fmt = c.field(section, path, "format", _choice("squid", "json"), "squid")
        file = None if target in (None, "-") else self.path(target)
        return AccessLogConfig(file, fmt or "squid")

    def auth(self, value: Any) -> AuthConfig | None:
        c, path = self.c, ("auth",)
        if value is None:
            c.error(path, "required (users_file and nonce_secret_file)")
            return None
        auth = c.mapping(value, path, _known(*path))
        users_file = c.field(auth, path, "users_file", self.path, required=True)
        secret_file = c.field(auth, path, "nonce_secret_file", self.path, required=True)
        lifetime = c.field(auth, path, "nonce_lifetime", _integer(1, 86400), 300)
        basic_over_tls = c.field(auth, path, "basic_over_tls", _boolean, False)
        lock_on_plaintext = c.field(auth, path, "lock_on_plaintext", _boolean, False)
        algorithms: list[str] = []
        for i, alg in enumerate(
            c.items(auth.get("algorithms", ["MD5", "SHA-256"]), (*path, "algorithms"))
        ):
            if alg not in ALGORITHMS:
                c.error((*path, "algorithms", i), f"unknown algorithm {alg!r} (MD5, SHA-256)")
            elif alg in algorithms:
                c.error((*path, "algorithms", i), f"{alg} listed twice")
            else:
                algorithms.append(alg)
        if auth.get("algorithms") == []:
            c.error((*path, "algorithms"), "at least one algorithm is needed")
        if users_file is None or secret_file is None or lifetime is None:
            return None
        return AuthConfig(
            users_file,
            secret_file,
            lifetime,
            tuple(algorithms),
            basic_over_tls=bool(basic_over_tls),
            lock_on_plaintext=bool(lock_on_plaintext),
        )

    def zones(self, value: Any) -> dict[str, netaddr.IPSet]:
        c, zones = self.c, {}
        if not isinstance(value, dict):
            if value is not None:
                c.error(("zones",), "must be a mapping of zone name to a list of CIDRs")
            return {}
        for name, cidrs in value.items():
            path: KeyPath = ("zones", name)
            if not _NAME_RE.fullmatch(name) or name in RESERVED_SELECTORS:
                c.error(path, "zone names are lower-case letters, digits, '_.-', not 'any'")
                continue
            items = c.items(cidrs, path)
            if not items:
                c.error(path, "a zone needs at least one CIDR")
            networks = netaddr.IPSet()
            for i, text in enumerate(items):
                try:
                    networks.add(str(_network(text)))
                except ValueError as e:
                    c.error((*path, i), str(e))
            zones[name] = networks
        return zones

    def trusted_sources(
        self, value: Any, zones: dict[str, netaddr.IPSet], max_lifetime: int
    ) -> dict[str, TrustedSource]:
        """Each entry expires within grants.max_lifetime (one that has expired already is
        valid and matches nothing: check-config says so)."""
        c, out = self.c, {}
        known = _known("trusted_sources")
        for i, item in enumerate(c.items(value, ("trusted_sources",))):
            path: KeyPath = ("trusted_sources", i)
            entry = c.mapping(item, path, known)
            name = c.field(entry, path, "name", _string, required=True)
            network = c.field(entry, path, "cidr", _network, required=True)
            owner = c.field(entry, path, "owner", _string, required=True)
            reason = c.field(entry, path, "reason", _string, required=True)
            expires = c.field(entry, path, "expires", parse_expiry, required=True)
            broad = c.field(entry, path, "allow_broad", _boolean, False)
            if name is not None and (name in zones or name in out or name == "any"):
                c.error((*path, "name"), f"name {name!r} is already a zone or trusted source")
            if network is not None and not broad:
                limit = BROADEST_TRUSTED[network.version]
                if network.prefixlen < limit:
                    c.error(
                        (*path, "cidr"),
                        f"{network} is broader than /{limit}: large segments are never "
                        "whitelisted (set allow_broad: true to override)",
                    )
            if expires is not None and expires > self.now:
                try:
                    checked_expiry(expires, reason or "", self.now, max_lifetime)
                except ValueError as e:
                    c.error((*path, "expires"), str(e))
            if name is None or network is None or owner is None or reason is None:
                continue
            if expires is None:
                continue
            out[name] = TrustedSource(name, netaddr.IPNetwork(str(network)), owner, reason, expires)
        return out

    def address_set(
        self,
        value: Any,
        path: KeyPath,
        zones: dict[str, netaddr.IPSet],
        allow_any: bool,
        trusted: dict[str, TrustedSource] | None = None,
        refuse_broad: bool = False,
    ) -> AddressSet:
        """`refuse_broad`: a destination set over BROADEST_DESTINATION is an error, at the
        item that is too broad by itself, else at the list whose union is."""
        c = self.c
        items = c.items(value, path)
        if not items and isinstance(value, list):
            c.error(path, "must name at least one zone, CIDR or 'any'")
        networks = netaddr.IPSet()
        labels: list[str] = []
        timed: list[TrustedSource] = []
        item_too_broad = False
        for i, item in enumerate(items):
            if item == "any":
                if not allow_any:
                    c.error((*path, i), "'any' destination would make an open proxy; name zones")
                    continue
                return AddressSet(("any",), None)
            if trusted is not None and isinstance(item, str) and item in trusted:
                timed.append(trusted[item])
                labels.append(item)
                continue
            if isinstance(item, str) and item in zones:
                member, shown = zones[item], f"zone {item!r}"
            elif isinstance(item, str) and re.fullmatch(
                r"[0-9a-fA-F:.]*[:./][0-9a-fA-F:./]*", item
            ):
                # Only something with '.', ':' or '/' is read as an address: `cafe` is a
                # mistyped zone name, not a malformed network.
                try:
                    member, shown = netaddr.IPSet([str(_network(item))]), item
                except ValueError as e:
                    c.error((*path, i), str(e))
                    continue
            else:
                c.error((*path, i), f"unknown zone {item!r}")
                continue
            if refuse_broad and (excess := _too_broad(member)):
                c.error((*path, i), f"{shown} {excess}")
                item_too_broad = True
            networks |= member
            labels.append(item)
        if refuse_broad and not item_too_broad and (excess := _too_broad(networks)):
            c.error(path, f"the union of these {excess}")
        return AddressSet(tuple(labels), networks, tuple(timed))

    def rules(
        self,
        value: Any,
        zones: dict[str, netaddr.IPSet],
        trusted: dict[str, TrustedSource],
        known_groups: Mapping[str, str],
    ) -> list[Rule]:
        c, rules, names = self.c, [], set()
        for i, item in enumerate(c.items(value, ("rules",))):
            path: KeyPath = ("rules", i)
            r = c.mapping(item, path, _known("rules"))
            if not r:
                if isinstance(item, dict):
                    c.error(path, "empty rule")
                continue
            name = c.field(r, path, "name", _string, required=True)
            if name is not None:
                path = ("rules", i)
                if name in names:
                    c.error((*path, "name"), f"duplicate rule name {name!r}")
                names.add(name)
            for key in ("from", "to", "ports"):
                if key not in r:
                    c.error((*path, key), "required")
            sources = self.address_set(
                r.get("from"), (*path, "from"), zones, allow_any=True, trusted=trusted
            )
            broad = c.field(r, path, "allow_broad", _boolean, False)
            destinations = self.address_set(
                r.get("to"), (*path, "to"), zones, allow_any=False, refuse_broad=not broad
            )
            ports: list[PortRange] = []
            port_items = c.items(r.get("ports"), (*path, "ports"))
            if "ports" in r and not port_items:
                c.error((*path, "ports"), "must list at least one port")
            for j, p in enumerate(port_items):
                try:
                    ports.append(_port_range(p))
                except ValueError as e:
                    c.error((*path, "ports", j), str(e))
            auth = c.field(r, path, "auth", _auth_mode, AuthMode.REQUIRED)
            users = self.names(r, path, "users", USERNAME_RE, "user name")
            groups = self.names(r, path, "groups", GROUP_RE, "group name")
            for group in sorted(groups - set(known_groups)):
                c.error((*path, "groups"), f"unknown group {group!r} (declare it in groups:)")
            if (users or groups) and auth is AuthMode.NONE:
                c.error((*path, "auth"), "a rule scoped to users or groups needs auth: required")
            methods = self.methods(r, path)
            rules.append(
                Rule(
                    name or f"rule{i}",
                    sources,
                    destinations,
                    tuple(ports),
                    auth or AuthMode.REQUIRED,
                    users=frozenset(users),
                    groups=frozenset(groups),
                    methods=methods,
                )
            )
        return rules

    def names(
        self, r: dict[str, Any], path: KeyPath, key: str, pattern: re.Pattern[str], what: str
    ) -> set[str]:
        """The names a rule's `users:` or `groups:` list holds."""
        path = (*path, key)
        found: set[str] = set()
        items = self.c.items(r.get(key), path)
        if key in r and not items:
            self.c.error(path, f"must name at least one {what}")
        for j, item in enumerate(items):
            if not isinstance(item, str) or not pattern.fullmatch(item):
                self.c.error((*path, j), f"not a {what}: {item!r}")
            else:
                found.add(item)
        return found

    def methods(self, r: dict[str, Any], path: KeyPath) -> frozenset[str] | None:
        if "methods" not in r:
            return None
        where: KeyPath = (*path, "methods")
        items = self.c.items(r.get("methods"), where)
        if not items:
            self.c.error(where, "must name at least one method")
        found = set()
        for j, item in enumerate(items):
            if not isinstance(item, str) or not _METHOD_RE.fullmatch(item):
                self.c.error((*where, j), f"not a method such as CONNECT or GET: {item!r}")
            else:
                found.add(item.upper())
        return frozenset(found)

    def groups(self, value: Any) -> dict[str, str]:
        """`groups:` name -> who answers for it (owner), the groups rules may name."""
        c = self.c
        if value is None:
            return {}
        if not isinstance(value, dict):
            c.error(("groups",), "must map group names to their owner")
            return {}
        out = {}
        for name, owner in value.items():
            if not isinstance(name, str) or not GROUP_RE.fullmatch(name):
                c.error(("groups",), f"not a group name ([a-z][a-z0-9_-]*): {name!r}")
            elif not isinstance(owner, str) or not owner.strip():
                c.error(("groups", name), "say who answers for the group (a non-empty text)")
            else:
                out[name] = owner
        return out


def parse(text: str, source: Path, now: float | None = None) -> Config:
    """Validate a config document. Raises ConfigError listing every problem. `now` is
    what grant lifetimes are counted from (default: the clock)."""
    when = time.time() if now is None else now
    return _Builder(yamlloc.load(text, str(source)), source, when).build()


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from e
    return parse(text, path)
