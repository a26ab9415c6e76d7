"""Policy through a real `proxyd serve`: rules, source rule, zones, ports, names, literals.

curl drives the ordinary cases. curl normalises IPv4 literals in URLs itself
(`http://2130706435/` becomes 127.0.0.3 before it reaches the proxy), so the literal forms
and origin-form requests go over raw sockets, which send the bytes as written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import (
    DENIED_HOST,
    INTERNAL_SOURCE,
    ORIGIN_HOST,
    Origins,
    ProxydHandle,
    RawConnection,
    RawResponse,
    clean_env,
    curl,
    raw_proxy_request,
)

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
CREDS = ["--proxy-digest", "-U", f"{USER}:{PASSWORD}"]


def proxy_args(proxyd: ProxydHandle, *, auth: bool = True) -> list[str]:
    return ["--proxy", proxyd.url, *(CREDS if auth else [])]


def assert_refusal(response: RawResponse) -> None:
    assert response.status == 403, (response.status, response.reason, response.body)
    assert_one_line_reason(response.text)


def assert_one_line_reason(body: str) -> None:
    assert body.strip(), "403 without a reason"
    assert "\n" not in body.strip(), f"reason is not one line: {body!r}"


# --------------------------------------------------------------------------- allowed


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_partners_rule_allows_with_auth(
    scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    host, port = origins.http if scheme == "http" else origins.https
    extra = ["--cacert", str(origins.ca_pem)] if scheme == "https" else []
    result = curl(
        [*proxy_args(proxyd), *extra, f"{scheme}://{host}:{port}/allowed"], clean_env(client_home)
    )
    assert result.code == 200, result.describe()
    assert result.body == "origin-http /allowed"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_partners_rule_needs_auth(
    scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    host, port = origins.http if scheme == "http" else origins.https
    hits = origins.hits(scheme)
    extra = ["--cacert", str(origins.ca_pem)] if scheme == "https" else []
    result = curl(
        [*proxy_args(proxyd, auth=False), *extra, f"{scheme}://{host}:{port}/"],
        clean_env(client_home),
    )
    assert (result.code if scheme == "http" else result.connect) == 407, result.describe()
    assert origins.hits(scheme) == hits, "upstream connection opened before auth"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_internal_source_rule_needs_no_auth(
    scheme: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    host, port = origins.http if scheme == "http" else origins.https
    extra = ["--cacert", str(origins.ca_pem)] if scheme == "https" else []
    url = f"{scheme}://{host}:{port}/internal"
    inside = curl(
        [*proxy_args(proxyd, auth=False), "--interface", INTERNAL_SOURCE, *extra, url],
        clean_env(client_home),
    )
    assert inside.code == 200, inside.describe()
    assert inside.body == "origin-http /internal"
    assert not inside.sent_headers("Proxy-Authorization")

    outside = curl([*proxy_args(proxyd, auth=False), *extra, url], clean_env(client_home))
    assert (outside.code if scheme == "http" else outside.connect) == 407, outside.describe()


def test_internal_source_on_port_outside_its_rule_falls_to_partners(
    proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    """internal-noauth lists only the http/https ports; git_http matches `partners`."""
    host, port = origins.git_http
    url = f"http://{host}:{port}{origins.git_path}/info/refs"
    env = clean_env(client_home)
    without = curl([*proxy_args(proxyd, auth=False), "--interface", INTERNAL_SOURCE, url], env)
    assert without.code == 407, without.describe()
    with_auth = curl([*proxy_args(proxyd), "--interface", INTERNAL_SOURCE, url], env)
    assert with_auth.code == 200, with_auth.describe()


def test_hostname_in_zone_allowed(
    proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    env = clean_env(client_home)
    http = curl([*proxy_args(proxyd), f"http://origin.test:{origins.http[1]}/named"], env)
    assert http.code == 200, http.describe()
    assert http.body == "origin-http /named"
    https = curl(
        [
            *proxy_args(proxyd),
            "--cacert",
            str(origins.ca_pem),
            f"https://origin.test:{origins.https[1]}/named",
        ],
        env,
    )
    assert https.code == 200, https.describe()
    assert https.body == "origin-http /named"


# --------------------------------------------------------------------------- denied


def test_denied_port(proxyd: ProxydHandle, origins: Origins, client_home: Path) -> None:
    host, port = origins.offport_http
    env = clean_env(client_home)
    http = curl([*proxy_args(proxyd), f"http://{host}:{port}/"], env)
    assert http.code == 403, http.describe()
    assert_one_line_reason(http.body)
    https = curl(
        [*proxy_args(proxyd), "--cacert", str(origins.ca_pem), f"https://{host}:{port}/"], env
    )
    assert https.connect == 403, https.describe()
    assert origins.offport_hits() == 0


@pytest.mark.parametrize("host", [DENIED_HOST, "evil.test", "mixed.test"])
def test_denied_destination(
    host: str, proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    """127.0.0.3 is in no zone; evil.test resolves to it; mixed.test to it and 127.0.0.2."""
    port = origins.denied_http[1]
    env = clean_env(client_home)
    http = curl([*proxy_args(proxyd), f"http://{host}:{port}/"], env)
    assert http.code == 403, http.describe()
    assert_one_line_reason(http.body)
    assert "denied-origin" not in http.body
    https = curl(
        [*proxy_args(proxyd), "--cacert", str(origins.ca_pem), f"https://{host}:{port}/"], env
    )
    assert https.connect == 403, https.describe()
    assert origins.denied_hits() == 0


def test_denied_without_credentials_is_not_forwarded(
    proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    """Refused with or without credentials (403, or 407 first): never forwarded."""
    result = curl(
        [*proxy_args(proxyd, auth=False), f"http://{DENIED_HOST}:{origins.denied_http[1]}/"],
        clean_env(client_home),
    )
    assert result.code in (403, 407), result.describe()
    assert origins.denied_hits() == 0


# --------------------------------------------------------------------------- IP literal forms


# Host parts only; the port is the origin's. Every one denotes 127.0.0.3 (denied) or
# 127.0.0.2 (allowed) under inet_aton / IPv4-mapped IPv6 rules.
DENIED_LITERALS = [
    "2130706435",  # decimal
    "0x7f000003",  # hex
    "0x7F.0.0.3",
    "0177.0.0.3",  # octal
    "0177.0.0.03",
    "127.3",  # short forms
    "127.0.3",
    "127.0.0.3.",  # trailing dot: a name that resolves to 127.0.0.3
    "[::ffff:127.0.0.3]",  # IPv4-mapped IPv6
    "[::ffff:7f00:3]",
    "[0:0:0:0:0:ffff:127.0.0.3]",
]
ALLOWED_LITERALS = [
    "2130706434",
    "0x7f000002",
    "0177.0.0.2",
    "127.2",
    "127.0.2",
    "[::ffff:127.0.0.2]",
]


@pytest.mark.parametrize("literal", DENIED_LITERALS)
@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_ip_literal_forms_of_denied_address_refused(
    literal: str, method: str, proxyd: ProxydHandle, origins: Origins
) -> None:
    authority = f"{literal}:{origins.denied_http[1]}"
    target = authority if method == "CONNECT" else f"http://{authority}/literal"
    response = raw_proxy_request(proxyd, method, target, auth=(USER, PASSWORD))
    if literal.endswith("."):
        # A trailing-dot name may be refused as a bad name (400) or denied after lookup.
        assert response.status in (400, 403), response
    else:
        assert_refusal(response)
    assert origins.denied_hits() == 0


@pytest.mark.parametrize("literal", ALLOWED_LITERALS)
@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_ip_literal_forms_of_allowed_address_pass(
    literal: str, method: str, proxyd: ProxydHandle, origins: Origins
) -> None:
    port = origins.http[1]
    authority = f"{literal}:{port}"
    if method == "GET":
        response = raw_proxy_request(
            proxyd, "GET", f"http://{authority}/literal", auth=(USER, PASSWORD)
        )
        assert response.status == 200, response
        assert response.text == "origin-http /literal"
        return
    with RawConnection(proxyd.address) as conn:
        _, second = conn.request_with_digest("CONNECT", authority, USER, PASSWORD)
        assert second is not None and second.status == 200, second
        response = conn.request("GET", "/through-tunnel", host=f"{ORIGIN_HOST}:{port}")
        assert response.status == 200
        assert response.text == "origin-http /through-tunnel"


def test_curl_normalises_decimal_literal_and_is_refused(
    proxyd: ProxydHandle, origins: Origins, client_home: Path
) -> None:
    result = curl(
        [*proxy_args(proxyd), "--path-as-is", f"http://2130706435:{origins.denied_http[1]}/"],
        clean_env(client_home),
    )
    assert result.code == 403, result.describe()
    assert origins.denied_hits() == 0


# --------------------------------------------------------------------------- origin form


def test_origin_form_to_denied_host_refused(proxyd: ProxydHandle, origins: Origins) -> None:
    host_header = f"{DENIED_HOST}:{origins.denied_http[1]}"
    response = raw_proxy_request(proxyd, "GET", "/x", host=host_header, auth=(USER, PASSWORD))
    assert_refusal(response)
    assert origins.denied_hits() == 0


@pytest.mark.parametrize("name", ["evil.test", "mixed.test"])
def test_origin_form_to_denied_name_refused(
    name: str, proxyd: ProxydHandle, origins: Origins
) -> None:
    host_header = f"{name}:{origins.denied_http[1]}"
    response = raw_proxy_request(proxyd, "GET", "/x", host=host_header, auth=(USER, PASSWORD))
    assert_refusal(response)
    assert origins.denied_hits() == 0


def test_origin_form_to_allowed_host_needs_auth(proxyd: ProxydHandle, origins: Origins) -> None:
    host_header = f"{ORIGIN_HOST}:{origins.http[1]}"
    hits = origins.hits("http")
    without = raw_proxy_request(proxyd, "GET", "/x", host=host_header)
    assert without.status == 407, without
    assert origins.hits("http") == hits
    with RawConnection(proxyd.address) as conn:
        first, second = conn.request_with_digest("GET", "/x", USER, PASSWORD, host=host_header)
        assert first.status == 407
        assert second is not None and second.status == 200, second
        assert second.text == "origin-http /x"
        # And the headers the origin saw carry no proxy credentials.
        challenged, third = conn.request_with_digest(
            "GET",
            "/headers",
            USER,
            PASSWORD,
            host=host_header,
            headers=[("Proxy-Connection", "keep-alive")],
        )
        final = third or challenged
        assert final.status == 200, final
        assert "proxy-authorization" not in final.text.lower()
        assert "proxy-connection" not in final.text.lower()


def test_origin_form_to_allowed_name_with_auth(proxyd: ProxydHandle, origins: Origins) -> None:
    response = raw_proxy_request(
        proxyd, "GET", "/named", host=f"origin.test:{origins.http[1]}", auth=(USER, PASSWORD)
    )
    assert response.status == 200, response
    assert response.text == "origin-http /named"


def test_origin_form_outside_rules_refused(proxyd: ProxydHandle, origins: Origins) -> None:
    """Host without port means :80, which no rule lists."""
    response = raw_proxy_request(proxyd, "GET", "/loop", host="127.0.0.2", auth=(USER, PASSWORD))
    assert_refusal(response)


@pytest.mark.parametrize("form", ["origin", "absolute"])
def test_requests_for_the_proxy_itself_never_loop(proxyd: ProxydHandle, form: str) -> None:
    """Host = the proxy itself: answered locally (only the PAC exists there), not forwarded."""
    hostport = f"{proxyd.host}:{proxyd.port}"
    target = "/loop" if form == "origin" else f"http://{hostport}/loop"
    response = raw_proxy_request(proxyd, "GET", target, host=hostport, auth=(USER, PASSWORD))
    assert response.status == 404, response
    assert "HIER_DIRECT" not in proxyd.log()
