"""One place where a finished request or tunnel is counted and logged."""

from __future__ import annotations

from proxy.core.accesslog import FORMATS, AccessRecord
from proxy.core.lastuse import Uses, merge_into, uses_of
from proxy.core.policy import TrustedSource
from proxy.effects.logfile import LogFile
from proxy.service.metrics import Metrics


class Recorder:
    def __init__(self, metrics: Metrics, log: LogFile, fmt: str) -> None:
        self.metrics = metrics
        self.log = log
        self.format = FORMATS[fmt]
        self.trusted: tuple[TrustedSource, ...] = ()  # the config's, set at each (re)load
        self.uses: Uses = {}  # grants used since the last-use file was last written

    def take_uses(self) -> Uses:
        uses, self.uses = self.uses, {}
        return uses

    def record(self, record: AccessRecord, decision: str) -> None:
        kind = "tunnel" if record.method == "CONNECT" else "http"
        self.metrics.requests.labels(kind, decision, str(record.status), record.listener).inc()
        if record.auth not in ("ok", "none", "no_credentials"):
            self.metrics.auth_failures.labels(record.auth).inc()
        if decision == "allow":  # a refusal's own body is not relayed traffic
            self.metrics.bytes.labels("up").inc(record.bytes_up)
            self.metrics.bytes.labels("down").inc(record.bytes_down)
        merge_into(self.uses, uses_of(record, decision == "allow", self.trusted))
        self.log.write(self.format(record))
