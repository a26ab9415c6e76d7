"""A real headless Chromium configured by proxyd's own proxy.pac.

Chromium (Debian's `chromium`, /usr/bin/chromium) is driven by Playwright with
`executable_path`; no browser is ever downloaded. It gets `--proxy-pac-url` pointing at
proxyd's `/proxy.pac`, and the proxy credentials through Playwright's `proxy=` option.

Why `proxy=` and not `http_credentials`: Playwright answers Chromium's auth challenges
through CDP (`Fetch.authRequired`), but for a challenge whose source is "Proxy" (a 407)
it only offers the *proxy* credentials, which come from `proxy={"username", "password"}`;
`http_credentials` are for 401s only (with them alone Chromium fails with
ERR_INVALID_AUTH_CREDENTIALS after the first 407). `proxy=` also makes Playwright add
`--proxy-server=SERVER` (and `--proxy-bypass-list=<-loopback>`), but Chromium takes
`--proxy-pac-url` over `--proxy-server`. To prove the PAC is what routes, SERVER is a
loopback port nothing listens on: every page that loads went where the PAC said.

Chromium never sends loopback literals through a PAC proxy (it bypasses `<-loopback>`),
so the pages are on names mapped with `--host-resolver-rules`: `proxied.test` (in
`pac.domains`, so PROXY without DNS) -> 127.0.0.2, the origins; `direct.test` ->
127.0.0.3, outside every zone, so the PAC says DIRECT. proxyd resolves `proxied.test`
through its own hosts file.

The origin's certificate does not name proxied.test; TLS is end to end through the
tunnel and not what is tested here, so certificate errors are ignored (Playwright's
`ignore_https_errors`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import (
    DEFAULT_USERS,
    ORIGIN_HOST,
    Origins,
    ProxydHandle,
    TcpRelay,
    free_port,
    require_tool,
)

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = next(iter(DEFAULT_USERS.items()))
PROXIED = "proxied.test"
DIRECT = "direct.test"
NAV_TIMEOUT_MS = 20_000


def _chromium() -> str:
    path = require_tool("chromium")
    assert str(path) == CHROMIUM or Path(CHROMIUM).exists(), path
    return CHROMIUM


def _playwright() -> Any:
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        return require_tool("playwright.sync_api (Python module)")


@pytest.fixture
def browser_proxyd(proxyd_factory: Any, origins: Origins, tmp_path: Path) -> Callable[..., Any]:
    """proxyd with a hosts file that knows the browser's names and `pac.domains`."""
    hosts = tmp_path / "browser-hosts"
    hosts.write_text(f"{ORIGIN_HOST}\t{PROXIED}\n{origins.denied_http[0]}\t{DIRECT}\n")

    def start(**overrides: Any) -> ProxydHandle:
        overrides.setdefault("pac", {"domains": [f".{PROXIED}"]})
        return proxyd_factory(dns={"hosts_file": str(hosts)}, **overrides)  # type: ignore[no-any-return]

    return start


@contextmanager
def chromium(pac_url: str, profile: Path) -> Iterator[Any]:
    """A fresh headless Chromium context using `pac_url`, with the proxy credentials."""
    executable = _chromium()
    sync_api = _playwright()
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--proxy-pac-url={pac_url}",
        f"--host-resolver-rules=MAP {PROXIED} {ORIGIN_HOST}, MAP {DIRECT} 127.0.0.3",
    ]
    profile.mkdir()
    unused = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # never used: the PAC wins
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=args,
            proxy={"server": unused, "username": USER, "password": PASSWORD},
            ignore_https_errors=True,
            timeout=60_000,
        )
        try:
            context.set_default_timeout(NAV_TIMEOUT_MS)
            yield context
        finally:
            context.close()


def load(context: Any, url: str) -> tuple[int, str]:
    page = context.new_page()
    try:
        response = page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
        assert response is not None, url
        return int(response.status), str(page.inner_text("body"))
    finally:
        page.close()


def access_lines(proxy: ProxydHandle, needle: str) -> list[str]:
    return [
        line
        for line in proxy.log().splitlines()
        if re.search(r" \S+/\d{3} \d+ [A-Z]+ ", line) and needle in line
    ]


def test_proxied_name_loads_through_proxyd_with_digest_http_and_https(
    browser_proxyd: Callable[..., ProxydHandle], origins: Origins, tmp_path: Path
) -> None:
    proxy = browser_proxyd()
    http_port, https_port = origins.http[1], origins.https[1]
    with chromium(f"http://127.0.0.1:{proxy.port}/proxy.pac", tmp_path / "profile") as context:
        status, body = load(context, f"http://{PROXIED}:{http_port}/browser-http")
        assert (status, body) == (200, "origin-http /browser-http")
        status, body = load(context, f"https://{PROXIED}:{https_port}/browser-https")
        assert (status, body) == (200, "origin-http /browser-https")
    # The PAC came from proxyd, without auth.
    proxy.wait_for_log(r"/200 \d+ GET http://127\.0\.0\.1:\d+/proxy\.pac - ")
    # HTTP: absolute-form through proxyd, authenticated as alice after a Digest challenge.
    proxy.wait_for_log(
        rf"TCP_MISS/200 \d+ GET http://{re.escape(PROXIED)}:{http_port}/browser-http "
        rf"{USER} .* auth=ok"
    )
    # HTTPS: a CONNECT tunnel, logged when it ends (the browser is closed by now).
    proxy.wait_for_log(
        rf"TCP_TUNNEL/200 \d+ CONNECT {re.escape(PROXIED)}:{https_port} {USER} .* auth=ok",
        timeout=20,
    )
    # The first request was challenged (407, Digest); Chromium then answers challenges
    # itself and reuses its cached Digest credentials (next nc) preemptively, so the
    # CONNECTs need no 407 of their own.
    challenged = access_lines(proxy, "/407 ")
    assert any(f"{PROXIED}:{http_port}/browser-http" in line for line in challenged), challenged
    assert all("auth=no_credentials" in line for line in challenged), challenged


def test_name_outside_the_zones_loads_direct(
    browser_proxyd: Callable[..., ProxydHandle], origins: Origins, tmp_path: Path
) -> None:
    proxy = browser_proxyd()
    port = origins.denied_http[1]
    before = origins.denied_hits()
    with chromium(f"http://127.0.0.1:{proxy.port}/proxy.pac", tmp_path / "profile") as context:
        status, body = load(context, f"http://{DIRECT}:{port}/browser-direct")
    assert (status, body) == (200, "denied-origin /browser-direct")
    assert origins.denied_hits() > before
    proxy.wait_for_log(r"/200 \d+ GET http://127\.0\.0\.1:\d+/proxy\.pac - ")
    assert DIRECT not in proxy.log()
    assert access_lines(proxy, "/browser-direct") == []


_ALGORITHM_RE = re.compile(rb"Proxy-Authorization: *Digest [^\r\n]*", re.I)


@pytest.mark.parametrize(
    "algorithms",
    [("MD5",), ("SHA-256",), ("MD5", "SHA-256"), ("SHA-256", "MD5")],
    ids=lambda a: "+".join(a),
)
def test_digest_algorithm_chromium_chooses(
    browser_proxyd: Callable[..., ProxydHandle],
    origins: Origins,
    tmp_path: Path,
    algorithms: tuple[str, ...],
) -> None:
    """Which Digest algorithm Chromium answers with, seen on the wire.

    A relay between Chromium and proxyd shows the Proxy-Authorization it sends.

    The PAC is fetched through the relay and points back at it (public_address), so
    every request of the browser crosses it.
    """
    with TcpRelay() as relay:
        proxy = browser_proxyd(algorithms=algorithms, public_address=f"{relay.host}:{relay.port}")
        relay.target = proxy.address
        http_port = origins.http[1]
        with chromium(f"http://{relay.host}:{relay.port}/proxy.pac", tmp_path / "p") as context:
            status, body = load(context, f"http://{PROXIED}:{http_port}/algo")
        assert (status, body) == (200, "origin-http /algo")
        sent = relay.client_bytes()
    proxy.wait_for_log(
        rf"TCP_MISS/200 \d+ GET http://{re.escape(PROXIED)}:{http_port}/algo {USER} "
    )
    headers = _ALGORITHM_RE.findall(sent)
    assert headers, sent[:2000]
    chosen = {
        m.group(1).decode().upper()
        for h in headers
        if (m := re.search(rb'algorithm="?([A-Za-z0-9-]+)', h))
    }
    # No algorithm parameter means MD5 (RFC 7616 3.4).
    if any(b"algorithm" not in h.lower() for h in headers):
        chosen.add("MD5")
    # Observed (Chromium 156): it answers the first Digest challenge in header order,
    # i.e. the first of `auth.algorithms`; it has SHA-256 but does not prefer it.
    assert chosen == {algorithms[0]}, (chosen, headers)
    digest_hex = 64 if algorithms[0] == "SHA-256" else 32
    for h in headers:
        response = re.search(rb'response="([0-9a-f]+)"', h)
        assert response and len(response.group(1)) == digest_hex, h
    assert all(b"qop=auth" in h or b'qop="auth"' in h for h in headers), headers
    assert all(f'username="{USER}"'.encode() in h for h in headers), headers
