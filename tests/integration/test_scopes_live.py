"""Scopes and methods against a real proxyd and real curl (issue 17): a rule scoped to a
group lets its members through and nobody else, and `proxyd explain --user` agrees."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from harness import IO_TIMEOUT, ORIGIN_HOST, Origins, ProxydHandle, clean_env, curl, proxyd_bin

USERS = {"alice": "wonderland", "bob": "bobsecret1"}


def cli(proxy: ProxydHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(proxyd_bin()), *args], capture_output=True, text=True, env=clean_env(), timeout=30
    )


def explain(
    proxy: ProxydHandle, target: str, user: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`proxyd explain` for `user` from 127.0.0.1 to `target`."""
    config = str(proxy.config_path)
    return cli(
        proxy,
        "explain",
        "--config",
        config,
        "--from",
        "127.0.0.1",
        "--to",
        target,
        "--user",
        user,
        *extra,
    )


def scoped_proxy(proxyd_factory: Any, origins: Origins) -> ProxydHandle:
    http_port, https_port = origins.http[1], origins.https[1]
    proxy: ProxydHandle = proxyd_factory(
        users=USERS,
        groups={"acme": "ACME GmbH, jane@acme.example"},
        rules=[
            {
                "name": "acme-web",
                "from": ["any"],
                "to": ["testzone"],
                "ports": [http_port],
                "groups": ["acme"],
                "methods": ["GET", "HEAD"],
            },
            {
                "name": "acme-tunnels",
                "from": ["any"],
                "to": ["testzone"],
                "ports": [https_port],
                "groups": ["acme"],
                "methods": ["CONNECT"],
            },
        ],
    )
    done = cli(proxy, "users", "--config", str(proxy.config_path), "groups", "alice", "acme")
    assert done.returncode == 0, done.stderr
    return proxy


def fetch(proxy: ProxydHandle, user: str, url: str, env: dict[str, str], *extra: str) -> int:
    args = ["--proxy-digest", "-x", proxy.url_with(user, USERS[user]), *extra, url]
    transfers = curl(args, env).transfers
    if not transfers:
        return 0
    last = transfers[-1]
    return last.code or last.connect  # a refused CONNECT has only its CONNECT's status


def test_a_group_scoped_rule_admits_its_members_only(
    proxyd_factory: Any, origins: Origins, client_env: dict[str, str]
) -> None:
    proxy = scoped_proxy(proxyd_factory, origins)
    web = f"http://{ORIGIN_HOST}:{origins.http[1]}/scoped"
    deadline = time.monotonic() + IO_TIMEOUT  # the users file is re-read within a second
    while fetch(proxy, "alice", web, client_env) != 200:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.2)
    assert fetch(proxy, "bob", web, client_env) == 403
    tls = ["--cacert", str(origins.ca_pem)]
    assert (
        fetch(proxy, "alice", f"https://{ORIGIN_HOST}:{origins.https[1]}/", client_env, *tls) == 200
    )
    # methods: the web port takes no CONNECT, even for a member
    assert fetch(proxy, "alice", web, client_env, "-p") == 403
    target = f"{ORIGIN_HOST}:{origins.http[1]}"
    for user, code in (("alice", 0), ("bob", 1)):
        explained = explain(proxy, target, user, "--method", "GET")
        assert explained.returncode == code, explained.stdout + explained.stderr
    scope = explain(proxy, target, "alice").stdout
    assert "scoped rules for it: acme-web, acme-tunnels" in scope


def test_check_config_and_the_cli_refuse_unknown_groups(
    proxyd_factory: Any, origins: Origins
) -> None:
    proxy = scoped_proxy(proxyd_factory, origins)
    refused = cli(proxy, "users", "--config", str(proxy.config_path), "groups", "bob", "nope")
    assert refused.returncode == 1 and "unknown group(s) nope" in refused.stderr
    users_file = proxy.config_path.parent / "users.digest"
    users_file.write_text(users_file.read_text().replace(":acme", ":ghosts"))
    checked = cli(proxy, "check-config", str(proxy.config_path))
    assert checked.returncode == 1
    assert "user 'alice': group 'ghosts' is not declared in groups:" in checked.stdout
