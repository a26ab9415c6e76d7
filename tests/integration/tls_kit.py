"""A proxyd with a TLS listener, its own test CA, and helpers to reach it.

The proxy's certificate comes from a trustme CA of its own, separate from the origins'
CA, so every client test shows which option makes a client trust the proxy hop.
`both_cas` is one bundle of the two, for clients that have only one CA option
(requests, pip, keystoneauth1, aiohttp; see ../shared/notes/tls-clients.md).
"""

from __future__ import annotations

import datetime
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import IO_TIMEOUT, PROXY_HOST, Origins, ProxydHandle, require_tool

_TLS_LISTENING = re.compile(r"proxyd: TLS listening on (\S+):(\d+)\s*$")


@dataclass
class ProxyCA:
    ca: Any  # trustme.CA
    directory: Path

    @property
    def pem(self) -> Path:
        return self.directory / "proxy-ca.pem"

    def issue(self, name: str = "tls", **kwargs: Any) -> tuple[Path, Path]:
        """A certificate for the proxy (127.0.0.1, proxy.test, localhost): (chain, key)."""
        cert = self.ca.issue_cert(PROXY_HOST, "proxy.test", "localhost", **kwargs)
        chain, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key.write_bytes(cert.private_key_pem.bytes())
        key.chmod(0o600)
        return chain, key


def proxy_ca(directory: Path) -> ProxyCA:
    trustme = require_tool("trustme")
    directory.mkdir(parents=True, exist_ok=True)
    made = ProxyCA(trustme.CA(organization_name="proxyd test proxy CA"), directory)
    made.ca.cert_pem.write_to_path(str(made.pem))
    return made


def both_cas(ca: ProxyCA, origins: Origins) -> Path:
    bundle = ca.directory / "both-cas.pem"
    bundle.write_bytes(ca.pem.read_bytes() + origins.ca_pem.read_bytes())
    return bundle


def auth_section(**extra: Any) -> dict[str, Any]:
    """The harness's auth section with TLS's options added."""
    return {
        "users_file": "users.digest",
        "nonce_secret_file": "nonce.secret",
        "nonce_lifetime": 300,
        "algorithms": ["MD5", "SHA-256"],
        **extra,
    }


def start_tls_proxyd(
    factory: Callable[..., ProxydHandle],
    ca: ProxyCA,
    basic_over_tls: bool = True,
    lock_on_plaintext: bool = False,
    **overrides: Any,
) -> tuple[ProxydHandle, int]:
    """proxyd with `tls_listen` on a free port; (handle, TLS port)."""
    chain, key = ca.issue()
    overrides.setdefault("admin_listen", f"{PROXY_HOST}:0")
    proxy = factory(
        tls_listen=f"{PROXY_HOST}:0",
        tls={"certificate": str(chain), "key": str(key)},
        auth=auth_section(basic_over_tls=basic_over_tls, lock_on_plaintext=lock_on_plaintext),
        **overrides,
    )
    match = proxy.wait_for_log(_TLS_LISTENING)
    return proxy, int(match.group(2))


def tls_url(port: int, user: str | None = None, password: str | None = None) -> str:
    credentials = f"{user}:{password}@" if user is not None else ""
    return f"https://{credentials}{PROXY_HOST}:{port}"


def tls_connect(port: int, ca: ProxyCA) -> ssl.SSLSocket:
    """A verified TLS connection to the proxy's TLS listener."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    raw = socket.create_connection((PROXY_HOST, port), timeout=IO_TIMEOUT)
    return context.wrap_socket(raw, server_hostname=PROXY_HOST)


def serial_of(sock: ssl.SSLSocket) -> int:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def expired_pair(ca: ProxyCA) -> tuple[Path, Path]:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    return ca.issue("expired", not_before=past, not_after=past + datetime.timedelta(days=30))
