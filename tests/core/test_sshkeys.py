"""Public key validation: real keys from ssh-keygen pass, hostile files are refused."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from proxy.core.sshkeys import BadKey, parse_key_file


def keygen(tmp_path: Path, *args: str, comment: str = "alice@partner") -> str:
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen missing (Debian openssh-client)")
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", comment, "-f", str(key), *args], check=True)
    return (tmp_path / "key.pub").read_text()


def fingerprint(text: str, tmp_path: Path) -> str:
    path = tmp_path / "fp.pub"
    path.write_text(text)
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    return out.stdout.split()[1]


@pytest.mark.parametrize(
    "args, bits",
    [
        (["-t", "ed25519"], 256),
        (["-t", "ecdsa", "-b", "256"], 256),
        (["-t", "ecdsa", "-b", "521"], 521),
        (["-t", "rsa", "-b", "3072"], 3072),
    ],
)
def test_real_keys_pass_with_ssh_keygens_fingerprint(
    tmp_path: Path, args: list[str], bits: int
) -> None:
    text = keygen(tmp_path, *args)
    key = parse_key_file(text, rsa_min_bits=3072)
    assert key.bits == bits
    assert key.comment == "alice@partner"
    assert key.fingerprint == fingerprint(text, tmp_path)
    assert key.line() == text.strip()


def test_rsa_floor_is_configurable(tmp_path: Path) -> None:
    text = keygen(tmp_path, "-t", "rsa", "-b", "2048")
    with pytest.raises(BadKey, match="2048 bits: at least 3072"):
        parse_key_file(text, rsa_min_bits=3072)
    assert parse_key_file(text, rsa_min_bits=2048).bits == 2048


def _wire(*parts: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(p)) + p for p in parts)).decode()


ED = "ssh-ed25519 " + _wire(b"ssh-ed25519", b"k" * 32)


@pytest.mark.parametrize(
    "text, message",
    [
        (f'command="/bin/sh" {ED} x', "options or unknown type"),
        (f"no-pty {ED} x", "options or unknown type"),
        (f"{ED} one\n{ED} two\n", "exactly one public key"),
        (f"{ED} a\rb", "control characters"),
        (f"{ED} tab\there", "printable ASCII"),
        (f"{ED} " + "c" * 201, "printable ASCII"),
        ("ssh-dss " + _wire(b"ssh-dss", b"p", b"q", b"g", b"y"), "DSA keys are refused"),
        ("ssh-ed25519 !!!notbase64", "not base64"),
        ("ssh-ed25519", "no key data"),
        ("ssh-ed25519 " + _wire(b"ssh-rsa", b"\x01", b"\x02"), "the line says"),
        ("ssh-ed25519 " + _wire(b"ssh-ed25519", b"k" * 31), "wrong length"),
        ("ssh-ed25519 " + _wire(b"ssh-ed25519", b"k" * 32, b"extra"), "trailing bytes"),
        ("ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\xffabc").decode(), "truncated"),
        ("", "found 0 lines"),
        ("ssh-foo AAAA", "unknown type"),
    ],
)
def test_hostile_key_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(BadKey, match=message):
        parse_key_file(text, rsa_min_bits=3072)


def test_1024_bit_rsa_refused(tmp_path: Path) -> None:
    text = keygen(tmp_path, "-t", "rsa", "-b", "1024")
    with pytest.raises(BadKey, match="1024 bits"):
        parse_key_file(text, rsa_min_bits=2048)
