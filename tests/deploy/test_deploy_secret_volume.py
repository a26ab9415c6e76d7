"""proxyd on a Kubernetes Secret volume, as the kubelet lays one out.

The kubelet's atomic writer puts a Secret's files in a timestamped folder, points a
`..data` symlink at it, and makes each file name a symlink through `..data`. An update
writes a new timestamped folder and renames a new `..data` over the old one. This
recreates that layout (a real kubelet is not available here) under a real `proxyd serve`:
a user added to the Secret is accepted without a restart, the placeholder Secret
shipped in deploy/kubernetes (an empty nonce secret) stops proxyd with a clear error, and
a renewed kubernetes.io/tls Secret (cert-manager's proxyd-tls) is served by the TLS
listener without a restart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from deploy_kit import DEPLOY
from harness import (
    PROXY_HOST,
    Origins,
    add_user,
    clean_env,
    proxyd_bin,
    raw_proxy_request,
    write_proxyd_config,
)

pytestmark = pytest.mark.timeout(120)

RELOAD_BOUND = 3.0  # the users file is checked once a second


def project(volume: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` into `volume` the way the kubelet updates a Secret volume."""
    volume.mkdir(exist_ok=True)
    stamp = volume / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    stamp.mkdir(mode=0o750)
    for name, data in files.items():
        (stamp / name).write_bytes(data)
        (stamp / name).chmod(0o440)
    data_link = volume / "..data"
    old = data_link.resolve() if data_link.is_symlink() else None
    (volume / "..data_tmp").symlink_to(stamp.name)
    os.replace(volume / "..data_tmp", data_link)
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


def users_file_with(tmp: Path, origins: Origins, users: Mapping[str, str]) -> bytes:
    """A users file made by `proxyd users add`, as an operator makes one for the Secret."""
    scratch = tmp / f"scratch-{len(list(tmp.iterdir()))}"
    scratch.mkdir()
    config = write_proxyd_config(scratch, origins)
    env = clean_env(scratch)
    for name, password in users.items():
        add_user(config, name, password, env)
    return (scratch / "users.digest").read_bytes()


def _auth(volume: Path) -> dict[str, object]:
    return {
        "users_file": str(volume / "users.digest"),
        "nonce_secret_file": str(volume / "nonce.secret"),
        "nonce_lifetime": 300,
        "algorithms": ["MD5", "SHA-256"],
    }


def test_user_added_to_the_secret_is_accepted_without_restart(
    proxyd_factory: object, origins: Origins, tmp_path: Path
) -> None:
    volume = tmp_path / "auth"
    secret = os.urandom(32)
    work = tmp_path / "work"
    work.mkdir()
    project(
        volume,
        {
            "users.digest": users_file_with(work, origins, {"alice": "alice-password"}),
            "nonce.secret": secret,
        },
    )
    proxy = proxyd_factory(users={}, auth=_auth(volume))  # type: ignore[operator]
    host, port = origins.http
    url = f"http://{host}:{port}/secret-volume"

    def status(user: str, password: str) -> int:
        return raw_proxy_request(proxy, "GET", url, auth=(user, password)).status

    assert status("alice", "alice-password") == 200
    assert status("carol", "carol-password") == 407

    project(
        volume,
        {
            "users.digest": users_file_with(
                work, origins, {"alice": "alice-password", "carol": "carol-password"}
            ),
            "nonce.secret": secret,
        },
    )
    start = time.monotonic()
    while status("carol", "carol-password") != 200:
        assert time.monotonic() - start < RELOAD_BOUND, "Secret update not seen"
        time.sleep(0.1)
    assert status("alice", "alice-password") == 200


def test_the_shipped_placeholder_secret_stops_proxyd_clearly(
    origins: Origins, tmp_path: Path
) -> None:
    shipped = yaml.safe_load((DEPLOY / "kubernetes" / "secret.yaml").read_text())
    volume = tmp_path / "auth"
    project(volume, {k: v.encode() for k, v in shipped["stringData"].items()})
    config = write_proxyd_config(tmp_path, origins, auth=_auth(volume))
    proc = subprocess.run(
        [str(proxyd_bin()), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(tmp_path),
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nonce secret too short" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_renewed_tls_secret_is_served_without_restart(
    proxyd_factory: object, tmp_path: Path
) -> None:
    """cert-manager renews proxyd-tls; the kubelet swaps `..data`; new handshakes get the
    new certificate. Both files change in one rename, so proxyd never sees a new key
    with the old certificate (no refused reload on the way)."""
    from tls_kit import proxy_ca, serial_of, tls_connect

    ca = proxy_ca(tmp_path / "ca")

    def secret(name: str) -> dict[str, bytes]:
        chain, key = ca.issue(name)
        return {"tls.crt": chain.read_bytes(), "tls.key": key.read_bytes()}

    volume = tmp_path / "tls"
    project(volume, secret("issued"))
    proxy = proxyd_factory(  # type: ignore[operator]
        tls_listen=f"{PROXY_HOST}:0",
        tls={"certificate": str(volume / "tls.crt"), "key": str(volume / "tls.key")},
        admin_listen=f"{PROXY_HOST}:0",
    )
    port = int(proxy.wait_for_log(r"TLS listening on \S+:(\d+)").group(1))
    with tls_connect(port, ca) as first:
        issued = serial_of(first)

    project(volume, secret("renewed"))
    proxy.wait_for_log(r"certificate reloaded", timeout=RELOAD_BOUND)
    with tls_connect(port, ca) as fresh:
        assert serial_of(fresh) != issued
    assert "certificate reload refused" not in proxy.log(), proxy.log()
