"""Prometheus metrics on a registry proxyd owns (the global one rejects a second build).

Labels are bounded: kind, decision, reason and result come from fixed sets, never from
user names, hosts or rule text an operator could grow without bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """`worker=True` under `serve --workers N`: values go to prometheus-client's
    multiprocess files (PROMETHEUS_MULTIPROC_DIR, set by the supervisor) and the
    supervisor, which serves /metrics, adds the users gauge and the build info itself
    (neither can be summed across processes)."""

    def __init__(self, registry: CollectorRegistry | None = None, worker: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "proxyd_requests",
            "Requests and tunnels by kind, decision and status",
            ["kind", "decision", "status"],
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
        self.reloads = Counter(
            "proxyd_reloads", "Config and users reloads", ["what", "result"], registry=r
        )
        self.users: Gauge | None = None
        if not worker:
            self.users = Gauge("proxyd_users", "Users configured", registry=r)
            Info("proxyd_build", "proxyd build information", registry=r).info(
                {"version": __version__}
            )
