"""Jump-host accounts, sans-IO: names, the key line, plans of steps, the sshd block, and the
forced command's grammar. The executors in `effects/accounts.py` carry the steps out.

A jump account is a real Unix user in the managed group: password locked, one key line in
`jump.keys_dir/NAME` (root's, read through sshd's `AuthorizedKeysFile`), expiring twice
over (the account's expiry date and the key's `expiry-time`). Where it may connect comes
from the proxy policy's rules for partners (`Policy.open_to_anyone`), restricted to
`jump.ports`: one policy, not a copy.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from proxy.core.config import JumpConfig
from proxy.core.grants import GrantView, checked_expiry, state_of
from proxy.core.policy import Policy
from proxy.core.users import BadUserInput, parse_date

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
    note: str  # the reason
    fingerprint: str
    key: str  # the public key line as validated
    # Who the grant is for and who made it when (state files older than these lack them).
    owner: str = ""
    created_by: str = ""
    created_at: str = ""  # ISO 8601, UTC

    def grant_facts(self) -> tuple[tuple[str, str], ...]:
        """What an audit line says about this account (no key material but its hash)."""
        facts = {
            "owner": self.owner,
            "reason": self.note,
            "expires": self.expires.isoformat(),
            "fingerprint": self.fingerprint,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }
        return tuple((k, v) for k, v in facts.items() if v)


def account_view(account: Account, now: float, within: float) -> GrantView:
    """A jump account as a grant; its last use is not known (sshd records no login for
    a session without a terminal)."""
    expires = parse_date(account.expires.isoformat())
    return GrantView(
        "jump",
        account.name,
        state_of(expires, False, now, within),
        account.owner,
        account.note,
        expires,
        None,
        (("profile", account.profile), ("key", account.fingerprint)),
    )


def format_grants(accounts: Iterable[Account]) -> bytes:
    """What the proxy may know of jump accounts: each name and the first day refused.
    No key, reason or owner: the file is readable by all, the state is root's."""
    rows = {a.name: a.expires.isoformat() for a in sorted(accounts, key=lambda a: a.name)}
    return json.dumps(rows, indent=1).encode()


def parse_grants(data: bytes) -> dict[str, float]:
    """Name -> expiry instant; ValueError when `data` is not what format_grants wrote."""
    try:
        rows = json.loads(data)
        if not isinstance(rows, dict):
            raise ValueError("not a JSON object")
        return {str(name): parse_date(str(day)) for name, day in rows.items()}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, BadUserInput) as e:
        raise ValueError(f"not a jump grants file: {e}") from None


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


def check_expiry(text: str, now: float, max_days: int) -> datetime.date:
    """The first day an account is refused: a future date within grants.max_lifetime.
    A jump account always has one (its key's expiry-time needs a date)."""
    try:
        checked_expiry(parse_date(text), "", now, max_days)
    except BadUserInput:
        raise JumpError(f"not a date like 2027-03-31: {text!r}") from None
    except ValueError as e:
        raise JumpError(f"expiry {text}: {e}") from None
    return datetime.date.fromisoformat(text)


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
#
# A plan is the source of truth: each step carries every value its executor uses, so
# `--dry-run` prints exactly what a real run does (the executor reads nothing else).


@dataclass(frozen=True)
class Step:
    action: str  # ensure_group, create_user, lock_password, write_keys, ... (ACTIONS)
    account: str
    args: tuple[tuple[str, str], ...] = ()

    def arg(self, key: str) -> str:
        return dict(self.args)[key]

    def __str__(self) -> str:
        shown = " ".join(f"{key}={value}" for key, value in self.args)
        return f"{self.action:<14} {self.account} {shown}".rstrip()


ACTIONS = frozenset(
    {
        "audit",
        "create_user",
        "delete_keys",
        "delete_state",
        "delete_user",
        "ensure_group",
        "kill_sessions",
        "lock_account",
        "lock_password",
        "set_expiry",
        "write_keys",
        "write_state",
    }
)
# Steps that take an existing account away: each re-checks that proxyd manages it.
DESTRUCTIVE = frozenset({"lock_account", "kill_sessions", "delete_user"})


def _write_keys(account: Account, gate_command: str) -> Step:
    line = authorized_keys_line(account, gate_command).rstrip("\n")
    return Step("write_keys", account.name, (("line", line),))


def _write_state(account: Account) -> Step:
    """The whole record: what `jump list`, `renew` and `remove` read back later."""
    fields = {f.name: str(getattr(account, f.name)) for f in dataclasses.fields(account)}
    return Step("write_state", account.name, tuple(fields.items()))


def account_from_record(record: object) -> Account:
    """The inverse of _write_state's args, and what a state file holds; ValueError when
    it is not one whole record of strings."""
    names = {f.name for f in dataclasses.fields(Account)}
    if (
        not isinstance(record, dict)
        or not set(record) <= names
        or not all(isinstance(v, str) for v in record.values())
    ):
        raise ValueError("not a jump account record")
    get = record.get
    try:
        return Account(
            name=record["name"],
            profile=record["profile"],
            expires=datetime.date.fromisoformat(record["expires"]),
            note=record["note"],
            fingerprint=record["fingerprint"],
            key=record["key"],
            owner=get("owner", ""),
            created_by=get("created_by", ""),
            created_at=get("created_at", ""),
        )
    except KeyError as e:
        raise ValueError(f"a jump account record without {e}") from None


def _audit(action: str, account: Account) -> Step:
    return Step("audit", account.name, (("action", action), *account.grant_facts()))


def plan_add(account: Account, config: JumpConfig, gate_command: str) -> list[Step]:
    home = config.home_base / account.name
    return [
        Step("ensure_group", account.name, (("group", config.group),)),
        Step(
            "create_user",
            account.name,
            (("home", str(home)), ("group", config.group), ("expires", str(account.expires))),
        ),
        Step("lock_password", account.name),
        _write_keys(account, gate_command),
        _write_state(account),
        _audit("add", account),
    ]


def plan_renew(account: Account, gate_command: str) -> list[Step]:
    return [
        Step("set_expiry", account.name, (("expires", str(account.expires)),)),
        _write_keys(account, gate_command),
        _write_state(account),
        _audit("renew", account),
    ]


def plan_remove(account: Account, why: str = "remove") -> list[Step]:
    """`why`: remove, sweep (expired) or add-failed (the rollback of a failed add)."""
    name = account.name
    return [
        Step("lock_account", name),
        Step("kill_sessions", name),
        Step("delete_user", name),
        Step("delete_keys", name),
        Step("delete_state", name),
        _audit(why, account),
    ]


def plan_sweep(accounts: Iterable[Account], today: datetime.date) -> list[Step]:
    steps: list[Step] = []
    for account in sorted(accounts, key=lambda a: a.name):
        if account.expires <= today:
            steps += plan_remove(account, "sweep")
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
