"""The addon's hooks on mitmproxy's own test flows (`taddons`, `tflow`): the order of
admission inside a hook, without a live process.

The expected digests come from tests/digest_oracle.py, not from proxyd's own code.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import digest_oracle
import pytest
from mitmproxy.test import taddons, tflow, tutils

from proxy.core import config
from proxy.core.digest import DigestVerifier, NonceCodec, UserSecrets
from proxy.effects.logfile import LogFile
from proxy.engine.addon import ProxydAddon
from proxy.engine.guard import ADMITTED, Admitted, EngineGuard
from proxy.engine.mitm_internals import Proxyserver
from proxy.service.metrics import Metrics
from proxy.service.recorder import Recorder
from proxy.service.runtime import ListenPorts, Runtime

NOW_NONCE_RANDOM = b"r" * 12
REALM, PASSWORD = "proxyd", "wonderland"
ORIGIN, DENIED = "127.0.0.2", "127.0.0.3"
PEER = ("127.0.0.50", 40000)
PROXY = ("127.0.0.1", 3128)
CONFIG = f"""\
realm: {REALM}
auth: {{users_file: users, nonce_secret_file: secret}}
zones: {{lab: [{ORIGIN}/32]}}
rules:
  - {{name: partners, from: [any], to: [lab], ports: [80], auth: required}}
"""


class Resolver:
    async def resolve(self, name: str, port: int) -> tuple[Any, ...]:
        raise AssertionError("no name is resolved in these tests")


def make_runtime() -> Runtime:
    cfg = config.parse(CONFIG, Path("/cfg/proxyd.yaml"))
    alice = UserSecrets("alice", REALM, {"MD5": digest_oracle.ha1("MD5", "alice", REALM, PASSWORD)})
    verifier = DigestVerifier(
        REALM, ("MD5",), NonceCodec(b"k" * 32, 300), {"alice": alice}.get, replay=None
    )
    ports = ListenPorts(cfg.listen_port)
    return Runtime(cfg, cfg.policy, None, verifier, Resolver(), ports)  # type: ignore[arg-type]


@pytest.fixture
def addon(tmp_path: Path) -> ProxydAddon:
    runtime = make_runtime()
    recorder = Recorder(Metrics(), LogFile(tmp_path / "access.log"), "json")
    return ProxydAddon(runtime, recorder, {}, Proxyserver())


def flow(method: str = "GET", host: str = ORIGIN, port: int = 80, auth: str | None = None) -> Any:
    headers = [(b"Host", f"{host}:{port}".encode())]
    if auth is not None:
        headers.append((b"Proxy-Authorization", auth.encode()))
    request = tutils.treq(method=method.encode(), host=host, port=port, path=b"/x")
    request.headers.fields = tuple(headers)
    f = tflow.tflow(req=request)
    f.client_conn.peername = PEER
    f.client_conn.sockname = PROXY
    return f


def authorization(addon: ProxydAddon, method: str, uri: str, nc: int = 1) -> str:
    nonce = addon.runtime.verifier.nonces.issue(time.time(), NOW_NONCE_RANDOM)
    response = digest_oracle.response(
        "MD5",
        user="alice",
        realm=REALM,
        password=PASSWORD,
        method=method,
        uri=uri,
        nonce=nonce,
        nc=f"{nc:08x}",
        cnonce="c0ffee",
    )
    return (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="{uri}", qop=auth, '
        f'nc={nc:08x}, cnonce="c0ffee", response="{response}", algorithm=MD5'
    )


def run(addon: ProxydAddon, f: Any, *, guard: bool = False) -> Any:
    async def hooks() -> None:
        with taddons.context(addon):
            await addon.requestheaders(f)
            if guard:
                EngineGuard(addon.recorder.metrics).requestheaders(f)

    asyncio.run(hooks())
    return f


def test_no_credentials_is_a_407_with_a_challenge_and_no_admission_record(
    addon: ProxydAddon,
) -> None:
    f = run(addon, flow())
    assert f.response.status_code == 407
    assert f.response.headers["Proxy-Authenticate"].startswith('Digest realm="proxyd"')
    assert ADMITTED not in f.metadata


def test_good_credentials_admit_to_the_checked_address_and_strip_the_header(
    addon: ProxydAddon,
) -> None:
    f = run(addon, flow(auth=authorization(addon, "GET", "/x")))
    assert f.response is None
    assert f.metadata[ADMITTED] == Admitted(ORIGIN, 80)
    assert "Proxy-Authorization" not in f.request.headers  # never forwarded


def test_a_denied_destination_is_a_403_even_with_good_credentials(addon: ProxydAddon) -> None:
    f = run(addon, flow(host=DENIED, auth=authorization(addon, "GET", "/x")))
    assert f.response.status_code == 403
    assert ADMITTED not in f.metadata


def test_over_the_connection_limit_comes_first(addon: ProxydAddon) -> None:
    # Counted by the listener; the first request of an uncounted connection gets a 429,
    # before its credentials are even read.
    addon.counts.over.add(PEER)
    f = run(addon, flow(auth=authorization(addon, "GET", "/x")))
    assert f.response.status_code == 429
    assert f.response.headers["Connection"] == "close"


def test_an_exception_inside_the_boundary_is_a_500_counted_once(
    addon: ProxydAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("injected")

    monkeypatch.setattr(addon.admission, "begin", broken)
    f = run(addon, flow(auth=authorization(addon, "GET", "/x")))
    assert f.response.status_code == 500
    assert ADMITTED not in f.metadata
    metrics = addon.recorder.metrics.registry
    assert metrics.get_sample_value("proxyd_internal_errors_total", {"where": "admission"}) == 1


def test_the_guard_refuses_a_flow_that_left_the_gate_without_a_record(
    addon: ProxydAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def skipped(flow: Any) -> None:
        return None  # a gate bug: it decided nothing

    monkeypatch.setattr(addon, "requestheaders", skipped)
    f = run(addon, flow(), guard=True)
    assert f.response.status_code == 500


def test_a_connect_after_plain_requests_is_refused_with_a_reason(addon: ProxydAddon) -> None:
    f = flow(method="CONNECT")
    f.request.data.authority = f"{ORIGIN}:443".encode()

    async def hook() -> None:
        with taddons.context(addon):
            addon.http_connect(f)

    asyncio.run(hook())
    assert f.response.status_code == 400
    assert b"send CONNECT as the first request of a connection" in f.response.content
    assert f.response.headers["Connection"] == "close"
