"""Partner source allowlist: per-person static addresses that expire by the clock."""

from __future__ import annotations

import datetime
import time

import pytest
from harness import INTERNAL_SOURCE, Origins, ProxydHandle, curl

pytestmark = pytest.mark.timeout(120)

PARTNER_SOURCE = "127.0.0.20"


IN_30 = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()  # < max_lifetime


def entry(name: str, expires: object, cidr: str = f"{PARTNER_SOURCE}/32") -> dict[str, object]:
    return {
        "name": name,
        "cidr": cidr,
        "owner": f"{name}@partner.example",
        "reason": "project X load tests",
        "expires": expires,
    }


def trusted_rule(origins: Origins, *sources: str) -> dict[str, object]:
    return {
        "name": "trusted-partners",
        "from": list(sources),
        "to": ["testzone"],
        "ports": [origins.http[1]],
        "auth": "none",
    }


def fetch(proxyd: ProxydHandle, origins: Origins, env: dict[str, str], source: str) -> int:
    host, port = origins.http
    result = curl(["--interface", source, "-x", proxyd.url, f"http://{host}:{port}/x"], env)
    return result.transfers[0].code


def test_trusted_source_reaches_zone_without_auth_others_do_not(
    proxyd_factory, origins: Origins, client_env: dict[str, str]
) -> None:
    proxyd = proxyd_factory(
        trusted_sources=[entry("acme", IN_30)],
        extra_rules=[trusted_rule(origins, "acme")],
    )
    assert fetch(proxyd, origins, client_env, PARTNER_SOURCE) == 200
    assert fetch(proxyd, origins, client_env, "127.0.0.21") == 407  # falls to `partners`
    assert "trusted-partners" in proxyd.wait_for_log(r"TCP_MISS/200 .*rule=").string


def test_trusted_source_stops_matching_at_its_expiry_without_reload(
    proxyd_factory, origins: Origins, client_env: dict[str, str]
) -> None:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=4)
    proxyd = proxyd_factory(
        trusted_sources=[entry("shortlived", expires.isoformat())],
        extra_rules=[trusted_rule(origins, "shortlived")],
    )
    assert fetch(proxyd, origins, client_env, PARTNER_SOURCE) == 200
    # Asked again until it stops matching (bounded): it must stop at its expiry, not before.
    deadline = expires.timestamp() + 5
    while (status := fetch(proxyd, origins, client_env, PARTNER_SOURCE)) == 200:
        assert time.time() < deadline, "the trusted source still matched after its expiry"
        time.sleep(0.2)  # the clock is the input: ask again a moment later
    assert status == 407
    assert time.time() >= expires.timestamp()
    assert "reloaded" not in proxyd.log()


def test_internal_zone_rule_unaffected(
    proxyd_factory, origins: Origins, client_env: dict[str, str]
) -> None:
    proxyd = proxyd_factory(trusted_sources=[entry("acme", "2020-01-01")])
    assert fetch(proxyd, origins, client_env, INTERNAL_SOURCE) == 200
