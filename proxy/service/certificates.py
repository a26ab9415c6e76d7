"""The certificate the TLS listener serves: loaded at start, re-read when it changes.

A stat of both files every second; a new version (certbot's renewal, cert-manager's
Secret update, a SIGHUP that names other files) is loaded whole and checked before it
replaces the serving one, and only new handshakes use it: open connections and tunnels
keep the TLS session they have. A version that fails the checks is one ERROR line and
one `proxyd_reloads_total{what="certificate",result="error"}`; the certificate already
serving keeps serving until the files are right again.
"""

from __future__ import annotations

import logging
import ssl
import time

from proxy.core.config import TlsConfig
from proxy.core.errors import ConfigError
from proxy.effects import tlsfiles
from proxy.service.metrics import Metrics

log = logging.getLogger("proxyd")

CHECK_INTERVAL = 1.0  # seconds between two looks at the files


class Certificates:
    def __init__(self, tls: TlsConfig, metrics: Metrics) -> None:
        """Raises ConfigError when the files are not usable (start-up fails)."""
        self.tls = tls
        self.metrics = metrics
        self.current = tlsfiles.load(tls, time.time())
        self.failed: tlsfiles.Stamp | None = None  # the version that failed, not retried
        self._published()

    @property
    def context(self) -> ssl.SSLContext:
        return self.current.context

    def replace(self, tls: TlsConfig) -> None:
        """A reload's new files, checked now: ConfigError refuses the whole reload."""
        loaded = tlsfiles.load(tls, time.time())
        self.tls, self.current, self.failed = tls, loaded, None
        self._published()

    def check(self) -> None:
        """Called every CHECK_INTERVAL: load the files again if they changed."""
        now = tlsfiles.stamp(self.tls)
        if now == self.current.stamp or now == self.failed:
            return
        try:
            loaded = tlsfiles.load(self.tls, time.time())
        except ConfigError as e:
            self.failed = now
            self.metrics.reloads.labels("certificate", "error").inc()
            log.error("certificate reload refused, the previous one keeps serving:\n%s", e)
            return
        self.current, self.failed = loaded, None
        self.metrics.reloads.labels("certificate", "ok").inc()
        log.info("certificate reloaded: %s, valid until %s", loaded.subject, loaded.expires)
        self._published()

    def _published(self) -> None:
        self.metrics.certificate_expiry.set(self.current.not_after)
