"""proxy.pac: served by the real proxy, evaluated by pacparser, checked against the policy.

- The listener serves `/proxy.pac` and `/wpad.dat` to requests addressed to the proxy
  itself, without auth, with the PAC content type, an ETag and cache headers; anything
  else for the proxy itself is a local 404, never forwarded.
- pacparser (the PyPI wheel, a SpiderMonkey PAC engine) evaluates the served PAC: for
  addresses drawn in and around every zone of a richer config (hypothesis), the PAC's
  PROXY/DIRECT choice equals proxyd's own decision for a source outside every zone.
  pacparser has `isInNetEx` with IPv6 prefixes (checked below), so IPv6 is tested too.
- DNS never leaves the test: after the served PAC, `dnsResolve`/`dnsResolveEx` are replaced
  by a stub that answers from a table (and throws for a name that must not be resolved).
- Config values written into the PAC's JavaScript can't inject code.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    ORIGIN_HOST,
    ProxydHandle,
    RawConnection,
    RawResponse,
    clean_env,
    proxyd_bin,
    raw_proxy_request,
    require_tool,
)

from proxy.core import config as proxyd_config
from proxy.core.addresses import canonical_ip
from proxy.core.policy import Who

PAC_TYPE = "application/x-ns-proxy-autoconfig"
PAC_PATHS = ("/proxy.pac", "/wpad.dat")
# A partner's browser: outside every zone of every config in this module.
OUTSIDE_SOURCE = ipaddress.ip_address("100.64.0.1")


# --------------------------------------------------------------------------- helpers


def fetch(
    proxy: ProxydHandle,
    path: str = "/proxy.pac",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str | None = None,
) -> RawResponse:
    """An origin-form request to the proxy itself, as a browser fetches a PAC URL."""
    return raw_proxy_request(
        proxy, method, path, headers or {}, host=host or f"{proxy.host}:{proxy.port}"
    )


def access_lines(proxy: ProxydHandle, needle: str) -> list[str]:
    """Access-log lines (Squid format: `... TCP_x/status bytes METHOD URL ...`) naming `needle`."""
    return [
        line
        for line in proxy.log().splitlines()
        if re.search(r" \S+/\d{3} \d+ [A-Z]+ ", line) and needle in line
    ]


def require_module(name: str) -> Any:
    """An importable test dependency (missing: fail under CI=true, else skip)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return require_tool(f"{name} (Python module)")


# The engine is one global in pacparser: one PAC at a time, always cleaned up.
_DNS_STUB = """
var __proxydTestDns = {};
dnsResolve = function (host) {
  if (__proxydTestDns.hasOwnProperty(host)) return __proxydTestDns[host];
  throw "unexpected DNS lookup of " + host;
};
dnsResolveEx = dnsResolve;
"""


class Pac:
    """The served PAC loaded into pacparser, with the DNS stub above."""

    def __init__(self, pacparser: Any, text: str):
        self.pp = pacparser
        self.text = text

    def dns(self, table: dict[str, str | None]) -> None:
        """Replace the stub's answers (`None`: the name does not resolve)."""
        self.pp.parse_pac_string(f"__proxydTestDns = {json.dumps(table)};")

    def find(self, url: str, host: str) -> str:
        return str(self.pp.find_proxy(url, host)).strip()


@pytest.fixture
def pac_engine() -> Iterator[Any]:
    pacparser = require_module("pacparser")
    yield pacparser
    pacparser.cleanup()


def load_pac(pacparser: Any, text: str) -> Pac:
    pacparser.init()
    pacparser.enable_microsoft_extensions()  # dnsResolveEx, as Chromium has it
    pacparser.parse_pac_string(text)
    pacparser.parse_pac_string(_DNS_STUB)
    return Pac(pacparser, text)


def served_pac(proxy: ProxydHandle) -> str:
    response = fetch(proxy)
    assert response.status == 200, response
    return response.text


def proxyd_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(proxyd_bin()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(cwd),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- served PAC


@pytest.mark.parametrize("path", PAC_PATHS)
def test_pac_served_without_auth_with_type_etag_and_cache_headers(
    proxyd_factory: Any, path: str
) -> None:
    proxy = proxyd_factory()
    response = fetch(proxy, path)
    assert response.status == 200, response
    assert response.header("Proxy-Authenticate") is None
    content_type = response.header("Content-Type") or ""
    assert content_type.split(";")[0].strip().lower() == PAC_TYPE
    etag = response.header("ETag") or ""
    assert re.fullmatch(r'"[\x21\x23-\x7e]+"', etag), etag  # a strong entity-tag
    cache = (response.header("Cache-Control") or "").lower()
    assert re.search(r"max-age=\d+", cache), cache
    assert int(response.header("Content-Length") or -1) == len(response.body)
    assert "function FindProxyForURL(url, host)" in response.text
    # No public_address: the PAC points at the address the client used.
    assert f'"PROXY {proxy.host}:{proxy.port}"' in response.text
    proxy.wait_for_log(rf"/200 \d+ GET \S*{re.escape(path)} ")


def test_both_pac_paths_and_absolute_form_serve_the_same_pac(proxyd_factory: Any) -> None:
    proxy = proxyd_factory()
    bodies = {fetch(proxy, path).body for path in PAC_PATHS}
    absolute = raw_proxy_request(proxy, "GET", f"{proxy.url}/proxy.pac")
    assert absolute.status == 200
    bodies.add(absolute.body)
    with_query = fetch(proxy, "/proxy.pac?refresh=1")
    assert with_query.status == 200
    bodies.add(with_query.body)
    assert len(bodies) == 1


def test_if_none_match_gives_304_and_the_connection_stays_usable(proxyd_factory: Any) -> None:
    proxy = proxyd_factory()
    first = fetch(proxy)
    etag = first.header("ETag")
    assert etag
    host = f"{proxy.host}:{proxy.port}"
    with RawConnection(proxy.address) as conn:
        cached = conn.request("GET", "/proxy.pac", {"If-None-Match": etag}, host=host)
        assert cached.status == 304, cached
        assert cached.body == b""
        assert cached.header("ETag") == etag
        assert cached.header("Cache-Control") == first.header("Cache-Control")
        # Framing intact: the next request on the keep-alive connection reads cleanly.
        other = conn.request("GET", "/proxy.pac", {"If-None-Match": '"nope"'}, host=host)
        assert other.status == 200
        assert other.body == first.body


@pytest.mark.parametrize(
    "condition",
    [
        pytest.param(
            "*",
        ),
        pytest.param(
            '"other", {etag}',
        ),
        pytest.param(
            "W/{etag}",
        ),
    ],
)
def test_if_none_match_forms_of_rfc_9110(proxyd_factory: Any, condition: str) -> None:
    proxy = proxyd_factory()
    etag = fetch(proxy).header("ETag")
    assert etag
    response = fetch(proxy, headers={"If-None-Match": condition.format(etag=etag)})
    assert response.status == 304


def test_head_gives_the_same_headers(proxyd_factory: Any) -> None:
    proxy = proxyd_factory()
    get = fetch(proxy)
    head = fetch(proxy, method="HEAD")
    assert head.status == 200
    for name in ("Content-Type", "ETag", "Cache-Control", "Content-Length"):
        assert head.header(name) == get.header(name), name
    lines = access_lines(proxy, "HEAD ")
    assert len(lines) == 1 and "/200 " in lines[0], lines


def test_head_sends_no_body_on_a_keep_alive_connection(proxyd_factory: Any) -> None:
    proxy = proxyd_factory()
    get = fetch(proxy)
    host = f"{proxy.host}:{proxy.port}"
    with RawConnection(proxy.address) as conn:
        head = conn.request("HEAD", "/proxy.pac", host=host)
        assert head.status == 200
        # A body after the HEAD answer would be read as the start of the next response.
        again = conn.request("GET", "/wpad.dat", host=host)
        assert again.status == 200
        assert again.body == get.body


@pytest.mark.parametrize("path", ["/", "/other", "/proxy.pac/x", "/proxy.pacx", "/wpad.da"])
def test_other_paths_for_the_proxy_itself_are_404_and_never_forwarded(
    proxyd_factory: Any, path: str
) -> None:
    proxy = proxyd_factory()
    response = fetch(proxy, path)
    assert response.status == 404, response  # not 407 (auth) nor 403 (policy): local
    assert response.header("Proxy-Authenticate") is None
    absolute = raw_proxy_request(proxy, "GET", f"{proxy.url}{path}")
    assert absolute.status == 404, absolute
    proxy.wait_for_log(rf"/404 \d+ GET \S*:{proxy.port}{re.escape(path)} ")
    # Two requests, two local lines: a forwarded one would loop back in as a third.
    lines = access_lines(proxy, f":{proxy.port}{path} ")
    assert len(lines) == 2, lines
    assert all("/404 " in line for line in lines), lines


def test_pac_fetched_by_a_name_for_the_proxy_is_served_not_forwarded(proxyd_factory: Any) -> None:
    """No public_address: the PAC is served at whatever address the client used, a name
    too (`proxy.test` resolves to the proxy's address in the test hosts file)."""
    proxy = proxyd_factory()
    name = f"proxy.test:{proxy.port}"
    for response in (
        fetch(proxy, host=name),
        raw_proxy_request(proxy, "GET", f"http://{name}/proxy.pac"),
    ):
        assert response.status == 200, response
        assert response.header("Proxy-Authenticate") is None
        assert f'"PROXY {name}"' in response.text
    assert len(access_lines(proxy, f"{name}/proxy.pac ")) == 2


def test_non_get_pac_requests_are_not_served_nor_forwarded(proxyd_factory: Any) -> None:
    proxy = proxyd_factory()
    response = fetch(proxy, method="POST")
    assert response.status in (404, 405), response
    assert PAC_TYPE not in (response.header("Content-Type") or "")
    assert len(access_lines(proxy, "/proxy.pac ")) == 1


def test_pac_path_on_another_host_is_a_normal_proxied_request(
    proxyd_factory: Any, origins: Any
) -> None:
    """Only the proxy itself serves the PAC: for an origin it is an ordinary request."""
    proxy = proxyd_factory()
    port = origins.http[1]
    response = raw_proxy_request(proxy, "GET", f"http://{ORIGIN_HOST}:{port}/proxy.pac")
    assert response.status == 407
    authed = raw_proxy_request(
        proxy, "GET", f"http://{ORIGIN_HOST}:{port}/proxy.pac", auth=("alice", "wonderland")
    )
    assert authed.status == 200
    assert authed.text == "origin-http /proxy.pac"


def test_public_address_pac_equals_cli_output_and_is_served_there(
    proxyd_factory: Any,
) -> None:
    proxy = proxyd_factory(
        public_address="Proxy.Example.NET:3128", pac={"domains": [".preprod.example"]}
    )
    served = fetch(proxy)
    assert served.status == 200
    assert '"PROXY proxy.example.net:3128"' in served.text
    printed = proxyd_cli("pac", "--config", str(proxy.config_path), cwd=proxy.config_path.parent)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == served.text
    # Absolute-form to the public address: addressed to the proxy itself, so served.
    public = raw_proxy_request(proxy, "GET", "http://proxy.example.net:3128/wpad.dat")
    assert public.status == 200
    assert public.body == served.body
    assert public.header("ETag") == served.header("ETag")


def test_ipv6_public_address_is_bracketed_in_the_served_pac(proxyd_factory: Any) -> None:
    proxy = proxyd_factory(public_address="[2001:db8::1]:3128")
    text = served_pac(proxy)
    printed = proxyd_cli("pac", "--config", str(proxy.config_path), cwd=proxy.config_path.parent)
    assert printed.returncode == 0, printed.stderr
    assert '"PROXY [2001:db8::1]:3128"' in printed.stdout
    assert '"PROXY [2001:db8::1]:3128"' in text


def test_etag_follows_the_pac_text(proxyd_factory: Any) -> None:
    """Different PACs (another proxy address) never share an ETag."""
    proxy = proxyd_factory()
    by_ip = fetch(proxy)
    by_public = raw_proxy_request(proxy, "GET", f"{proxy.url}/proxy.pac")
    assert by_ip.body == by_public.body and by_ip.header("ETag") == by_public.header("ETag")
    other = proxyd_factory(public_address="proxy.example.net:3128")
    assert fetch(other).header("ETag") != by_ip.header("ETag")


# --------------------------------------------------------------------------- hostile values


@pytest.mark.parametrize(
    "config_key, value",
    [
        ("public_address", 'x";alert(1);//:80'),
        ("public_address", "x';alert(1);//:80"),
        ("public_address", "a b:80"),
        ("public_address", "x\\u0022:80"),
        ("public_address", "x\n:80"),
        ("public_address", "x</script>:80"),
        ("pac", {"domains": ['.a";alert(1);//']}),
        ("pac", {"domains": [".a\\"]}),
        ("pac", {"domains": [".a b"]}),
        ("pac", {"domains": [".a\u2028b"]}),
    ],
)
def test_check_config_refuses_values_that_would_reach_the_javascript(
    tmp_path: Path, config_key: str, value: Any
) -> None:
    path = tmp_path / "config.yaml"
    base = {
        "listen": "127.0.0.1:0",
        "auth": {"users_file": "users.digest", "nonce_secret_file": "nonce.secret"},
        "zones": {"testzone": [f"{ORIGIN_HOST}/32"]},
        "rules": [{"name": "partners", "from": ["any"], "to": ["testzone"], "ports": [80]}],
    }
    path.write_text(yaml.safe_dump(base))
    ok = proxyd_cli("check-config", str(path), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    path.write_text(yaml.safe_dump({**base, config_key: value}))
    refused = proxyd_cli("check-config", str(path), cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert config_key in refused.stdout, refused.stdout
    pac = proxyd_cli("pac", "--config", str(path), cwd=tmp_path)
    assert pac.returncode != 0
    assert "alert" not in pac.stdout


@pytest.mark.parametrize(
    "host",
    [
        '127.0.0.1:{port}";FindProxyForURL=function(){{return "PROXY evil:1"}};//',
        "127.0.0.1:{port}\\",
        "127.0.0.1:{port} x",
        "127.0.0.1:{port}%22",
    ],
)
def test_hostile_host_header_cannot_inject_into_the_served_pac(
    proxyd_factory: Any, host: str
) -> None:
    """Without public_address the PAC names the Host the client used: a Host that is not
    a host[:port] (quotes, backslashes, spaces, escapes) is refused before any PAC is made
    from it (the engine's 400), so nothing of it can reach the script."""
    proxy = proxyd_factory()
    response = fetch(proxy, host=host.format(port=proxy.port))
    assert response.status == 400, response
    assert "FindProxyForURL" not in response.text and "evil" not in response.text


# --------------------------------------------------------------------------- pacparser


def test_pacparser_supports_ipv6_prefixes(pac_engine: Any) -> None:
    """The premise of the IPv6 cases: pacparser's isInNetEx takes IPv6 CIDRs."""
    pac = load_pac(
        pac_engine,
        "function FindProxyForURL(url, host) {"
        ' return [typeof isInNetEx, isInNetEx(host, "2001:db8:abcd::/48")].join(" "); }',
    )
    assert pac.find("http://[2001:db8:abcd::1]/", "2001:db8:abcd::1") == "function true"
    assert pac.find("http://[2001:db8:abce::1]/", "2001:db8:abce::1") == "function false"


def test_pac_domains_go_through_the_proxy_without_dns(proxyd_factory: Any, pac_engine: Any) -> None:
    proxy = proxyd_factory(
        public_address="proxy.example.net:3128",
        pac={"domains": [".preprod.example", ".Intra.Example.COM"]},
    )
    pac = load_pac(pac_engine, served_pac(proxy))
    via = "PROXY proxy.example.net:3128"
    # The stub throws on any lookup: PROXY here means no DNS was asked.
    for host in (
        "preprod.example",
        "app.preprod.example",
        "a.b.preprod.example",
        "APP.PreProd.Example",
        "intra.example.com",
        "x.intra.example.com",
    ):
        for url in (f"http://{host}/", f"https://{host}/", f"http://{host}:8080/x"):
            assert pac.find(url, host) == via, (url, host)
    pac.dns({"xpreprod.example": None, "preprod.example.org": "192.0.2.1"})
    assert pac.find("http://xpreprod.example/", "xpreprod.example") == "DIRECT"
    assert pac.find("http://preprod.example.org/", "preprod.example.org") == "DIRECT"


def test_pac_domain_without_leading_dot_matches_on_label_boundary(
    proxyd_factory: Any, pac_engine: Any
) -> None:
    proxy = proxyd_factory(
        public_address="proxy.example.net:3128", pac={"domains": ["proxied.test"]}
    )
    pac = load_pac(pac_engine, served_pac(proxy))
    pac.dns({"notproxied.test": None})
    assert pac.find("http://proxied.test/", "proxied.test") == "PROXY proxy.example.net:3128"
    assert pac.find("http://notproxied.test/", "notproxied.test") == "DIRECT"


def test_unresolvable_names_are_direct(proxyd_factory: Any, pac_engine: Any) -> None:
    proxy = proxyd_factory()
    pac = load_pac(pac_engine, served_pac(proxy))
    pac.dns({"nowhere.test": None, "empty.test": ""})
    assert pac.find("http://nowhere.test/", "nowhere.test") == "DIRECT"
    assert pac.find("http://empty.test/", "empty.test") == "DIRECT"


# --------------------------------------------------------------------------- PAC == policy


RICH_ZONES = {
    "wide": ["10.20.16.0/20"],
    "mid": ["192.168.2.0/23"],
    "single": ["203.0.113.7/32"],
    "v6net": ["2001:db8:abcd::/48"],
    "partnersrc": ["198.51.100.0/24", "2001:db8:5::/64"],
    "closed": ["172.16.0.0/16", "2001:db8:c::/48"],
}
RICH_RULES = [
    # From one zone only: a partner's browser can't use it, so the PAC must ignore it,
    # including its wider port list on `wide`.
    {
        "name": "lab-only",
        "from": ["partnersrc"],
        "to": ["closed", "wide"],
        "ports": ["1-65535"],
        "auth": "none",
    },
    {"name": "web", "from": ["any"], "to": ["wide", "v6net"], "ports": [80, 443, "8000-8100"]},
    {
        "name": "admin",
        "from": ["any"],
        "to": ["mid", "single", "2001:db8:ffff::5/128"],
        "ports": [22, "9000-9001"],
    },
    {"name": "closed-tls", "from": ["any"], "to": ["closed"], "ports": [8443], "auth": "none"},
]
EDGE_PORTS = [1, 21, 22, 23, 79, 80, 81, 442, 443, 444, 7999, 8000, 8001, 8050, 8099, 8100]
EDGE_PORTS += [8101, 8442, 8443, 8444, 8999, 9000, 9001, 9002, 65535]
PUBLIC = "proxy.example.net:3128"


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = [ipaddress.ip_network(c) for cidrs in RICH_ZONES.values() for c in cidrs]
    for rule in RICH_RULES:
        nets += [ipaddress.ip_network(t) for t in rule["to"] if t[0].isdigit()]
    return nets


def _public_targets(policy: Any) -> list[tuple[list[Any], list[tuple[int, int]]]]:
    """(destination networks, port ranges) of each from-any rule, read from the policy."""
    out = []
    for rule in policy.rules:
        if rule.sources.networks is not None:
            continue
        nets = [ipaddress.ip_network(str(c)) for c in rule.destinations.networks.iter_cidrs()]
        out.append((nets, [(r.low, r.high) for r in rule.ports]))
    return out


def test_pac_choice_equals_the_policy_for_a_partner_browser(
    proxyd_factory: Any, pac_engine: Any
) -> None:
    hypothesis = require_module("hypothesis")
    st = require_module("hypothesis.strategies")

    proxy = proxyd_factory(zones=RICH_ZONES, rules=RICH_RULES, public_address=PUBLIC)
    cfg = proxyd_config.parse(proxy.config_path.read_text(), proxy.config_path)
    policy = cfg.policy
    assert not any(OUTSIDE_SOURCE in net for net in _networks() if net.version == 4)
    pac = load_pac(pac_engine, served_pac(proxy))

    def around(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
        size = net.num_addresses
        first = int(net.network_address)
        top = 2**32 - 1 if net.version == 4 else 2**128 - 1
        offsets = st.one_of(
            st.integers(-3, 3),
            st.integers(size - 3, size + 2),
            st.integers(0, size - 1),
            st.integers(-size, 2 * size),
        )
        return offsets.map(lambda o: ipaddress.ip_address(min(max(first + o, 0), top)))

    addresses = st.one_of(
        *(around(net) for net in _networks()),
        st.ip_addresses(v=4),
        st.ip_addresses(v=6),
    )
    ports = st.one_of(st.sampled_from(EDGE_PORTS), st.integers(1, 65535))
    free = st.tuples(addresses, ports)

    def port_near(ranges: list[tuple[int, int]]) -> Any:
        return st.sampled_from(ranges).flatmap(
            lambda r: st.integers(max(r[0] - 1, 1), min(r[1] + 1, 65535))
        )

    # Draws aimed at what a from-any rule allows, and at its edges.
    aimed = [
        st.tuples(around(net), port_near(ranges))
        for nets, ranges in _public_targets(policy)
        for net in nets
    ]
    cases = st.one_of(free, *aimed)
    checked = {4: 0, 6: 0}
    proxied = {4: 0, 6: 0}

    @hypothesis.settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(
        case=cases,
        scheme=st.sampled_from(["http", "https"]),
        by_name=st.booleans(),
        brackets=st.booleans(),
    )
    def check(
        case: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
        scheme: str,
        by_name: bool,
        brackets: bool,
    ) -> None:
        address, port = case
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # covered by its own test below
        text = str(address)
        if by_name:
            host = "h-" + text.replace(":", "-").replace(".", "-") + ".example"
            pac.dns({host: text})
            url_host = host
        elif address.version == 6:
            # Chromium passes IPv6 hosts without brackets; other engines keep them.
            host = f"[{text}]" if brackets else text
            url_host = f"[{text}]"
        else:
            host = url_host = text
        default = 443 if scheme == "https" else 80
        url = f"{scheme}://{url_host}/" if port == default else f"{scheme}://{url_host}:{port}/"
        expected = policy.decide(OUTSIDE_SOURCE, [address], port, Who("partner")).allowed
        answer = pac.find(url, host)
        assert answer == (f"PROXY {PUBLIC}" if expected else "DIRECT"), (url, host, answer)
        checked[address.version] += 1
        proxied[address.version] += expected

    check()
    # The draw really covered both families and both answers.
    assert checked[4] > 100 and checked[6] > 50, checked
    assert proxied[4] > 15 and proxied[6] > 15, proxied
    assert checked[4] - proxied[4] > 30 and checked[6] - proxied[6] > 30, (checked, proxied)


def test_pac_ignores_rules_from_zones_only(proxyd_factory: Any, pac_engine: Any) -> None:
    """Explicit examples of the property above (readable when it fails)."""
    proxy = proxyd_factory(zones=RICH_ZONES, rules=RICH_RULES, public_address=PUBLIC)
    pac = load_pac(pac_engine, served_pac(proxy))
    via = f"PROXY {PUBLIC}"
    cases = [
        ("http://10.20.16.0/", "10.20.16.0", via),
        ("http://10.20.31.255:8100/", "10.20.31.255", via),
        ("http://10.20.32.0/", "10.20.32.0", "DIRECT"),
        ("http://10.20.15.255/", "10.20.15.255", "DIRECT"),
        ("http://10.20.20.1:8101/", "10.20.20.1", "DIRECT"),  # only lab-only has 8101
        ("http://10.20.20.1:22/", "10.20.20.1", "DIRECT"),
        ("http://172.16.1.1/", "172.16.1.1", "DIRECT"),  # lab-only: all ports, zone-only
        ("https://172.16.1.1:8443/", "172.16.1.1", via),
        ("http://192.168.3.255:9001/", "192.168.3.255", via),
        ("http://192.168.4.0:9001/", "192.168.4.0", "DIRECT"),
        ("http://203.0.113.7:22/", "203.0.113.7", via),
        ("http://203.0.113.8:22/", "203.0.113.8", "DIRECT"),
        ("http://198.51.100.1/", "198.51.100.1", "DIRECT"),  # a source zone
        ("https://[2001:db8:abcd:ffff::1]/", "2001:db8:abcd:ffff::1", via),
        ("https://[2001:db8:abce::]/", "2001:db8:abce::", "DIRECT"),
        ("http://[2001:db8:ffff::5]:9000/", "2001:db8:ffff::5", via),
        ("http://[2001:db8:ffff::6]:9000/", "2001:db8:ffff::6", "DIRECT"),
        ("http://[2001:db8:c::1]/", "2001:db8:c::1", "DIRECT"),
        ("https://[2001:db8:c::1]:8443/", "[2001:db8:c::1]", via),
    ]
    for url, host, expected in cases:
        assert pac.find(url, host) == expected, (url, host)


def test_ipv4_mapped_ipv6_host_is_treated_as_ipv4_like_proxyd_does(
    proxyd_factory: Any, pac_engine: Any
) -> None:
    proxy = proxyd_factory(zones=RICH_ZONES, rules=RICH_RULES, public_address=PUBLIC)
    cfg = proxyd_config.parse(proxy.config_path.read_text(), proxy.config_path)
    mapped = ipaddress.ip_address("::ffff:10.20.16.1")
    assert cfg.policy.decide(OUTSIDE_SOURCE, [canonical_ip(mapped)], 80, True).allowed
    pac = load_pac(pac_engine, served_pac(proxy))
    assert pac.find("http://[::ffff:a14:1001]/", "::ffff:a14:1001") == f"PROXY {PUBLIC}"
