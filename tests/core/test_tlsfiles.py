"""The proxy's certificate and key files: every way they can be wrong is a clear error."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
import trustme

from proxy.core.config import TlsConfig
from proxy.core.errors import ConfigError
from proxy.core.pac import directive
from proxy.effects import tlsfiles


def pair(directory: Path, ca: trustme.CA, name: str = "tls", **kw: object) -> TlsConfig:
    cert = ca.issue_cert("127.0.0.1", **kw)  # type: ignore[arg-type]
    chain, key = directory / f"{name}.crt", directory / f"{name}.key"
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return TlsConfig(chain, key)


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_a_good_pair_loads(tmp_path: Path, key_type: trustme.KeyType) -> None:
    ca = trustme.CA(key_type=key_type)
    loaded = tlsfiles.load(pair(tmp_path, ca, key_type=key_type), time.time())
    assert loaded.not_after > time.time()
    assert loaded.context.minimum_version.name == "TLSv1_2"


def test_every_bad_file_is_named(tmp_path: Path) -> None:
    ca = trustme.CA()
    good, other = pair(tmp_path, ca), pair(tmp_path, ca, "other")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = pair(tmp_path, ca, "old", not_before=past, not_after=past + datetime.timedelta(1))
    future = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    early = pair(tmp_path, ca, "early", not_before=future, not_after=future)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    cases = [
        (TlsConfig(good.certificate, other.key), "tls.key", "not the key of"),
        (expired, "tls.certificate", "expired on 2020-01-02"),
        (early, "tls.certificate", "not valid before 2100-01-01"),
        (TlsConfig(tmp_path / "missing.crt", good.key), "tls.certificate", "No such file"),
        (TlsConfig(good.certificate, tmp_path / "missing.key"), "tls.key", "No such file"),
        (TlsConfig(junk, good.key), "tls.certificate", "no PEM certificate"),
        (TlsConfig(good.certificate, junk), "tls.key", "cannot be used"),
    ]
    for tls, key, message in cases:
        with pytest.raises(ConfigError) as error:
            tlsfiles.load(tls, time.time())
        assert error.value.problems[0].startswith(key + ":"), error.value.problems
        assert message in error.value.problems[0], error.value.problems


def test_an_encrypted_key_is_an_error_not_a_prompt(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    tls = pair(tmp_path, trustme.CA())
    key = serialization.load_pem_private_key(tls.key.read_bytes(), None)
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match=r"tls\.key"):
        tlsfiles.load(tls, time.time())


def test_the_stamp_changes_with_either_file(tmp_path: Path) -> None:
    tls = pair(tmp_path, trustme.CA())
    before = tlsfiles.stamp(tls)
    os.utime(tls.key, ns=(1, 1))
    assert tlsfiles.stamp(tls) != before
    tls.key.unlink()
    assert tlsfiles.stamp(tls)[1] == (0, 0, -1, 0)


def test_the_pac_directive() -> None:
    assert directive("proxy.example", 3128) == "PROXY proxy.example:3128"
    assert directive("proxy.example", 3128, 3129) == (
        "HTTPS proxy.example:3129; PROXY proxy.example:3128"
    )
    assert directive("::1", 3128, 3129) == "HTTPS [::1]:3129; PROXY [::1]:3128"
