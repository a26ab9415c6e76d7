"""Name resolution for destinations: an optional hosts file first, then the system resolver.

The proxy resolves a name once, checks every address, and connects to a checked address,
so a second lookup (DNS rebinding) can't steer the connection elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

from proxy.core.addresses import IPAddress, Target, canonical_ip
from proxy.core.errors import ConfigError


class ResolveError(Exception):
    pass


def parse_hosts(text: str, filename: str) -> dict[str, tuple[IPAddress, ...]]:
    """/etc/hosts format: `ADDRESS NAME [ALIAS...]`, '#' comments; a name may repeat."""
    table: dict[str, list[IPAddress]] = {}
    errors = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            address = canonical_ip(ipaddress.ip_address(fields[0]))
        except ValueError:
            errors.append(f"{filename}:{number}: invalid address {fields[0]!r}")
            continue
        if len(fields) < 2:
            errors.append(f"{filename}:{number}: address without a name")
        for name in fields[1:]:
            addresses = table.setdefault(name.lower().rstrip("."), [])
            if address not in addresses:
                addresses.append(address)
    if errors:
        raise ConfigError(errors)
    return {name: tuple(addrs) for name, addrs in table.items()}


def load_hosts(path: Path | None) -> dict[str, tuple[IPAddress, ...]]:
    if path is None:
        return {}
    try:
        return parse_hosts(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read hosts file: {e}"]) from e


class Resolver:
    def __init__(self, hosts: dict[str, tuple[IPAddress, ...]], timeout: float) -> None:
        self.hosts = hosts
        self.timeout = timeout

    async def resolve(self, name: str, port: int) -> tuple[IPAddress, ...]:
        if name in self.hosts:
            return self.hosts[name]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), self.timeout
            )
        except TimeoutError as e:
            raise ResolveError(f"cannot resolve {name}: timed out") from e
        except OSError as e:
            raise ResolveError(f"cannot resolve {name}: {e.strerror or e}") from e
        out: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = canonical_ip(ipaddress.ip_address(sockaddr[0]))
            if address not in out:
                out.append(address)
        if not out:
            raise ResolveError(f"cannot resolve {name}: no address")
        return tuple(out)


def addresses_now(target: Target, hosts_file: Path | None, timeout: float) -> tuple[IPAddress, ...]:
    """The addresses a command-line check judges for `target` (`proxyd explain`, the jump
    gate): the literal itself, or the name resolved once, hosts file first, as the proxy
    resolves it. `ResolveError` when the name has none."""
    if target.literal is not None:
        return (target.literal,)
    assert target.name is not None
    return asyncio.run(Resolver(load_hosts(hosts_file), timeout).resolve(target.name, target.port))
