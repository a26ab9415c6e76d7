"""The engine: a slim mitmproxy master with only the addons proxyd needs.

mitmdump loads ~36 addons and every hook is dispatched to each of them (measured: 49% of
CPU). We load the proxy server and our own addon; our `next_layer` replaces mitmproxy's
NextLayer addon, and no TLS addon is loaded, so TLS is never intercepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from mitmproxy import options

from proxy.core import config as config_mod
from proxy.core import headerlimit
from proxy.core.addresses import format_hostport
from proxy.core.errors import ConfigError
from proxy.core.records import Exchange
from proxy.effects.accounts import read_grants
from proxy.effects.files import atomic_write
from proxy.effects.logfile import LogFile
from proxy.engine.addon import ProxydAddon, TunnelLayers
from proxy.engine.guard import EngineGuard
from proxy.engine.mitm_internals import ErrorAnswers, Listener, Master, Proxyserver
from proxy.front.tunnel import TunnelFront
from proxy.service.admin import AdminServer
from proxy.service.certificates import CHECK_INTERVAL, Certificates
from proxy.service.grantwatch import WATCH_INTERVAL, GrantWatch
from proxy.service.metrics import Metrics, register_process_metrics
from proxy.service.recorder import Recorder
from proxy.service.runtime import Runtime, build_runtime
from proxy.service.sessions import SWEEP_INTERVAL
from proxy.service.workers import WorkerRole

log = logging.getLogger("proxyd")


class Lifecycle:
    """Start-up and shutdown around the engine: the listener announcement, the admin
    listener, SIGHUP reloads and SIGUSR1 log reopening."""

    def __init__(
        self,
        config_path: Path,
        addon: ProxydAddon,
        first_run_hint: bool,
        access_log: LogFile,
        role: WorkerRole | None = None,
    ) -> None:
        self.config_path = config_path
        self.role = role
        self.addon = addon
        self.first_run_hint = first_run_hint
        self.access_log = access_log
        self.metrics = addon.recorder.metrics
        self.admin = AdminServer(self.metrics.registry, ready=lambda: self.listening)
        self.listening = False
        self.failed = False
        self.certificate_checks: asyncio.Task[None] | None = None
        self.revocation: asyncio.Task[None] | None = None
        self.grant_watch: asyncio.Task[None] | None = None
        audits = role is None or role.index == 0  # one writer of grant audit lines
        self.grants = GrantWatch(addon.recorder, audits, time.time())

    async def revoke_continuously(self) -> None:
        """Removing, locking, expiring or changing the password of a user ends that user's
        tunnels and kept-alive connections at once (service/sessions.py)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            sessions, runtime = self.addon.sessions, self.addon.runtime
            if not sessions.open:
                continue
            try:
                runtime.users.check_now()
                sessions.sweep(runtime.users.lookup, time.time())
            except Exception:  # the sweep goes on: log, and look again
                log.exception("revocation sweep failed")

    async def watch_grants(self) -> None:
        """Last use, and the audit lines of expiries and trusted-source changes
        (service/grantwatch.py); the file writes run off the event loop."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            runtime = self.addon.runtime
            try:
                runtime.users.check_now()
                uses = self.grants.look(runtime, time.time())
                if uses:
                    await asyncio.to_thread(self.grants.write_uses, runtime.config, uses)
            except Exception:  # the watch goes on: log, and look again
                log.exception("grant watch failed")

    async def check_certificates(self, certificates: Certificates) -> None:
        """Rotation without a signal (certbot, cert-manager): look at the files every
        second; the addon's current `Certificates` is asked, a reload may replace it."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            current = self.addon.certificates
            if current is not None:
                try:
                    current.check()
                except Exception:  # never the end of rotation: log, and look again
                    log.exception("certificate check failed")

    async def running(self) -> None:
        from mitmproxy import ctx

        ps: Any = ctx.master.addons.get("proxyserver")
        addrs = ps.listen_addrs()
        if not addrs:
            log.error("proxyd: could not listen (see the error above)")
            self.failed = True
            ctx.master.shutdown()
            return
        admin_listen = self.addon.runtime.config.admin_listen
        if admin_listen is not None:
            try:
                host, port = await self.admin.start(*admin_listen)
            except OSError as e:
                log.error("proxyd: admin listener on %s: %s", format_hostport(*admin_listen), e)
                self.failed = True
                ctx.master.shutdown()
                return
            log.info("proxyd: admin listening on %s", format_hostport(host, port))
        self.listening = True
        self.addon.runtime.ports = Listener.bound_ports()
        self.revocation = asyncio.get_running_loop().create_task(self.revoke_continuously())
        self.grant_watch = asyncio.get_running_loop().create_task(self.watch_grants())
        if self.addon.certificates is not None:
            self.certificate_checks = asyncio.get_running_loop().create_task(
                self.check_certificates(self.addon.certificates)
            )
        if self.role is None:
            for server in Listener.servers:
                what = "TLS listening" if server.listener == "tls" else "listening"
                for sock in server.sockets:
                    addr = sock.getsockname()
                    log.info("proxyd: %s on %s", what, format_hostport(addr[0], addr[1]))
        else:
            log.info("proxyd: worker %d ready", self.role.index)
            self.role.announce()
        if self.first_run_hint and len(self.addon.runtime.users) == 0:
            log.info(
                "proxyd: no users yet. Add the first one with:\n"
                "    .venv/bin/proxyd users --config %s add NAME --generate --expires YYYY-MM-DD",
                self.config_path,
            )

    def count_user_reloads(self, runtime: Runtime) -> None:
        reloads = self.metrics.reloads
        runtime.users.on_reload = lambda ok: reloads.labels("users", "ok" if ok else "error").inc()

    async def drain_and_exit(self, tunnels: dict[str, Exchange]) -> None:
        """SIGTERM: stop accepting, report not-ready, let open tunnels finish, then exit."""
        from mitmproxy import ctx

        if not self.listening:
            ctx.master.shutdown()
            return
        self.listening = False
        ps: Any = ctx.master.addons.get("proxyserver")
        await ps.servers.update([])  # closes the listening sockets, not the connections
        timeout = self.addon.runtime.config.drain_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if tunnels:
            log.info("proxyd: draining %d open tunnel(s), up to %ss", len(tunnels), timeout)
        while tunnels and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if tunnels:
            log.warning("proxyd: closing %d tunnel(s) still open after %ss", len(tunnels), timeout)
        ctx.master.shutdown()

    async def done(self) -> None:
        self.listening = False
        for task in (self.certificate_checks, self.revocation, self.grant_watch):
            if task is not None:
                task.cancel()
        self.grants.write_uses(self.addon.runtime.config, self.addon.recorder.take_uses())
        for server in Listener.servers:
            await server.end_connections()  # the front's: mitmproxy ends only its own
        Listener.servers.clear()
        if Listener.front is not None:
            Listener.front.close()
        await self.admin.stop()
        self.access_log.close()

    def reopen_logs(self) -> None:
        self.access_log.reopen()
        log.info("access log reopened")

    def reload(self) -> None:
        old = self.addon.runtime.config
        try:
            new = config_mod.load(self.config_path)
            if self.role is not None:
                new = self.role.apply(new)
            runtime = build_runtime(new, replay=self.addon.runtime.verifier.replay)
            certificates = self.reloaded_certificates(new)
        except (ConfigError, OSError, ValueError) as e:
            self.metrics.reloads.labels("config", "error").inc()
            log.error("reload refused, the previous config keeps serving:\n%s", e)
            return
        for what, before, after in (
            ("listen", (old.listen_host, old.listen_port), (new.listen_host, new.listen_port)),
            ("admin_listen", old.admin_listen, new.admin_listen),
            ("access_log", old.access_log, new.access_log),
            ("tls_listen", old.tls_listen, new.tls_listen),
        ):
            if before != after:
                log.warning("reload: a new %s takes effect on restart only", what)
        self.addon.swap(runtime)
        self.addon.certificates = certificates
        self.count_user_reloads(runtime)
        apply_limits(new)
        self.metrics.reloads.labels("config", "ok").inc()
        log.info("config reloaded from %s", self.config_path)

    def reloaded_certificates(self, new: config_mod.Config) -> Certificates | None:
        """SIGHUP reads the certificate files again (ConfigError refuses the reload).
        A running TLS listener keeps its certificate until restart if `tls` is removed."""
        current = self.addon.certificates
        if new.tls is None:
            if current is not None and Listener.tls is not None:
                log.warning("reload: the TLS listener keeps its certificate until restart")
                return current
            return None
        if current is None:
            return Certificates(new.tls, self.metrics)
        current.replace(new.tls)
        return current


def build_master(
    config_path: Path,
    runtime: Runtime,
    first_run_hint: bool = False,
    role: WorkerRole | None = None,
) -> tuple[Master, Lifecycle]:
    """The master with exactly proxyd's addons. Needs a running event loop."""
    cfg = runtime.config
    opts = options.Options()
    master = Master(opts)
    metrics = Metrics()
    if role is None:  # a worker's supervisor has these
        register_process_metrics(
            metrics.registry,
            lambda: addon.runtime.users.all(),
            lambda: addon.runtime.config.trusted_sources,
            lambda: read_grants(addon.runtime.config.jump.grants_file),
        )
    access_log = LogFile(cfg.access_log.path)
    tunnels: dict[str, Exchange] = {}
    server = Proxyserver()
    recorder = Recorder(metrics, access_log, cfg.access_log.format)
    recorder.trusted = cfg.trusted_sources
    addon = ProxydAddon(runtime, recorder, tunnels, server)
    if cfg.tls is not None:
        addon.certificates = Certificates(cfg.tls, metrics)  # ConfigError: no start
    Listener.tls = cfg.tls_listen
    ErrorAnswers.make = addon.error_answer
    Listener.front = TunnelFront(addon)
    Listener.servers.clear()
    Listener.on_pause = metrics.accept_pauses.inc
    lifecycle = Lifecycle(config_path, addon, first_run_hint, access_log, role)
    lifecycle.count_user_reloads(runtime)
    # The guard comes after the addon: its hooks see what the gate decided, and check it.
    guard = EngineGuard(metrics)
    master.addons.add(server, TunnelLayers(metrics), addon, guard, lifecycle)
    opts.update(
        mode=["regular"],
        listen_host=cfg.listen_host,
        listen_port=cfg.listen_port,
        connection_strategy="eager",  # a server that speaks first (ssh) must not hang
        http2=False,
        stream_large_bodies="1m",  # never hold a large upload or download in memory
    )
    apply_limits(cfg)
    return master, lifecycle


def apply_limits(cfg: config_mod.Config) -> None:
    """The limits the engine reads outside proxyd's hooks, at start and on reload (new
    connections get the new ones)."""
    from mitmproxy import ctx

    headerlimit.HeaderLimit.bytes = cfg.limits.max_header_bytes
    Listener.linger = cfg.limits.idle_timeout
    ctx.options.update(tcp_timeout=cfg.limits.idle_timeout)


async def serve(
    config_path: Path,
    runtime: Runtime,
    first_run_hint: bool = False,
    role: WorkerRole | None = None,
) -> int:
    Listener.reuse_port = role is not None
    master, lifecycle = build_master(config_path, runtime, first_run_hint, role)
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    def on_term() -> None:
        if draining:  # a second SIGTERM/SIGINT: stop now
            master.shutdown()
            return
        draining.append(loop.create_task(lifecycle.drain_and_exit(lifecycle.addon.tunnels)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_term)
    loop.add_signal_handler(signal.SIGHUP, lifecycle.reload)
    loop.add_signal_handler(signal.SIGUSR1, lifecycle.reopen_logs)
    pid_file = runtime.config.pid_file
    if pid_file is not None:
        atomic_write(pid_file, f"{os.getpid()}\n".encode(), mode=0o644)
    try:
        await master.run()
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
    return 1 if lifecycle.failed else 0
