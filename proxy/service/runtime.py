"""Everything a serving proxy derives from one config, built whole and swapped as one.

A reload builds a new `Runtime` completely (or fails and changes nothing), then the
addon swaps one reference: no request ever sees half of an old and half of a new config.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from proxy.core.addresses import format_hostport
from proxy.core.config import Config
from proxy.core.digest import DigestVerifier, NonceCodec, ReplayWindow, challenges
from proxy.core.pac import PacFile
from proxy.core.pac import generate as generate_pac
from proxy.core.policy import Policy
from proxy.effects.files import load_or_create_secret
from proxy.effects.resolver import Resolver, load_hosts
from proxy.effects.userfile import UserFile, create_users_file


@dataclass
class Runtime:
    config: Config
    policy: Policy
    users: UserFile
    verifier: DigestVerifier
    resolver: Resolver
    _pac: PacFile | None = None

    def new_nonce(self) -> str:
        return self.verifier.nonces.issue(time.time(), secrets.token_bytes(12))

    def pac(self, fallback_address: str) -> PacFile:
        """The PAC for clients; it points at `public_address`, or else at the address the
        client used to fetch it (so it is right behind NAT and load balancers too)."""
        if self._pac is None or self.config.public_address is None:
            public = self.config.public_address
            address = format_hostport(*public) if public else fallback_address
            pac_file = generate_pac(self.policy, address, self.config.pac_domains)
            if public is None:
                return pac_file
            self._pac = pac_file
        return self._pac

    def challenges(self, stale: bool) -> list[str]:
        """`Proxy-Authenticate` values: one per algorithm, each with a fresh nonce."""
        return challenges(self.config.realm, self.config.auth.algorithms, self.new_nonce, stale)


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
    return Runtime(config, config.policy, users, verifier, resolver)
