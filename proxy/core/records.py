"""What goes into the access log for each way a request or tunnel ends (sans-IO).

Both fronts build their records here, so a log field is written once: an admitted
exchange (`Exchange`, counted while it runs), a refusal, and the fail-closed boundary's
internal error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.core.accesslog import AccessRecord
from proxy.core.admission import Ask, Refuse


@dataclass
class Exchange:
    """What proxyd knows of one admitted request or tunnel until it ends."""

    started: float
    client: str
    user: str | None
    method: str
    target: str
    rule: str | None
    upstream: str
    bytes_up: int = 0
    bytes_down: int = 0
    status: int = 200
    content_type: str | None = field(default=None)
    read_timed_out: bool = False
    listener: str = "http"
    revoked: str | None = None  # why revocation ended it (removed, locked, ...)

    # Stream callbacks for bodies mitmproxy streams instead of buffering.
    def count_up(self, chunk: bytes) -> bytes:
        self.bytes_up += len(chunk)
        return chunk

    def count_down(self, chunk: bytes) -> bytes:
        self.bytes_down += len(chunk)
        return chunk

    def count(self, up: bool, n: int) -> None:
        if up:
            self.bytes_up += n
        else:
            self.bytes_down += n

    def record(self, now: float) -> AccessRecord:
        return AccessRecord(
            time=now,
            duration_ms=int((now - self.started) * 1000),
            client=self.client,
            user=self.user,
            method=self.method,
            target=self.target,
            status=self.status,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            rule=self.rule,
            auth=f"revoked_{self.revoked}" if self.revoked else "ok" if self.user else "none",
            upstream=self.upstream,
            content_type=self.content_type,
            listener=self.listener,
        )


def refusal_record(ask: Ask, refusal: Refuse, body_bytes: int, now: float) -> AccessRecord:
    return AccessRecord(
        time=now,
        duration_ms=0,
        client=ask.peer,
        user=refusal.user,
        method=ask.display_method(),
        target=ask.display_target(),
        status=refusal.status,
        bytes_up=0,
        bytes_down=body_bytes,
        rule=refusal.rule,
        auth=refusal.auth,
        content_type="text/plain",
        listener=listener_of(ask),
    )


def listener_of(ask: Ask) -> str:
    return listener_name(ask.tls)


def listener_name(tls: bool) -> str:
    """The `listener` of a record and a metric: how the client reached the proxy."""
    return "tls" if tls else "http"


def unjudged_record(
    peer: str,
    method: str,
    target: str,
    status: int,
    now: float,
    body_bytes: int = 0,
    listener: str = "http",
    user: str | None = None,
    auth: str = "none",
) -> AccessRecord:
    """A connection answered before any decision (noise, a malformed head, plain text on
    the TLS port) or by the boundary's error path (500): method and target as printable
    text, and the user a refused head named."""
    return AccessRecord(
        time=now,
        duration_ms=0,
        client=peer,
        user=user,
        method=method,
        target=target,
        status=status,
        bytes_up=0,
        bytes_down=body_bytes,
        rule=None,
        auth=auth,
        listener=listener,
    )
