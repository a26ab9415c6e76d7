"""Access log lines, sans-IO: a record in, one line of text out.

The default format is Squid's native access.log, so existing log tooling (parsers,
fail2ban filters, calamaris) reads it; proxyd's own fields follow the ten Squid ones.
`json` writes the same record as one JSON object per line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AccessRecord:
    time: float  # end of the request or tunnel, seconds since the epoch
    duration_ms: int
    client: str
    user: str | None
    method: str
    target: str  # URL, or host:port for CONNECT
    status: int
    bytes_up: int  # client to server
    bytes_down: int  # server to client
    rule: str | None
    auth: str  # ok, none, or a failure reason (bad_response, stale, basic, ...)
    upstream: str | None = None  # the address connected to
    content_type: str | None = None
    listener: str = "http"  # how the client reached the proxy: http (plain text) or tls


CLIENT_GONE = 499  # the client closed before the answer (nginx's code for it)


def squid_code(record: AccessRecord) -> str:
    if record.status in (403, 407) or record.status == 429:
        return "TCP_DENIED"
    if record.method == "CONNECT":
        return "TCP_TUNNEL_ABORTED" if record.status == CLIENT_GONE else "TCP_TUNNEL"
    return "TCP_MISS"


def format_squid(record: AccessRecord) -> str:
    hierarchy = f"HIER_DIRECT/{record.upstream}" if record.upstream else "HIER_NONE/-"
    return (
        f"{record.time:.3f} {record.duration_ms:6d} {record.client} "
        f"{squid_code(record)}/{record.status:03d} {record.bytes_down} {record.method} "
        f"{_field(record.target)} {_field(record.user)} {hierarchy} "
        f"{_field(record.content_type)} rule={_field(record.rule)} auth={record.auth} "
        f"up={record.bytes_up}"
    )


def format_json(record: AccessRecord) -> str:
    return json.dumps(asdict(record), separators=(",", ":"))


def _field(value: str | None) -> str:
    # Squid's format is space separated: a value must never add or hide a field.
    if not value:
        return "-"
    return "".join(c if 0x20 < ord(c) < 0x7F else f"%{ord(c):02X}" for c in value)


FORMATS = {"squid": format_squid, "json": format_json}
