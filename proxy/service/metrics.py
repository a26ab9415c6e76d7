"""Prometheus metrics on a registry proxyd owns (the global one rejects a second build).

Labels are bounded: kind, decision, reason and result come from fixed sets, never from
hosts or rule text. The one exception is a grant's `name` (GrantCollector): one series
per user with an expiry, which the operator's own list of grants bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.core.digest import UserSecrets
from proxy.core.grants import STATES, state_of
from proxy.core.policy import TrustedSource

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GrantCollector(Collector):
    """Each grant's expiry, and the grants by kind and state, read at scrape time: users
    from the users file, trusted sources from the config, jump accounts from the file
    `proxyd jump` publishes (names and expiries; their state is root's). The `name` label
    is the one place a user name is a label: the operator's list of grants bounds it, as
    it bounds the users file."""

    def __init__(
        self,
        users: Callable[[], Collection[UserSecrets]],
        trusted: Callable[[], Collection[TrustedSource]],
        jump: Callable[[], dict[str, float]],
    ) -> None:
        self.users = users
        self.trusted = trusted
        self.jump = jump

    def collect(self) -> Iterable[Metric]:
        now = time.time()
        expiry = GaugeMetricFamily(
            "proxyd_grant_expiry_timestamp_seconds",
            "When each grant expires (seconds since the epoch); grants without expiry absent",
            labels=["kind", "name"],
        )
        by_state = GaugeMetricFamily(
            "proxyd_grants", "Grants by kind and state", labels=["kind", "state"]
        )
        grants = [("user", u.name, u.expires, u.locked) for u in self.users()]
        grants += [("trusted_source", t.name, t.expires, False) for t in self.trusted()]
        grants += [("jump", name, expires, False) for name, expires in self.jump().items()]
        for kind in ("user", "trusted_source", "jump"):
            counts = dict.fromkeys(STATES, 0)
            for _, name, expires, locked in (g for g in grants if g[0] == kind):
                counts[state_of(expires, locked, now)] += 1
                if expires is not None:
                    expiry.add_metric([kind, name], expires)
            for state, count in counts.items():
                by_state.add_metric([kind, state], count)
        yield expiry
        yield by_state


def register_process_metrics(
    registry: CollectorRegistry,
    users: Callable[[], Collection[UserSecrets]],
    trusted: Callable[[], Collection[TrustedSource]] = tuple,
    jump: Callable[[], dict[str, float]] = dict,
) -> None:
    """The users gauge, the grants and the build info: one per serving process, read at
    scrape time. Under `serve --workers N` the supervisor registers them (they can't be
    summed over the workers, whose other metrics go to prometheus-client's multiprocess
    files)."""
    gauge = Gauge("proxyd_users", "Users configured (usable in the realm)", registry=registry)
    gauge.set_function(lambda: float(len(users())))
    registry.register(GrantCollector(users, trusted, jump))
    Info("proxyd_build", "proxyd build information", registry=registry).info(
        {"version": __version__}
    )


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "proxyd_requests",
            "Requests and tunnels by kind, decision, status and listener (http or tls)",
            ["kind", "decision", "status", "listener"],
            registry=r,
        )
        self.auth_failures = Counter(
            "proxyd_auth_failures", "Failed authentications by reason", ["reason"], registry=r
        )
        self.tunnels_active = Gauge(
            "proxyd_tunnels_active",
            "Open CONNECT tunnels",
            registry=r,
            multiprocess_mode="livesum",  # summed over the workers alive
        )
        self.bytes = Counter(
            "proxyd_bytes", "Bytes relayed (up: client to server)", ["direction"], registry=r
        )
        self.request_duration = Histogram(
            "proxyd_request_duration_seconds",
            "Forwarded HTTP request duration",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tunnel_setup = Histogram(
            "proxyd_tunnel_setup_seconds",
            "CONNECT received to 200 sent",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.internal_errors = Counter(
            "proxyd_internal_errors",
            "Requests and connections refused because something inside proxyd failed "
            "(where: admission, the gate's boundary; guard, the engine's second check)",
            ["where"],
            registry=r,
        )
        self.accept_pauses = Counter(
            "proxyd_accept_pauses",
            "Times the proxy listener paused accepting (out of file descriptors, mostly)",
            registry=r,
        )
        self.reloads = Counter(
            "proxyd_reloads",
            "Config, users and certificate reloads",
            ["what", "result"],
            registry=r,
        )
        self.tls_handshakes = Counter(
            "proxyd_tls_handshakes",
            "TLS handshakes with clients by result (ok, failed: untrusted, timed out or noise)",
            ["result"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "proxyd_tls_certificate_expiry_timestamp_seconds",
            "When the serving TLS certificate expires (seconds since the epoch)",
            registry=r,
            multiprocess_mode="min",
        )
