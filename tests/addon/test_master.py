"""The slim master: exactly proxyd's addons, and the listener's backlog."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from proxy.core import config
from proxy.engine.master import build_master
from proxy.engine.mitm_internals import Listener
from proxy.service.runtime import build_runtime

CONFIG = """
listen: 127.0.0.1:0
auth: {users_file: users.digest, nonce_secret_file: nonce.secret}
zones: {test: [127.0.0.2/32]}
rules: [{name: r, from: [any], to: [test], ports: [80]}]
"""


@pytest.fixture
def runtime(tmp_path: Path):
    path = tmp_path / "proxyd.yaml"
    path.write_text(CONFIG)
    return path, build_runtime(config.load(path), first_start=True)


def test_only_proxyd_addons_are_loaded(runtime) -> None:
    path, rt = runtime

    async def names() -> list[str]:
        master, _ = build_master(path, rt)
        return [type(a).__name__ for a in master.addons.chain]

    loaded = asyncio.run(names())
    assert loaded == ["Proxyserver", "TunnelLayers", "ProxydAddon", "EngineGuard", "Lifecycle"]
    # No `block` addon: partners come from public addresses, block_global would drop them.
    # No TLS addon: CONNECT is never intercepted.


def test_listener_backlog_is_raised(runtime) -> None:
    path, rt = runtime

    async def backlog() -> int:
        master, _ = build_master(path, rt)
        ps = master.addons.get("proxyserver")
        await ps.setup_servers()
        try:
            (server,) = next(iter(ps.servers))._servers
            sock = server.sockets[0]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            # The backlog isn't readable back from the socket; ss(8) shows it as the
            # listening socket's Send-Q (inet_diag's sk_max_ack_backlog).
            port = sock.getsockname()[1]
            out = subprocess.run(
                ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
            ).stdout.split()
            return int(out[2])
        finally:
            await ps.servers.update([])

    assert asyncio.run(backlog()) == Listener.backlog


def test_mitmproxys_default_addons_are_never_imported() -> None:
    """proxy.engine.mitm_internals imports the proxy server alone (14.5 MB of RSS less)."""
    import sys

    code = (
        "import sys, proxy.engine.master\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('mitmproxy.addons.'))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out.split(",") == ["mitmproxy.addons.proxyserver", "mitmproxy.addons.termlog"]
