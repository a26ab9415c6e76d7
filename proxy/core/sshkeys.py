"""OpenSSH public keys, validated before any line is written. Sans-IO.

A key file from a partner must hold exactly one key and nothing else: an options prefix
(`command=...`, `permitopen=...`) would grant what the account must not have, a second
line would smuggle in a second key, and a newline in the comment is a second line too.
We parse the SSH wire format ourselves, so the declared type must match the blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

ED25519 = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com")
ECDSA = (
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
RSA = ("ssh-rsa",)
REFUSED_TYPES = {"ssh-dss": "DSA keys are refused (broken and removed from OpenSSH)"}
MAX_COMMENT = 200
_COMMENT_RE = re.compile(r"[\x20-\x7e]*")


class BadKey(ValueError):
    """A key file that must not be installed; the message says why."""


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str
    bits: int

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` prints it: SHA256:base64, unpadded."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def line(self) -> str:
        encoded = base64.b64encode(self.blob).decode()
        return f"{self.type} {encoded} {self.comment}".rstrip()


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise BadKey("truncated key data")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise BadKey("truncated key data")
    return blob[offset + 4 : end], end


def _key_bits(key_type: str, blob: bytes) -> int:
    declared, offset = _read_string(blob, 0)
    if declared.decode("ascii", "replace") != key_type:
        raise BadKey(f"key data says {declared!r}, the line says {key_type!r}")
    if key_type in RSA:
        _e, offset = _read_string(blob, offset)
        n, offset = _read_string(blob, offset)
        bits = int.from_bytes(n, "big").bit_length()
    elif key_type in ED25519:
        point, offset = _read_string(blob, offset)
        if len(point) != 32:
            raise BadKey("ed25519 key of the wrong length")
        bits = 256
    else:
        curve, offset = _read_string(blob, offset)
        _q, offset = _read_string(blob, offset)
        if not key_type.split("@")[0].endswith(curve.decode("ascii", "replace")):
            raise BadKey("ecdsa curve does not match the key type")
        bits = int(curve.decode()[len("nistp") :]) if curve.startswith(b"nistp") else 0
    if key_type.startswith("sk-"):
        _application, offset = _read_string(blob, offset)
    if offset != len(blob):
        raise BadKey("trailing bytes in key data")
    return bits


def parse_key_file(text: str, rsa_min_bits: int) -> PublicKey:
    """The one public key in `text`, or BadKey saying what is wrong with it."""
    if "\r" in text or "\0" in text:
        raise BadKey("control characters in the key file")
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) != 1:
        raise BadKey(f"expected exactly one public key, found {len(lines)} lines")
    fields = lines[0].strip().split(" ", 2)
    key_type = fields[0]
    if key_type in REFUSED_TYPES:
        raise BadKey(REFUSED_TYPES[key_type])
    if key_type not in ED25519 + ECDSA + RSA:
        raise BadKey(
            f"not a plain public key line (options or unknown type {key_type[:40]!r}); "
            "send the .pub file exactly as ssh-keygen wrote it"
        )
    if len(fields) < 2:
        raise BadKey("no key data")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadKey("key data is not base64") from e
    comment = fields[2].strip() if len(fields) > 2 else ""
    if len(comment) > MAX_COMMENT or not _COMMENT_RE.fullmatch(comment):
        raise BadKey("the comment must be printable ASCII, at most 200 characters")
    bits = _key_bits(key_type, blob)
    if key_type in RSA and bits < rsa_min_bits:
        raise BadKey(f"RSA key of {bits} bits: at least {rsa_min_bits} are required")
    return PublicKey(key_type, blob, comment, bits)
