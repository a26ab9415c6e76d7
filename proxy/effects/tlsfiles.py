"""The proxy's TLS certificate and key: read, checked, made into a server context.

Checked at check-config, at start and at every reload (SIGHUP, or the files changing, as
certbot and cert-manager rotate them): a certificate that is unreadable, not PEM, expired
or not yet valid, or a key that is not its pair is a `ConfigError` naming the file, and
the context already serving keeps serving.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from proxy.core.config import TlsConfig
from proxy.core.errors import ConfigError

Stamp = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class ServerCertificate:
    context: ssl.SSLContext
    not_after: float  # seconds since the epoch
    subject: str
    stamp: Stamp  # the files as they were read (device, inode, size, mtime)

    @property
    def expires(self) -> str:
        return _when(self.not_after)


def stamp(tls: TlsConfig) -> Stamp:
    """What tells a changed file from the one loaded; a missing file is a stamp too."""
    stamps = []
    for path in (tls.certificate, tls.key):
        try:
            st = os.stat(path)  # follows symlinks: certbot's live/ and Kubernetes' ..data
        except OSError:
            stamps.append((0, 0, -1, 0))
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def load(tls: TlsConfig, now: float) -> ServerCertificate:
    """A server context for `tls`, or ConfigError saying what is wrong with which file."""
    before = stamp(tls)
    pem = _read(tls.certificate, "tls.certificate")
    _read(tls.key, "tls.key")
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(
            [f"tls.certificate: {tls.certificate}: no PEM certificate in it"]
        ) from None
    leaf = chain[0]
    not_before = leaf.not_valid_before_utc.timestamp()
    not_after = leaf.not_valid_after_utc.timestamp()
    if now >= not_after:
        raise ConfigError([f"tls.certificate: {tls.certificate}: expired on {_when(not_after)}"])
    if now < not_before:
        raise ConfigError(
            [f"tls.certificate: {tls.certificate}: not valid before {_when(not_before)}"]
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])  # proxyd speaks HTTP/1.1 to its clients
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: no password, an error.
        context.load_cert_chain(tls.certificate, tls.key, password=b"")
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            message = f"tls.key: {tls.key}: not the key of {tls.certificate}"
        else:
            message = f"tls.key: {tls.key}: cannot be used with the certificate ({reason})"
        raise ConfigError([message]) from None
    return ServerCertificate(context, not_after, leaf.subject.rfc4514_string(), before)


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{key}: {path}: {e.strerror or e}"]) from None


def _when(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
