"""Everything a serving proxy derives from one config, built whole and swapped as one.

A reload builds a new `Runtime` completely (or fails and changes nothing), then the
addon swaps one reference: no request ever sees half of an old and half of a new config.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from proxy.core.admission import Refuse
from proxy.core.config import Config
from proxy.core.digest import DigestVerifier, NonceCodec, ReplayWindow, challenges
from proxy.core.pac import PacFile, directive
from proxy.core.pac import generate as generate_pac
from proxy.core.policy import Policy
from proxy.effects.files import load_or_create_secret
from proxy.effects.resolver import Resolver, load_hosts
from proxy.effects.userfile import UserFile, create_users_file


@dataclass(frozen=True)
class ListenPorts:
    """The ports the proxy listens on, as bound (a config's port 0 is a free port)."""

    http: int
    tls: int | None = None


@dataclass
class Runtime:
    config: Config
    policy: Policy
    users: UserFile
    verifier: DigestVerifier
    resolver: Resolver
    ports: ListenPorts  # as bound once listening; a reload keeps them (restart-only)
    _pac: PacFile | None = None

    @property
    def tls_port(self) -> int | None:
        return self.ports.tls

    def new_nonce(self) -> str:
        return self.verifier.nonces.issue(time.time(), secrets.token_bytes(12))

    def pac(self, fallback_host: str) -> PacFile:
        """The PAC for clients; it points at `public_address`, or else at the host the
        client used to fetch it (so it is right behind NAT and load balancers too), and
        with a TLS listener at its port first."""
        if self._pac is None or self.config.public_address is None:
            public = self.config.public_address
            host, port = public if public else (fallback_host, self.ports.http)
            proxies = directive(host, port, self.ports.tls)
            pac_file = generate_pac(self.policy, proxies, self.config.pac_domains)
            if public is None:
                return pac_file
            self._pac = pac_file
        return self._pac

    def challenges(self, refusal: Refuse, tls: bool) -> list[str]:
        """A refusal's `Proxy-Authenticate` values: for a 407, one Digest challenge per
        algorithm, each with a fresh nonce, then Basic where it is accepted (inside TLS,
        when `auth.basic_over_tls` is on); none for any other refusal."""
        if refusal.status != 407:
            return []
        config = self.config
        values = challenges(config.realm, config.auth.algorithms, self.new_nonce, refusal.stale)
        if tls and config.auth.basic_over_tls:
            values.append(f'Basic realm="{config.realm}", charset="UTF-8"')
        return values


def build_runtime(
    config: Config, replay: ReplayWindow | None = None, first_start: bool = False
) -> Runtime:
    """Raises ConfigError/OSError/ValueError on anything unusable (a missing users file
    too: a reload never swaps every user away); has no other effect than creating a
    missing nonce secret and, at the first start, an empty users file."""
    secret = load_or_create_secret(config.auth.nonce_secret_file)
    if first_start:
        create_users_file(config.auth.users_file)
    users = UserFile(config.auth.users_file, config.realm)
    verifier = DigestVerifier(
        realm=config.realm,
        algorithms=config.auth.algorithms,
        nonces=NonceCodec(secret, config.auth.nonce_lifetime),
        lookup=users.lookup,
        replay=replay,
    )
    resolver = Resolver(load_hosts(config.hosts_file), config.dns_timeout)
    tls_port = config.tls_listen[1] if config.tls_listen is not None else None
    ports = ListenPorts(config.listen_port, tls_port)
    return Runtime(config, config.policy, users, verifier, resolver, ports)
