"""A real headless Chromium reaching proxyd's TLS listener through proxyd's own proxy.pac.

With `tls_listen` set, the PAC says `HTTPS host:TLS_PORT; PROXY host:PLAIN_PORT`, so a
browser speaks TLS to the proxy and falls back to the plain port only when the HTTPS
proxy fails. The first test proves Chromium takes the first and never the second; the
second shows that the check can fail: with the proxy's CA untrusted, Chromium falls back
to the plain port silently.

How Chromium is set up (see test_browser.py for the reasons behind the Playwright parts:
Debian's /usr/bin/chromium through `executable_path`, the proxy credentials through
Playwright's `proxy=` with a dead `--proxy-server` that `--proxy-pac-url` overrides):

- A fresh HOME whose NSS db (`~/.pki/nssdb`, the only trust store Chromium reads for a
  private CA on Linux; ../shared/notes/tls-clients.md) trusts the proxy's CA and the
  origins' CA (`certutil -t C,,`). Certificate errors are *not* ignored
  (`ignore_https_errors=False`): an untrusted proxy or origin certificate fails the load.
- The PAC is fetched from the plain port as browsers do, by the address
  `http://127.0.0.1:PLAIN/proxy.pac`. proxyd writes the host the PAC was fetched by into
  it, so it names the proxy `127.0.0.1`, which the proxy certificate lists as an IP SAN
  (tls_kit: 127.0.0.1, proxy.test, localhost); Chromium checks an IP literal proxy against
  IP SANs, so no resolver rule is needed for the proxy itself (fetching by `proxy.test`
  would need `--host-resolver-rules=MAP proxy.test 127.0.0.1` and prove nothing more).
- `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1`: Chromium resolves no name
  at all (the EXCLUDE is needed: the rules apply to IP literals too, and without it the
  PAC fetch fails and Chromium quietly goes DIRECT). The pages
  are on names in `pac.domains` (the PAC answers them without DNS) that only proxyd's
  hosts file knows, so a page can only load through proxyd, and no lookup leaves the
  machine. `http://proxied.test:PORT` is the plain origin; the https page is on
  `origin.test`, the name the origins' certificate holds, so its certificate verifies
  end to end through the tunnel.
- `--log-net-log` shows Chromium's own view: the proxy chain each request used, and
  (capture mode IncludeSensitive: the default one strips a Proxy-Authorization header's
  whole value) the scheme it answered the proxy's 407 with, which proxyd does not log
  and which is inside TLS on the wire. The credentials are the test's own.

proxyd logs JSON (`access_log: {path: "-", format: json}`), whose `listener` field says
which listener a request came through: every record for the two pages must be `tls`.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import (
    DEFAULT_USERS,
    IO_TIMEOUT,
    ORIGIN_HOST,
    PROXY_HOST,
    Origins,
    ProxydHandle,
    clean_env,
    free_port,
    require_tool,
)
from test_observability import admin_get, samples
from tls_kit import ProxyCA, proxy_ca, start_tls_proxyd

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = next(iter(DEFAULT_USERS.items()))
PROXIED = "proxied.test"  # the plain origin, via proxyd's hosts file
SECURE = "origin.test"  # the TLS origin: the name its certificate holds
NAV_TIMEOUT_MS = 20_000
CERTUTIL_TIMEOUT = 30


def _chromium() -> str:
    path = require_tool("chromium")
    assert str(path) == CHROMIUM or Path(CHROMIUM).exists(), path
    return CHROMIUM


def _playwright() -> Any:
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        return require_tool("playwright.sync_api (Python module)")


def nss_home(home: Path, cas: dict[str, Path]) -> dict[str, str]:
    """A fresh HOME whose NSS db trusts `cas` (nickname -> PEM) as CAs; its environment."""
    certutil = require_tool("certutil")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    env = clean_env(home)

    def run(*args: str) -> None:
        done = subprocess.run(
            [certutil, "-d", f"sql:{db}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CERTUTIL_TIMEOUT,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)

    run("-N", "--empty-password")
    for nickname, pem in cas.items():
        run("-A", "-t", "C,,", "-n", nickname, "-i", str(pem))
    listed = subprocess.run(
        [certutil, "-d", f"sql:{db}", "-L"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CERTUTIL_TIMEOUT,
    )
    for nickname in cas:
        assert re.search(rf"^{re.escape(nickname)}\s+C,,", listed.stdout, re.M), listed.stdout
    return env


@contextmanager
def chromium(pac_url: str, profile: Path, env: dict[str, str], netlog: Path) -> Iterator[Any]:
    """A fresh headless Chromium context on `pac_url`, HOME from `env`, certificates checked."""
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
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {PROXY_HOST}",
        f"--log-net-log={netlog}",
        "--net-log-capture-mode=IncludeSensitive",
    ]
    profile.mkdir()
    unused = f"http://{PROXY_HOST}:{free_port(PROXY_HOST)}"  # never used: the PAC wins
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=args,
            env=env,
            proxy={"server": unused, "username": USER, "password": PASSWORD},
            ignore_https_errors=False,
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


def records(proxy: ProxydHandle) -> list[dict[str, Any]]:
    """proxyd's JSON access records so far (its stdout also carries its own messages)."""
    out = []
    for line in proxy.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "listener" in record:
                out.append(record)
    return out


def wait_records(
    proxy: ProxydHandle, wanted: Any, timeout: float = IO_TIMEOUT
) -> list[dict[str, Any]]:
    """The records for which `wanted(record)` holds, once there is one (a tunnel's record
    comes when it closes, a moment after the browser has gone)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(proxy) if wanted(r)]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def netlog_events(netlog: Path) -> list[tuple[str, dict[str, Any]]]:
    """(event type name, params) of Chromium's net log, written when it exits."""
    text = netlog.read_text(errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # cut short: its events array is left open
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    return [(names.get(e["type"], "?"), e.get("params") or {}) for e in log["events"]]


def sent_proxy_authorizations(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every Proxy-Authorization header Chromium sent (to the proxy, inside its TLS)."""
    return [
        header.split(":", 1)[1].strip()
        for name, params in events
        if name.endswith("SEND_REQUEST_HEADERS") or name.endswith("SEND_TUNNEL_HEADERS")
        for header in params.get("headers", [])
        if header.lower().startswith("proxy-authorization:")
    ]


def tunnels_closed(proxy: ProxydHandle, timeout: float = 20) -> None:
    """Wait for proxyd to have no open tunnel: every CONNECT record is then written."""
    deadline = time.monotonic() + timeout
    while True:
        status, text = admin_get(proxy, "/metrics")
        assert status == 200, text
        if samples(text).get(("proxyd_tunnels_active", frozenset())) == 0:
            return
        assert time.monotonic() < deadline, "tunnels still open after the browser closed"
        time.sleep(0.1)


def handshakes(proxy: ProxydHandle, result: str) -> float:
    _, text = admin_get(proxy, "/metrics")
    key = ("proxyd_tls_handshakes_total", frozenset({("result", result)}))
    return samples(text).get(key, 0.0)


@pytest.fixture
def ca(tmp_path: Path) -> ProxyCA:
    return proxy_ca(tmp_path / "proxy-ca")


def tls_browser_proxyd(
    proxyd_factory: Any, ca: ProxyCA, tmp_path: Path
) -> tuple[ProxydHandle, int]:
    """proxyd with its TLS listener, JSON access log, and the browser's names."""
    hosts = tmp_path / "browser-hosts"
    hosts.write_text(f"{ORIGIN_HOST}\t{PROXIED}\n{ORIGIN_HOST}\t{SECURE}\n")
    return start_tls_proxyd(
        proxyd_factory,
        ca,
        dns={"hosts_file": str(hosts)},
        pac={"domains": [f".{PROXIED}", f".{SECURE}"]},
        access_log={"path": "-", "format": "json"},
    )


def ok_as_alice(record: dict[str, Any]) -> bool:
    return record["status"] == 200 and record["user"] == USER and record["auth"] == "ok"


def test_chromium_uses_the_https_proxy_from_the_pac_for_http_and_https(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, tmp_path: Path
) -> None:
    proxy, tls_port = tls_browser_proxyd(proxyd_factory, ca, tmp_path)
    env = nss_home(tmp_path / "browser-home", {"proxyd-test": ca.pem, "origin-ca": origins.ca_pem})
    http_url = f"http://{PROXIED}:{origins.http[1]}/tls-browser-http"
    tunnel = f"{SECURE}:{origins.https[1]}"
    netlog = tmp_path / "netlog.json"
    pac_url = f"http://{PROXY_HOST}:{proxy.port}/proxy.pac"

    started = time.monotonic()
    with chromium(pac_url, tmp_path / "profile", env, netlog) as context:
        status, body = load(context, http_url)
        assert (status, body) == (200, "origin-http /tls-browser-http")
        status, body = load(context, f"https://{tunnel}/tls-browser-https")
        assert (status, body) == (200, "origin-http /tls-browser-https")
    browsing = time.monotonic() - started
    tunnels_closed(proxy)

    # The PAC came from the plain port, without auth.
    pac = wait_records(proxy, lambda r: r["target"].endswith("/proxy.pac"))
    assert pac and pac[0]["status"] == 200 and pac[0]["listener"] == "http", pac
    assert pac[0]["user"] is None, pac
    # HTTP: an absolute-form GET inside TLS to the proxy, as alice.
    gets = wait_records(proxy, lambda r: r["target"] == http_url and ok_as_alice(r))
    assert [(g["method"], g["listener"]) for g in gets] == [("GET", "tls")], records(proxy)
    # HTTPS: a CONNECT inside TLS to the proxy (TLS in TLS); logged when the tunnel ends.
    tunnels = wait_records(proxy, lambda r: r["target"] == tunnel and ok_as_alice(r))
    assert tunnels, records(proxy)
    assert {(t["method"], t["listener"]) for t in tunnels} == {("CONNECT", "tls")}, tunnels

    # No fallback to `PROXY host:PLAIN` (test_an_untrusted_proxy_certificate_... shows
    # Chromium takes it silently): on the plain listener nothing but the PAC, and every
    # record for the two pages (their 407s included) came through TLS.
    every = records(proxy)
    plain = [r for r in every if r["listener"] != "tls"]
    assert all(r["target"].endswith("/proxy.pac") for r in plain), plain
    pages = [r for r in every if r["target"] in (http_url, tunnel)]
    assert {r["listener"] for r in pages} == {"tls"}, pages
    assert all(r["auth"] in ("ok", "no_credentials") for r in pages), pages
    assert handshakes(proxy, "ok") >= 1
    assert handshakes(proxy, "failed") == 0
    assert PASSWORD not in proxy.log()

    # Chromium's side: the PAC gave it both proxies, and it used the HTTPS one only.
    events = netlog_events(netlog)
    directive = f"HTTPS {PROXY_HOST}:{tls_port};PROXY {PROXY_HOST}:{proxy.port}"
    answers = {p["proxy_info"] for n, p in events if n.endswith("RESOLVED_PROXY_LIST")}
    assert directive in answers, answers
    chains = {p["proxy_chain"] for n, p in events if "proxy_chain" in p} - {"[direct://]"}
    assert chains == {f"[https://{PROXY_HOST}:{tls_port}]"}, chains

    # The scheme Chromium answered the 407 with (inside TLS proxyd offers Digest MD5,
    # Digest SHA-256, then Basic): Digest, the first offered, as tls-clients.md measured
    # against Squid; it then sends it preemptively (the tunnels had no 407 of their own).
    sent = sent_proxy_authorizations(events)
    assert sent, "no Proxy-Authorization in the net log"
    assert {h.split()[0].lower() for h in sent} == {"digest"}, sent
    assert all(f'username="{USER}"' in h and "algorithm=MD5" in h for h in sent), sent
    assert PASSWORD not in netlog.read_text(errors="replace")
    assert browsing < 60, browsing


def test_an_untrusted_proxy_certificate_makes_chromium_fall_back_to_the_plain_port(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, tmp_path: Path
) -> None:
    """The control for the test above: its no-fallback check can fail. With the proxy's
    CA missing from the NSS db, Chromium drops the `HTTPS` proxy after the failed
    handshake and, without a word to the user, goes on with `PROXY host:PLAIN` (Digest
    there). A PAC with only the plain port after `HTTPS` is as safe as that port."""
    proxy, tls_port = tls_browser_proxyd(proxyd_factory, ca, tmp_path)
    env = nss_home(tmp_path / "browser-home", {"origin-ca": origins.ca_pem})
    http_url = f"http://{PROXIED}:{origins.http[1]}/tls-browser-untrusted"
    netlog = tmp_path / "netlog.json"
    pac_url = f"http://{PROXY_HOST}:{proxy.port}/proxy.pac"
    with chromium(pac_url, tmp_path / "profile", env, netlog) as context:
        status, body = load(context, http_url)
    assert (status, body) == (200, "origin-http /tls-browser-untrusted")
    gets = wait_records(proxy, lambda r: r["target"] == http_url and ok_as_alice(r))
    assert [(g["method"], g["listener"]) for g in gets] == [("GET", "http")], records(proxy)
    pages = [r for r in records(proxy) if r["target"] == http_url]
    assert {r["listener"] for r in pages} == {"http"}, pages
    assert handshakes(proxy, "failed") >= 1
    events = netlog_events(netlog)
    # It tried the HTTPS proxy, refused its certificate (-202, ERR_CERT_AUTHORITY_INVALID),
    # then used the plain one (a plain HTTP proxy chain is written without a scheme).
    chains = {p["proxy_chain"] for n, p in events if "proxy_chain" in p} - {"[direct://]"}
    assert chains == {f"[https://{PROXY_HOST}:{tls_port}]", f"[{PROXY_HOST}:{proxy.port}]"}
    errors = {p.get("net_error") for n, p in events if n == "SSL_HANDSHAKE_ERROR"}
    assert errors == {-202}, errors
    schemes = {h.split()[0].lower() for h in sent_proxy_authorizations(events)}
    assert schemes == {"digest"}, schemes
