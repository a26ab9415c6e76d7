"""`proxyd serve --workers N`: N proxy processes sharing one port, and their supervisor.

Each worker is a whole `proxyd serve` (mitmproxy runs one event loop on one core) that
binds the port with SO_REUSEPORT, so the kernel spreads new connections evenly across
them. Nonces are stateless HMACs over one shared secret, so any worker verifies a nonce
another one issued; the replay window is per worker (as it is per replica).

The supervisor imports no mitmproxy. It resolves the port once (a configured port 0 becomes
one concrete port for all), starts the workers, answers the admin listener for all of them
(metrics summed across workers through prometheus-client's multiprocess files), passes
SIGHUP/SIGUSR1/SIGTERM on, and restarts a worker that dies on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from proxy.core import config as config_mod
from proxy.core.addresses import format_hostport
from proxy.core.config import Config
from proxy.core.digest import UserSecrets
from proxy.core.errors import ConfigError
from proxy.core.policy import TrustedSource
from proxy.effects.accounts import read_grants
from proxy.effects.files import atomic_write
from proxy.service.admin import AdminServer
from proxy.service.metrics import register_process_metrics
from proxy.service.runtime import Runtime, build_runtime

log = logging.getLogger("proxyd")

MAX_WORKERS = 64
RESTART_DELAY = 1.0  # seconds before a worker that died is started again
START_TIMEOUT = 60.0  # a worker that is not listening by then failed to start
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PR_SET_PDEATHSIG = 1


def parse_workers(text: str) -> int:
    """argparse type for --workers: a whole number from 1 to MAX_WORKERS."""
    if not re.fullmatch(r"-?[0-9]+", text):  # int() would take " 2", "+2" and "٢"
        raise ValueError(f"--workers takes a whole number, got {text!r}")
    value = int(text)
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"--workers must be from 1 to {MAX_WORKERS}, got {value}")
    return value


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: it fixes the port for every worker
    (port 0 included) and holds it while workers restart; it never takes connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))  # noqa: S104
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)


class SupervisorMetrics:
    """The admin listener's registry: the workers' metrics summed from their multiprocess
    files, plus what only the supervisor knows."""

    def __init__(
        self,
        directory: Path,
        users: Callable[[], Collection[UserSecrets]],
        trusted: Callable[[], Collection[TrustedSource]],
        jump: Callable[[], dict[str, float]],
    ) -> None:
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(directory))
        register_process_metrics(self.registry, users, trusted, jump)
        self.workers = Gauge("proxyd_workers", "Worker processes serving", registry=self.registry)
        self.restarts = Counter(
            "proxyd_worker_restarts", "Workers started again after dying", registry=self.registry
        )


class Supervisor:
    def __init__(
        self, config_path: Path, runtime: Runtime, count: int, first_run_hint: bool
    ) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.count = count
        self.first_run_hint = first_run_hint
        self.workers = [Worker(i) for i in range(count)]
        try:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="proxyd-metrics-"))
        except OSError as e:
            raise ConfigError(
                [f"--workers needs a writable temporary folder (TMPDIR) for metrics: {e}"]
            ) from e
        self.metrics = SupervisorMetrics(
            self.metrics_dir,
            lambda: self.runtime.users.all(),
            lambda: self.runtime.config.trusted_sources,
            lambda: read_grants(self.runtime.config.jump.grants_file),
        )
        self.admin = AdminServer(self.metrics.registry, ready=self.all_ready)
        self.stopping = False
        self.stopped = asyncio.Event()
        self.failed = False
        self.port = 0

    def all_ready(self) -> bool:
        return not self.stopping and all(w.ready for w in self.workers)

    # --- workers ------------------------------------------------------------------------

    async def start_worker(self, worker: Worker) -> bool:
        """Start one worker and wait until it listens; False if it exits first."""
        ready_r, ready_w = os.pipe()
        argv = [
            sys.executable,
            "-P",  # not the working folder first: a `proxy/` there must not stand in for us
            "-m",
            "proxy",
            "serve",
            "--config",
            str(self.config_path),
            "--worker-of",
            f"{worker.index}:{self.port}:{ready_w}",
        ]
        if self.first_run_hint and worker.index == 0 and worker.restarts == 0:
            argv.append("--first-run-hint")
        env = dict(os.environ, **{MULTIPROC_ENV: str(self.metrics_dir)})
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                pass_fds=(ready_w,),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
        try:
            worker.ready = await read_one_byte(ready_r, START_TIMEOUT) == b"r"
        finally:
            os.close(ready_r)
        if not worker.ready and worker.process.returncode is None:
            worker.process.kill()
        worker.waiter = asyncio.get_running_loop().create_task(self.watch(worker))
        self.metrics.workers.set(sum(w.ready for w in self.workers))
        return worker.ready

    async def watch(self, worker: Worker) -> None:
        """A worker that dies while the proxy is not stopping is started again."""
        assert worker.process is not None
        code = await worker.process.wait()
        worker.ready = False
        mark_process_dead(worker.process.pid, str(self.metrics_dir))
        self.metrics.workers.set(sum(w.ready for w in self.workers))
        if self.stopping or self.failed:
            return
        log.error("proxyd: worker %d exited with status %s; starting it again", worker.index, code)
        await asyncio.sleep(RESTART_DELAY)
        if not self.stopping:
            worker.restarts += 1
            self.metrics.restarts.inc()
            await self.start_worker(worker)

    def signal_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    # --- signals ------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every worker reloads (and reports for itself); the supervisor only
        follows the users file for its gauge."""
        with contextlib.suppress(ConfigError, OSError, ValueError):
            # A broken config: the workers log why and keep theirs; so does this gauge.
            self.runtime = build_runtime(config_mod.load(self.config_path))
        self.signal_all(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM/SIGINT: not ready any more; workers drain and exit. A second one is
        passed on too: the workers stop at once."""
        self.stopping = True
        self.stopped.set()
        self.signal_all(signal.SIGTERM)

    # --- the whole run ------------------------------------------------------------------

    async def run(self) -> int:
        cfg = self.runtime.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, lambda: self.signal_all(signal.SIGUSR1))
        if cfg.tls_listen is not None and cfg.tls_listen[1] == 0:
            log.error("proxyd: --workers needs a fixed tls_listen port, not 0")
            return 1
        try:
            reservation = reserve_port(cfg.listen_host, cfg.listen_port)
        except OSError as e:
            log.error(
                "proxyd: cannot listen on %s: %s",
                format_hostport(cfg.listen_host, cfg.listen_port),
                e,
            )
            return 1
        try:
            self.port = reservation.getsockname()[1]
            return await self._serve(cfg)
        finally:
            reservation.close()
            await self.admin.stop()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _serve(self, cfg: Config) -> int:
        log.info("proxyd: starting %d workers", self.count)
        started = await asyncio.gather(*(self.start_worker(w) for w in self.workers))
        if not all(started) or self.stopping:
            if not self.stopping:
                log.error("proxyd: a worker failed to start (see its error above)")
                self.failed = True
            self.stop()
            await self._wait_workers()
            return 0 if self.stopping and not self.failed else 1
        if cfg.admin_listen is not None:
            try:
                host, port = await self.admin.start(*cfg.admin_listen)
            except OSError as e:
                log.error("proxyd: admin listener on %s: %s", format_hostport(*cfg.admin_listen), e)
                self.failed = True
                self.stop()
                await self._wait_workers()
                return 1
            log.info("proxyd: admin listening on %s", format_hostport(host, port))
        if cfg.pid_file is not None:
            atomic_write(cfg.pid_file, f"{os.getpid()}\n".encode(), mode=0o644)
        log.info("proxyd: listening on %s", format_hostport(cfg.listen_host, self.port))
        if cfg.tls_listen is not None:
            log.info("proxyd: TLS listening on %s", format_hostport(*cfg.tls_listen))
        try:
            await self.stopped.wait()
            await self._wait_workers()
        finally:
            if cfg.pid_file is not None:
                with contextlib.suppress(OSError):
                    cfg.pid_file.unlink()
        return 0

    async def _wait_workers(self) -> None:
        waiters = [w.waiter for w in self.workers if w.waiter is not None]
        if waiters:
            await asyncio.gather(*waiters, return_exceptions=True)
        for worker in self.workers:  # a restart could have raced the stop
            if worker.process is not None and worker.process.returncode is None:
                await worker.process.wait()


async def read_one_byte(fd: int, timeout: float) -> bytes:
    """One byte from a pipe, b"" at its end-of-file or after `timeout`, off the loop's
    readiness (a thread blocked in read(2) could not be called back)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    os.set_blocking(fd, False)

    def readable() -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(fd, 1)
            if not got.done():
                got.set_result(data)

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(fd)


def supervise(config_path: Path, runtime: Runtime, count: int, first_run_hint: bool) -> int:
    return asyncio.run(Supervisor(config_path, runtime, count, first_run_hint).run())


@dataclass(frozen=True)
class WorkerRole:
    """What `--worker-of INDEX:PORT:FD` tells a worker: which one it is, the port the
    supervisor fixed, and where to say that it listens."""

    index: int
    port: int
    ready_fd: int

    @classmethod
    def parse(cls, text: str) -> WorkerRole:
        try:
            index, port, fd = (int(part, 10) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"--worker-of takes INDEX:PORT:FD, got {text!r}") from None
        return cls(index, port, fd)

    def apply(self, cfg: Config) -> Config:
        """The supervisor owns the admin listener and the pid file; the port is fixed."""
        from dataclasses import replace

        return replace(cfg, listen_port=self.port, admin_listen=None, pid_file=None)

    def follow_parent(self) -> None:
        """SIGTERM when the supervisor dies (even by SIGKILL): no orphaned workers. The
        workers run in their own process group, so a terminal's Ctrl-C reaches only
        the supervisor, which passes one orderly SIGTERM on."""
        parent = os.getppid()
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent or parent == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # it died before prctl took effect

    def announce(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, b"r")
            os.close(self.ready_fd)
