"""Jump-host accounts, sans-IO: names, the key line, plans of steps, the sshd block, and the
forced command's grammar. The executors in `effects/accounts.py` carry the steps out.

A jump account is a real Unix user in the managed group: password locked, one key line in
`jump.keys_dir/NAME` (root's, read through sshd's `AuthorizedKeysFile`), expiring twice
over (the account's expiry date and the key's `expiry-time`). Where it may connect comes
from the proxy policy's rules for partners (`Policy.open_to_anyone`), restricted to
`jump.ports`: one policy, not a copy.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from proxy.core.config import JumpConfig
from proxy.core.policy import Policy

NAME_RE = re.compile(r"[a-z][a-z0-9-]{1,30}")
MARKER = "proxyd-jump"  # the GECOS field of every managed account
PROFILES = ("tunnel", "shell")
RESERVED = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "_apt",
        "admin",
        "administrator",
        "operator",
        "squid",
        "postfix",
        "ntp",
        "dnsmasq",
        "syslog",
        "ubuntu",
        "debian",
        "linux",
        "proxyd",
        "test",
        "guest",
        "user",
    ]
)
GATE_RE = re.compile(r"nc ([A-Za-z0-9._:\[\]-]{1,255}) ([0-9]{1,5})")


class JumpError(ValueError):
    """A jump command that must not go ahead; the message says why."""


@dataclass(frozen=True)
class Account:
    name: str
    profile: str
    expires: datetime.date  # the first day the account is refused
    note: str
    fingerprint: str
    key: str  # the public key line as validated


def check_name(name: str, existing_unmanaged: bool) -> str:
    if not NAME_RE.fullmatch(name):
        raise JumpError(
            f"invalid account name {name!r}: 2-31 of a-z, 0-9 and '-', starting with a letter"
        )
    if name in RESERVED:
        raise JumpError(f"{name!r} is a reserved name")
    if existing_unmanaged:
        raise JumpError(f"{name!r} is an existing account proxyd does not manage")
    return name


def check_expiry(text: str, today: datetime.date) -> datetime.date:
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise JumpError(f"not a date like 2027-03-31: {text!r}") from None
    if day <= today:
        raise JumpError(f"expiry {day} is not in the future")
    return day


def authorized_keys_line(account: Account, gate_command: str) -> str:
    """One line: the key, with every option that limits it. `restrict` first turns off
    all forwarding, pty, X11, agent and rc; we turn back on only what the profile needs."""
    options = ["restrict", "port-forwarding"]
    if account.profile == "shell":
        options.append("pty")
    else:
        options.append(f'command="{gate_command}"')
    options.append(f'expiry-time="{account.expires:%Y%m%d}Z"')
    return f"{','.join(options)} {account.key}\n"


# --- Plans: steps that executors carry out ------------------------------------------------


@dataclass(frozen=True)
class Step:
    action: str  # ensure_group, create_user, lock, write_keys, set_expiry, kill, delete, ...
    account: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<14} {self.account} {self.detail}".rstrip()


def plan_add(account: Account, config: JumpConfig, gate_command: str) -> list[Step]:
    home = config.home_base / account.name
    return [
        Step("ensure_group", account.name, config.group),
        Step("create_user", account.name, f"home={home} expires={account.expires}"),
        Step("lock_password", account.name),
        Step("write_keys", account.name, authorized_keys_line(account, gate_command).strip()),
        Step("write_state", account.name, f"profile={account.profile}"),
        Step("audit", account.name, "add"),
    ]


def plan_renew(account: Account, gate_command: str) -> list[Step]:
    return [
        Step("set_expiry", account.name, str(account.expires)),
        Step("write_keys", account.name, authorized_keys_line(account, gate_command).strip()),
        Step("write_state", account.name, f"expires={account.expires}"),
        Step("audit", account.name, "renew"),
    ]


def plan_remove(name: str, why: str = "remove") -> list[Step]:
    return [
        Step("lock_account", name),
        Step("kill_sessions", name),
        Step("delete_user", name),
        Step("delete_keys", name),
        Step("delete_state", name),
        Step("audit", name, why),
    ]


def plan_sweep(accounts: Iterable[Account], today: datetime.date) -> list[Step]:
    steps: list[Step] = []
    for account in sorted(accounts, key=lambda a: a.name):
        if account.expires <= today:
            steps += plan_remove(account.name, "sweep")
    return steps


# --- Where accounts may connect -----------------------------------------------------------


def permit_open(policy: Policy, ports: Iterable[int], limit: int) -> list[str]:
    """Every `address:port` a jump account may open with -J/-W, for sshd's PermitOpen,
    which takes literal addresses only (no CIDR): so we expand the partner zones."""
    entries: list[str] = []
    for rule in policy.jump_rules():
        networks = rule.destinations.networks
        if networks is None:
            continue
        rule_ports = [p for p in ports if any(p in r for r in rule.ports)]
        if not rule_ports:
            continue
        if networks.size * len(rule_ports) + len(entries) > limit:
            raise JumpError(
                f"rule {rule.name!r} expands to more than {limit} PermitOpen entries; "
                "narrow its zones or raise jump.permit_open_limit"
            )
        for address in networks:
            host = f"[{address}]" if address.version == 6 else str(address)
            entries.extend(f"{host}:{port}" for port in rule_ports)
    return sorted(set(entries), key=entries.index)


def sshd_config_block(group: str, permit: list[str], keys_dir: Path) -> str:
    """The block to add at the end of sshd_config (Match blocks run to the end of file)."""
    opens = " ".join(permit) if permit else "none"
    return f"""\
# proxyd jump accounts: key-only, no shell unless the shell profile, local forwarding
# (ssh -J / -W) only to the partner zones. Generated by `proxyd jump sshd-config`.
Match Group {group}
    AuthorizedKeysFile {keys_dir}/%u
    AuthenticationMethods publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    PubkeyAuthentication yes
    AllowTcpForwarding local
    PermitListen none
    GatewayPorts no
    AllowAgentForwarding no
    AllowStreamLocalForwarding no
    X11Forwarding no
    PermitTunnel no
    PermitUserRC no
    PermitOpen {opens}
"""


# --- The forced command -------------------------------------------------------------------


def parse_gate_command(original: str | None) -> tuple[str, int]:
    """`nc HOST PORT`, exactly; anything else is refused. Nothing here runs a shell."""
    if original is None:
        raise JumpError("no command: use ssh -o ProxyCommand='ssh USER@proxy nc %h %p' or -J")
    match = GATE_RE.fullmatch(original)
    if match is None:
        raise JumpError("only `nc HOST PORT` is allowed")
    port = int(match.group(2))
    if not 0 < port < 65536:
        raise JumpError(f"invalid port {port}")
    return match.group(1), port
