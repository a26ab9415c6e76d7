"""Real clients through proxyd's TLS listener, Basic credentials in the `https://` proxy URL.

requests, httpx and aiohttp in this process; pip, Node's undici `ProxyAgent` and
keystoneauth1 as subprocesses. Each is told about the proxy and made to trust the proxy's
private CA the way ../shared/notes/tls-clients.md measured:

- requests, pip, keystoneauth1, aiohttp: one bundle holding the proxy's CA and the
  origin's (`verify=`, `--cert`, `REQUESTS_CA_BUNDLE`, `ssl=`); aiohttp's one `ssl=`
  context is used for the proxy hop and the origin hop alike, and it needs `proxy=`
  (with `trust_env=True` it ignores an https:// proxy and connects directly).
- httpx: `httpx.Proxy(url, ssl_context=...)` for the proxy hop, `verify=` for the origin.
- undici: `proxyTls: {ca}` and `requestTls: {ca}`.

The origins of the session (origins.http / origins.https) serve the generic clients; pip
gets a PEP 503 index and keystoneauth1 a fake Keystone v3, both over HTTPS on 127.0.0.2
with a CA of their own, on a port an extra rule allows.

One test documents a client trap, not a proxyd feature: requests does not verify the
proxy's certificate when the origin URL is http://, so it sends Basic credentials to any
proxy certificate at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import re
import ssl
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from ci_policy import missing
from harness import (
    IO_TIMEOUT,
    ORIGIN_HOST,
    Origins,
    ProxydHandle,
    TLSHTTPServer,
    clean_env,
    require_tool,
    run_client,
)
from relay_kit import NODE_DIR
from tls_kit import ProxyCA, both_cas, proxy_ca, start_tls_proxyd, tls_url

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"
NODE_SCRIPT = NODE_DIR / "tls-proxy-fetch.mjs"
# proxyd logs a tunnel when it ends; the origin closing its side ends it sooner (but see
# requests_get: requests also holds the proxy connection open while a response lives).
CLOSE = {"Connection": "close"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def ca(tmp_path: Path) -> ProxyCA:
    return proxy_ca(tmp_path / "proxy-ca")


@pytest.fixture
def bundle(ca: ProxyCA, origins: Origins) -> Path:
    """The proxy's CA and the origins' CA in one file."""
    return both_cas(ca, origins)


class LocalServers:
    """A CA of its own for the HTTPS servers a test starts on 127.0.0.2 (index, Keystone)."""

    def __init__(self, directory: Path) -> None:
        trustme = require_tool("trustme")
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="proxyd test servers CA")
        self.ca_pem = directory / "servers-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(ORIGIN_HOST).configure_cert(self.context)

    def bundle_with(self, proxy: ProxyCA) -> Path:
        """The proxy's CA and these servers' CA in one file."""
        path = proxy.directory / "proxy-and-servers.pem"
        path.write_bytes(proxy.pem.read_bytes() + self.ca_pem.read_bytes())
        return path

    @contextlib.contextmanager
    def serve(self, handler: type[BaseHTTPRequestHandler], **attrs: Any) -> Iterator[Any]:
        """An HTTPS server on 127.0.0.2:free port with `handler`; `attrs` set on the
        server; it records each request as (method, path) in `server.seen`."""
        server = TLSHTTPServer((ORIGIN_HOST, 0), handler, self.context)
        server.seen = []  # type: ignore[attr-defined]
        for name, value in attrs.items():
            setattr(server, name, value)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()
            thread.join(IO_TIMEOUT)


@pytest.fixture
def servers(tmp_path: Path) -> LocalServers:
    return LocalServers(tmp_path / "servers-ca")


def allow_port(port: int) -> list[dict[str, Any]]:
    """An extra rule for a test server's port (the `partners` rule lists only the
    session origins' ports)."""
    return [
        {"name": "index", "from": ["any"], "to": ["testzone"], "ports": [port], "auth": "required"}
    ]


# --------------------------------------------------------------------------- helpers


def origin(origins: Origins, scheme: str, path: str) -> str:
    host, port = origins.http if scheme == "http" else origins.https
    return f"{scheme}://{host}:{port}{path}"


def wait_line(proxy: ProxydHandle, pattern: str) -> str:
    """The first access-log line matching `pattern` (it comes through a pipe, and a
    tunnel's line when the tunnel ends)."""
    return proxy.wait_for_log(rf".*{pattern}.*").group(0)


def assert_logged(proxy: ProxydHandle, scheme: str, authority: str, path: str = "") -> str:
    """proxyd logged alice, auth=ok, for the request (http) or the tunnel (https)."""
    if scheme == "http":
        url = re.escape(f"http://{authority}{path}")
        line = wait_line(proxy, rf" TCP_MISS/200 \d+ GET {url} {USER} ")
    else:
        line = wait_line(proxy, rf" TCP_TUNNEL/200 \d+ CONNECT {re.escape(authority)} {USER} ")
    assert " auth=ok " in line, line
    return line


def assert_no_password(proxy: ProxydHandle) -> None:
    """The password is nowhere in proxyd's output; and no 407 was needed: the client sent
    Basic from the proxy URL up front (Digest, offered first, would take a 407 round)."""
    log = proxy.log()
    assert PASSWORD not in log
    assert " TCP_DENIED/407 " not in log, log


def authority(origins: Origins, scheme: str) -> str:
    host, port = origins.http if scheme == "http" else origins.https
    return f"{host}:{port}"


# --------------------------------------------------------------------------- requests


def requests_get(url: str, proxy_url: str, verify: str) -> tuple[int, str]:
    """One GET with requests through `proxy_url`: (status, body).

    The response is dropped before returning, on purpose: through an https:// proxy to an
    https:// origin (TLS in TLS, urllib3's SSLTransport) the connection to the proxy stays
    open while the urllib3 response object lives, even after `Connection: close`,
    Response.close() and Session.close(); proxyd logs a tunnel when it ends.
    """
    requests = require_tool("requests")
    with requests.Session() as session:
        session.trust_env = False  # no proxy or CA variables from this machine
        response = session.get(
            url,
            proxies={"https": proxy_url, "http": proxy_url},
            verify=verify,
            headers=CLOSE,
            timeout=20,
        )
        return response.status_code, response.text


# For an http:// origin urllib3 warns that the proxy hop is unverified even with the
# proxy's CA in verify= (the trap below); the https:// origin verifies it.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_requests_through_the_tls_listener(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, bundle: Path, scheme: str
) -> None:
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    status, body = requests_get(
        origin(origins, scheme, "/requests"), tls_url(tls_port, USER, PASSWORD), str(bundle)
    )
    assert (status, body) == (200, "origin-http /requests")
    assert_logged(proxy, scheme, authority(origins, scheme), "/requests")
    assert_no_password(proxy)


def test_client_trap_requests_sends_basic_to_an_untrusted_proxy_for_an_http_origin(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins
) -> None:
    """DOCUMENTS A CLIENT TRAP, NOT A PROXYD FEATURE (../shared/notes/tls-clients.md).

    requests verifies the https:// proxy's certificate only when the origin URL is
    https://; for an http:// origin its pool to the proxy uses CERT_NONE (urllib3 says so
    in an InsecureRequestWarning). Here the client trusts only the origins' CA, not the
    proxy's: the http:// request still goes through, Basic credentials and all; the
    https:// one is refused at the proxy's handshake, before any CONNECT. If requests
    ever starts verifying here, the first half fails: good news; update the notes, the
    README's advice and this test.
    """
    requests = require_tool("requests")
    urllib3 = require_tool("urllib3")
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    url = tls_url(tls_port, USER, PASSWORD)
    untrusted = str(origins.ca_pem)  # the proxy's CA is not in it
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning, match="127.0.0.1"):
        status, body = requests_get(origin(origins, "http", "/trap"), url, untrusted)
    assert (status, body) == (200, "origin-http /trap")  # the trap: nothing was verified
    assert_logged(proxy, "http", authority(origins, "http"), "/trap")  # Basic was accepted
    with pytest.raises(requests.exceptions.ProxyError, match="CERTIFICATE_VERIFY_FAILED"):
        requests_get(origin(origins, "https", "/trap"), url, untrusted)
    proxy.wait_for_log(r"TLS handshake failed .*UNKNOWN_CA")
    assert not re.search(r" CONNECT \S+ alice ", proxy.log()), proxy.log()
    assert_no_password(proxy)


# --------------------------------------------------------------------------- httpx


def test_httpx_through_the_tls_listener(proxyd_factory: Any, ca: ProxyCA, origins: Origins) -> None:
    httpx = require_tool("httpx")
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    proxy_context = ssl.create_default_context(cafile=str(ca.pem))  # verify= doesn't cover it
    origin_context = ssl.create_default_context(cafile=str(origins.ca_pem))
    with httpx.Client(
        proxy=httpx.Proxy(tls_url(tls_port, USER, PASSWORD), ssl_context=proxy_context),
        verify=origin_context,
        trust_env=False,
        timeout=20,
    ) as client:
        response = client.get(origin(origins, "https", "/httpx"))
    assert response.status_code == 200, response.text
    assert response.text == "origin-http /httpx"
    assert_logged(proxy, "https", authority(origins, "https"))
    assert_no_password(proxy)


# --------------------------------------------------------------------------- aiohttp


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_aiohttp_through_the_tls_listener(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, bundle: Path, scheme: str
) -> None:
    """aiohttp >= 3.8 speaks TLS to an https:// proxy (TLS in TLS for an https:// origin,
    asyncio's start_tls); its `ssl=` context serves both hops, hence the bundle."""
    aiohttp = require_tool("aiohttp")
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    context = ssl.create_default_context(cafile=str(bundle))

    async def get() -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(trust_env=False, timeout=timeout) as session,
            session.get(
                origin(origins, scheme, "/aiohttp"),
                proxy=tls_url(tls_port, USER, PASSWORD),
                ssl=context,
            ) as response,
        ):
            return response.status, await response.text()

    status, body = asyncio.run(get())
    assert (status, body) == (200, "origin-http /aiohttp")
    assert_logged(proxy, scheme, authority(origins, scheme), "/aiohttp")
    assert_no_password(proxy)


# --------------------------------------------------------------------------- pip

WHEEL_NAME = "tinypkg-1.0-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_tinypkg_wheel() -> bytes:
    files = {
        "tinypkg/__init__.py": b'VALUE = "through proxyd TLS"\n',
        "tinypkg-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\nSummary: TLS listener test\n"
        ),
        "tinypkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: proxyd-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    record += "tinypkg-1.0.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("tinypkg-1.0.dist-info/RECORD", record)
    return buffer.getvalue()


class TinyIndexHandler(BaseHTTPRequestHandler):
    """PEP 503: /simple/, /simple/tinypkg/ and the wheel under /files/."""

    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: Any = self.server
        path = self.path.split("?", 1)[0]
        server.seen.append(("GET", path))
        wheel: bytes = server.wheel
        if path in ("/simple", "/simple/"):
            page = '<!DOCTYPE html><html><body><a href="tinypkg/">tinypkg</a></body></html>'
        elif path in ("/simple/tinypkg", "/simple/tinypkg/"):
            sha = hashlib.sha256(wheel).hexdigest()
            page = (
                "<!DOCTYPE html><html><body>"
                f'<a href="/files/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>'
                "</body></html>"
            )
        elif path == f"/files/{WHEEL_NAME}":
            self._send(200, wheel, "application/octet-stream")
            return
        else:
            self._send(404, b"not found\n", "text/plain")
            return
        self._send(200, page.encode(), "text/html; charset=utf-8")


def test_pip_installs_from_an_https_index_through_the_tls_listener(
    proxyd_factory: Any, ca: ProxyCA, servers: LocalServers, client_home: Path, tmp_path: Path
) -> None:
    with servers.serve(TinyIndexHandler, wheel=build_tinypkg_wheel()) as index:
        port = index.server_address[1]
        proxy, tls_port = start_tls_proxyd(proxyd_factory, ca, extra_rules=allow_port(port))
        target = tmp_path / "target"
        env = clean_env(
            client_home,
            HTTPS_PROXY=tls_url(tls_port, USER, PASSWORD),
            PIP_CONFIG_FILE="/dev/null",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
        )
        args = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir"]
        args += ["--timeout", "20", "--retries", "0", "--target", str(target)]
        args += ["--index-url", f"https://{ORIGIN_HOST}:{port}/simple/"]
        args += ["--cert", str(servers.bundle_with(ca)), "tinypkg"]
        proc = run_client(args, env, timeout=90)
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\nproxy:\n{proxy.log()}"
        assert ("GET", f"/files/{WHEEL_NAME}") in index.seen
    assert (target / "tinypkg" / "__init__.py").read_text() == 'VALUE = "through proxyd TLS"\n'
    assert (target / "tinypkg-1.0.dist-info" / "METADATA").is_file()
    assert_logged(proxy, "https", f"{ORIGIN_HOST}:{port}")
    assert_no_password(proxy)


# --------------------------------------------------------------------------- Node undici


def test_node_undici_proxy_agent_through_the_tls_listener(
    proxyd_factory: Any, ca: ProxyCA, origins: Origins, client_env: dict[str, str]
) -> None:
    node = require_tool("node")
    if not (NODE_DIR / "node_modules" / "undici").is_dir():
        missing(f"undici is not installed in {NODE_DIR} (make test runs npm ci there)")
    proxy, tls_port = start_tls_proxyd(proxyd_factory, ca)
    proc = run_client(
        [
            node,
            str(NODE_SCRIPT),
            tls_url(tls_port, USER, PASSWORD),
            origin(origins, "https", "/undici"),
            str(ca.pem),
            str(origins.ca_pem),
        ],
        client_env,
        cwd=NODE_DIR,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\nproxy:\n{proxy.log()}"
    assert json.loads(proc.stdout) == {"status": 200, "body": "origin-http /undici"}
    assert_logged(proxy, "https", authority(origins, "https"))
    assert_no_password(proxy)


# --------------------------------------------------------------------------- keystoneauth1

TOKEN = "tok123"


class FakeKeystoneHandler(BaseHTTPRequestHandler):
    """Keystone v3, just enough: GET /v3 (version document), POST /v3/auth/tokens."""

    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: Any = self.server
        server.seen.append(("GET", self.path))
        if self.path.rstrip("/") == "/v3":
            base = f"https://{ORIGIN_HOST}:{server.server_address[1]}/v3/"
            version = {
                "id": "v3.14",
                "status": "stable",
                "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": base}],
                "media-types": [
                    {
                        "base": "application/json",
                        "type": "application/vnd.openstack.identity-v3+json",
                    }
                ],
            }
            self._send(200, {"version": version})
        else:
            self._send(404, {"error": {"code": 404, "message": "not found"}})

    def do_POST(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        server.seen.append(("POST", self.path))
        server.bodies.append(request)
        if self.path != "/v3/auth/tokens":
            self._send(404, {"error": {"code": 404, "message": "not found"}})
            return
        domain = {"id": "default", "name": "Default"}
        token = {
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": "2024-01-01T00:00:00.000000Z",
            "methods": ["password"],
            "user": {"id": "u", "name": "demo", "domain": domain},
            "project": {"id": "p", "name": "proj", "domain": domain},
            "roles": [{"id": "r", "name": "member"}],
            "catalog": [],
        }
        self._send(201, {"token": token}, {"X-Subject-Token": TOKEN})


KEYSTONE_CLIENT = """
import sys
from keystoneauth1 import session
from keystoneauth1.identity import v3

auth = v3.Password(
    auth_url=sys.argv[1],
    username="demo",
    password="x",
    user_domain_id="default",
    project_id="p",
)
print(session.Session(auth=auth, timeout=20).get_token())
"""


def test_keystoneauth1_gets_a_token_through_the_tls_listener(
    proxyd_factory: Any, ca: ProxyCA, servers: LocalServers, client_home: Path
) -> None:
    require_tool("keystoneauth1")
    with servers.serve(FakeKeystoneHandler, bodies=[]) as keystone:
        port = keystone.server_address[1]
        proxy, tls_port = start_tls_proxyd(proxyd_factory, ca, extra_rules=allow_port(port))
        env = clean_env(
            client_home,
            HTTPS_PROXY=tls_url(tls_port, USER, PASSWORD),
            REQUESTS_CA_BUNDLE=str(servers.bundle_with(ca)),
        )
        auth_url = f"https://{ORIGIN_HOST}:{port}/v3"
        proc = run_client([sys.executable, "-c", KEYSTONE_CLIENT, auth_url], env, timeout=60)
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\nproxy:\n{proxy.log()}"
        assert proc.stdout.strip() == TOKEN, proc.stdout
        assert keystone.seen == [("POST", "/v3/auth/tokens")]  # no discovery for a /v3 URL
        identity = keystone.bodies[-1]["auth"]["identity"]
        assert identity["password"]["user"]["name"] == "demo"
    assert_logged(proxy, "https", f"{ORIGIN_HOST}:{port}")
    assert_no_password(proxy)
