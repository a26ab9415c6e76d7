"""`proxyd check-config` and `proxyd explain`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import time

from proxy.core import config
from proxy.core.addresses import canonical_ip, format_hostport, parse_target, split_hostport
from proxy.core.digest import UserSecrets
from proxy.core.errors import BadDestination, ConfigError
from proxy.core.pac import directive as pac_directive
from proxy.core.pac import generate as generate_pac
from proxy.core.policy import Who
from proxy.effects import tlsfiles
from proxy.effects.resolver import ResolveError, addresses_now, load_hosts
from proxy.effects.userfile import UserFile, read_users


def run_check(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.file)
        load_hosts(cfg.hosts_file)
        if cfg.tls is not None:
            tlsfiles.load(cfg.tls, time.time())  # what a start or a reload would refuse
        users_file = cfg.auth.users_file
        if os.path.lexists(users_file):
            UserFile(users_file, cfg.realm)  # what a start or a reload would refuse
            check_user_groups(cfg, read_users(users_file))
        else:
            print(
                f"note: users_file {users_file} does not exist: `proxyd serve` creates it "
                "empty at its first start; a reload to this config is refused until it exists"
            )
    except ConfigError as e:
        for problem in e.problems:
            print(problem)
        print(f"{args.file}: {len(e.problems)} error(s)")
        return 1
    now = time.time()
    for source in cfg.trusted_sources:
        if source.expires <= now:
            print(f"note: trusted source {source.name!r} ({source.owner}) has expired")
    print(f"{args.file}: OK ({len(cfg.policy.zones)} zones, {len(cfg.policy.rules)} rules)")
    return 0


def check_user_groups(cfg: config.Config, users: dict[str, UserSecrets]) -> None:
    """Every group a user is in is declared in the config."""
    problems = [
        f"{cfg.auth.users_file}: user {user.name!r}: group {group!r} is not declared in groups:"
        for user in sorted(users.values(), key=lambda u: u.name)
        for group in user.groups
        if group not in cfg.groups
    ]
    if problems:
        raise ConfigError(problems)


def run_reload(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)  # refuse to signal with a config that won't load
    UserFile(cfg.auth.users_file, cfg.realm)  # nor with users the proxy would refuse
    if cfg.pid_file is None:
        raise ConfigError(
            [f"{args.config}: no pid_file set; use `systemctl reload proxyd` or kill -HUP"]
        )
    try:
        pid = int(cfg.pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as e:
        raise ConfigError([f"{cfg.pid_file}: cannot signal the proxy: {e}"]) from e
    print(f"sent SIGHUP to proxyd (pid {pid})")
    return 0


def run_pac(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    host, port = cfg.public_address or (cfg.listen_host, cfg.listen_port)
    address = format_hostport(host, port)
    if cfg.public_address is None:
        print(
            f"proxyd: no public_address in {args.config}; the PAC points at {address}. "
            "The served PAC points at the address each client used.",
            file=sys.stderr,
        )
    tls_port = cfg.tls_listen[1] if cfg.tls_listen is not None else None
    proxies = pac_directive(host, port, tls_port)
    sys.stdout.write(generate_pac(cfg.policy, proxies, cfg.pac_domains).text)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    try:
        source = canonical_ip(ipaddress.ip_address(args.source))
    except ValueError:
        raise BadDestination(f"--from: not an IP address: {args.source!r}") from None
    if ":" not in args.target:
        raise BadDestination(f"--to: expected HOST:PORT, got {args.target!r}")
    target = parse_target(*split_hostport(args.target))
    try:
        addresses = addresses_now(target, cfg.hosts_file, cfg.dns_timeout)
    except ResolveError as e:
        print(f"deny: {e}")
        return 1
    if target.name is not None:
        print(f"{target.name} resolves to {', '.join(map(str, addresses))}")
    who: Who | None = None
    if args.user:
        users = read_users(cfg.auth.users_file)
        user = users.get(args.user)
        if user is None or user.realm != cfg.realm:
            print(f"note: no user {args.user!r} in realm {cfg.realm!r}; treated as anonymous")
        else:
            who = Who(user.name, frozenset(user.groups))
            groups = ", ".join(user.groups) or "none"
            scope = [r.name for r in cfg.policy.rules if r.scoped and r.in_scope(who)]
            print(
                f"user {user.name}: groups {groups}; scoped rules for it: "
                f"{', '.join(scope) or 'none'}"
            )
    method = args.method.upper()
    for address in addresses:
        rule = cfg.policy.first_match(source, address, target.port, None, method, who)
        where = format_hostport(address, target.port)
        if rule is None:
            print(f"  {source} -> {where}: no rule matches")
        else:
            print(f"  {source} -> {where}: rule {rule.name!r} (auth: {rule.auth.value})")
    decision = cfg.policy.decide(source, addresses, target.port, who, None, method)
    print(f"{decision.verdict.value}: {decision.reason}")
    return 0 if decision.allowed else 1
