"""`make bench`: proxyd side by side with Squid, a bare mitmproxy and no proxy, in one run.

    .venv/bin/python bench/run.py [--smoke] [--rounds N] [--duration S] [--out FILE]

Starts nginx (1 KiB file) and a TCP sink/ping origin on 127.0.0.2, then on 127.0.0.1:
Squid and proxyd (each without auth and with Digest), proxyd again under `python -O`,
the bare mitmproxy engine (bare_engine.py, plain and -O), and the TLS listeners: Squid's
`https_port` and proxyd's `tls_listen` with Digest (proxyd also with Basic inside TLS),
for the tunnel workloads. Runs every workload against every target it applies to,
rounds interleaved, and writes build/bench/results.json plus Markdown tables.
Must run as root (Squid switches to its `proxy` user). Loopback only; every wait bounded.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import ssl
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import digest
import loadgen
import procstat
import report
import services
import wrkrun
from loadgen import Endpoint, ProxyTls

REQUIRED = {
    "wrk": "Debian package wrk",
    services.NGINX: "Debian package nginx-light",
    services.SQUID: "Debian package squid",
    services.DIGEST_HELPER: "Debian package squid",
    "taskset": "Debian package util-linux",
}


Workload = Callable[["Target"], dict[str, Any] | None]  # None: not applicable to it


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration: float  # seconds per timed workload
    get_levels: tuple[int, ...]
    bulk_streams: tuple[int, ...]
    tunnel_workers: tuple[int, ...]
    idle_counts: tuple[int, int]


FULL = Plan(3, 3.0, (1, 16, 64), (1, 4), (1, 16), (500, 2000))
SMOKE = Plan(1, 0.5, (1, 16, 64), (1, 4), (1, 4), (20, 50))


@dataclass
class Target:
    name: str
    label: str
    auth: bool
    workers: int = 1
    service: services.Service | None = None
    reference: str | None = None  # the Squid target its ratios are taken against
    optimize: bool = False  # run under `python -O`
    notes: list[str] = field(default_factory=list)
    tls: ProxyTls | None = None  # the proxy's TLS listener: clients speak TLS to it
    scheme: str = "digest"  # with auth: "digest", or "basic" (inside TLS only)
    plain: str | None = None  # a TLS target: the same proxy's plain-listener target

    @property
    def endpoint(self) -> Endpoint:
        address = self.service.address if self.service else None
        return Endpoint(address, self.auth, self.tls, self.scheme)

    @property
    def pid(self) -> int | None:
        return self.service.pid if self.service else None


@dataclass
class Cpus:
    """CPU layout: the proxy alone on one CPU, load side (generators, origins) on another."""

    proxy: set[int] | None
    load: set[int] | None
    every: set[int]

    @classmethod
    def detect(cls) -> Cpus:
        every = set(os.sched_getaffinity(0))
        if len(every) < 2:
            return cls(None, None, every)
        first, second = sorted(every)[:2]
        return cls({first}, {second}, every)

    def describe(self) -> str:
        if self.proxy is None or self.load is None:
            return f"not pinned: only {len(self.every)} CPU available"
        return (
            f"single-worker proxies pinned to CPU {min(self.proxy)}; load generators, nginx and "
            f"the TCP origin pinned to CPU {min(self.load)} (direct: the proxy CPU stays idle). "
            f"proxyd --workers 2: nothing pinned, proxy, generators and origins share CPUs "
            f"{','.join(map(str, sorted(self.every)))}"
        )


class Bench:
    def __init__(self, plan: Plan, workdir: Path, cpus: Cpus, log: Callable[[str], None]) -> None:
        self.plan, self.workdir, self.cpus, self.log = plan, workdir, cpus, log
        self.origin_services: list[services.Service] = []
        self.targets: list[Target] = []
        self.nginx: services.Service | None = None
        self.tcp: services.Service | None = None
        self.meta: dict[str, Any] = {"notes": [], "tls": {}}

    # ----------------------------------------------------------------- set-up

    def start(self) -> None:
        if self.cpus.load is not None:
            # Inherited by everything started from here: origins, wrk, Python generators.
            os.sched_setaffinity(0, self.cpus.load)
        self.nginx = services.start_nginx(self.workdir / "nginx")
        self.tcp = services.start_tcp_origin(self.workdir / "tcp-origin")
        self.origin_services = [self.nginx, self.tcp]
        ports = [self.nginx.address[1], self.tcp.address[1]]
        users, htdigest = services.make_users(self.workdir / "users")
        self.targets.append(Target("direct", "direct", auth=False))
        for auth in (False, True):
            suffix = "-digest" if auth else ""
            name = "squid" + suffix
            service = services.start_squid(
                self.workdir / name, name, htdigest if auth else None, ports, self.cpus.proxy
            )
            self.targets.append(
                Target(name, "Squid" + ("+digest" if auth else ""), auth, 1, service)
            )
        for optimize in (False, True):
            name = "bare" + ("-O" if optimize else "")
            service = services.start_bare_engine(
                self.workdir / name, name, self.cpus.proxy, optimize=optimize
            )
            label = "bare mitmproxy" + (" -O" if optimize else "")
            self.targets.append(Target(name, label, False, 1, service, "squid", optimize))
        # (workers, under -O): the -O variants are single-worker (a supervisor's workers
        # are started without -O).
        variants = [(1, False), (1, True)]
        if services.proxyd_supports_workers():
            variants.append((2, False))
        else:
            self.meta["notes"].append(
                "proxyd --workers 2: not measured, `proxyd serve --help` lists no --workers"
            )
        for count, optimize in variants:
            for auth in (False, True):
                name = "proxyd" + ("-O" if optimize else "") + (f"-w{count}" if count > 1 else "")
                label = "proxyd" + (" -O" if optimize else "") + (f" w{count}" if count > 1 else "")
                name += "-digest" if auth else ""
                label += "+digest" if auth else ""
                cpus = self.cpus.proxy if count == 1 else None
                service = services.start_proxyd(
                    self.workdir / name,
                    name,
                    users,
                    ports,
                    auth=auth,
                    workers=count,
                    cpus=cpus,
                    optimize=optimize,
                )
                reference = "squid-digest" if auth else "squid"
                self.targets.append(Target(name, label, auth, count, service, reference, optimize))
        self.start_tls(users, htdigest, ports)
        for target in self.targets:
            self.check(target)

    def start_tls(self, users: Path, htdigest: Path, ports: list[int]) -> None:
        """The TLS listeners, for the tunnel workloads: Squid's `https_port` with Digest
        (if this Squid runs one) and one proxyd with `tls_listen` and `basic_over_tls`,
        measured with Digest (as the plain rows) and with Basic."""
        files = services.make_proxy_tls(self.workdir / "tls")
        tls = ProxyTls(str(files.ca), files.hostname)
        self.meta["tls"]["certificate"] = f"{files.key_type}, one trustme CA, SNI {files.hostname}"
        name = "squid-tls-digest"
        try:
            squid = services.start_squid(
                self.workdir / name, name, htdigest, ports, self.cpus.proxy, tls=files
            )
        except services.StartError as error:
            reason = _squid_error(str(error))
            self.meta["tls"]["squid_refused"] = reason
            self.meta["notes"].append(f"Squid TLS (https_port): not measured, Squid said: {reason}")
        else:
            self.targets.append(
                Target(name, "Squid TLS+digest", True, 1, squid, tls=tls, plain="squid-digest")
            )
        service = services.start_proxyd(
            self.workdir / "proxyd-tls",
            "proxyd-tls",
            users,
            ports,
            auth=True,
            workers=1,
            cpus=self.cpus.proxy,
            tls=files,
        )
        # One process serves both: the same TLS listener, Digest or Basic per request.
        for scheme in ("digest", "basic"):
            self.targets.append(
                Target(
                    f"proxyd-tls-{scheme}",
                    f"proxyd TLS+{scheme}",
                    True,
                    1,
                    service,
                    tls=tls,
                    scheme=scheme,
                    plain="proxyd-digest",
                )
            )

    def check(self, target: Target) -> None:
        """One GET: a Digest target must answer 407 without credentials and 200 with (a
        TLS target: inside TLS, the proxy's certificate verified; Basic: 200 at once)."""
        assert self.nginx is not None
        origin = f"{self.nginx.address[0]}:{self.nginx.address[1]}"
        if target.service is None:
            return
        endpoint, nginx = target.endpoint, self.nginx.address
        uri = f"http://{origin}/1k"
        request = f"GET {uri} HTTP/1.1\r\nHost: {origin}\r\n"
        extra = ""
        if target.auth:
            challenge = digest.fetch_challenge(
                target.service.address,
                (request + "\r\n").encode(),
                lambda: loadgen.connect(endpoint, nginx),
            )
            signer: loadgen.Signer = (
                loadgen.BasicSigner()
                if target.scheme == "basic"
                else digest.DigestSigner(challenge, "GET", uri)
            )
            extra = f"Proxy-Authorization: {signer.header()}\r\n"
        with loadgen.connect(endpoint, nginx) as sock:
            if isinstance(sock, ssl.SSLSocket):
                cipher = sock.cipher()
                self.meta["tls"].setdefault("negotiated", {})[target.name] = (
                    f"{sock.version()} {cipher[0] if cipher else '?'}"
                )
            sock.sendall((request + extra + "Connection: close\r\n\r\n").encode())
            head, body = digest.read_head(sock)
            while chunk := sock.recv(65536):
                body += chunk
        status = digest.status_of(head)
        if status != 200 or body != services.FILE_1K:
            raise RuntimeError(
                f"{target.name}: GET {uri} answered {status}, {len(body)} bytes:\n"
                f"{head.decode('latin-1')}\n{target.service.log_tail()}"
            )

    def stop(self) -> None:
        for target in self.targets:
            if target.service is not None:
                target.service.stop()
        for service in self.origin_services:
            service.stop()

    # ----------------------------------------------------------------- layout

    def arrange(self, target: Target) -> int:
        """CPU affinity for `target`'s runs; returns the wrk thread count."""
        if self.cpus.load is None:
            return 2
        shared = target.workers > 1
        cpus = self.cpus.every if shared else self.cpus.load
        os.sched_setaffinity(0, cpus)
        for service in self.origin_services:
            procstat.set_affinity(procstat.descendants(service.pid), cpus)
        return len(cpus)

    # ----------------------------------------------------------------- workloads

    def watch(self, target: Target) -> dict[str, list[int]]:
        """Process trees whose CPU each run reports: the proxy, and the origins (which
        share the generator's CPU, so generator + origin show how busy that side is)."""
        watch = {"origin": [s.pid for s in self.origin_services]}
        if target.pid is not None:
            watch["proxy"] = [target.pid]
        return watch

    @staticmethod
    def busy(result: loadgen.ParallelResult) -> dict[str, float]:
        return {f"{name}_cpu": cpu / result.wall for name, cpu in result.watched_cpu.items()}

    def get(self, target: Target, connections: int) -> dict[str, Any] | None:
        assert self.nginx is not None
        if target.tls is not None:
            return None  # wrk cannot speak TLS to a proxy; the TLS rows are tunnels
        threads = min(connections, self.arrange(target))
        out = wrkrun.run_wrk(
            target.endpoint,
            self.nginx.address,
            connections,
            threads,
            self.plan.duration,
            self.watch(target),
            self.workdir,
        )
        out["errors"] = out["non_2xx"] + out["socket_errors"] + int(out["digest_exhausted"])
        return out

    def bulk(self, target: Target, streams: int) -> dict[str, Any] | None:
        assert self.tcp is not None
        if target.tls is not None and streams != max(self.plan.bulk_streams):
            return None  # TLS: the most streams only (the run's time)
        self.arrange(target)
        result = loadgen.run_parallel(
            loadgen.BulkStream,
            (target.endpoint, self.tcp.address),
            streams,
            self.plan.duration,
            self.watch(target),
        )
        verified = sum(w["bytes_verified"] for w in result.workers)
        sent = sum(w["bytes_sent"] for w in result.workers)
        return {
            "bytes_verified": verified,
            "MBps": verified / result.wall / 1e6,
            "cpu_s_per_GB": (
                result.watched_cpu["proxy"] / (verified / 1e9) if target.pid else None
            ),
            "generator_cpu": result.generator_cpu / result.wall,
            **self.busy(result),
            "errors": sent - verified,
            "valid": sent == verified and verified > 0,
        }

    def tunnels(self, target: Target, workers: int) -> dict[str, Any]:
        assert self.tcp is not None
        self.arrange(target)
        result = loadgen.run_parallel(
            loadgen.TunnelChurn,
            (target.endpoint, self.tcp.address),
            workers,
            self.plan.duration,
            self.watch(target),
        )
        ok = sum(w["ok"] for w in result.workers)
        statuses: dict[str, int] = {}
        for w in result.workers:
            for status, count in w["bad_status"].items():
                statuses[str(status)] = statuses.get(str(status), 0) + count
        failures = sum(w["failures"] for w in result.workers)
        errors = failures + sum(statuses.values())
        setup = sorted(ms for w in result.workers for ms in w["setup_ms"])
        return {
            "tunnels": ok,
            "per_s": ok / result.wall,
            "setup_p50_ms": setup[len(setup) // 2] if setup else None,
            "bad_status": statuses,
            "failures": failures,
            "last_error": next((w["last_error"] for w in result.workers if w["last_error"]), ""),
            "generator_cpu": result.generator_cpu / result.wall,
            **self.busy(result),
            "errors": errors,
            "valid": errors == 0 and ok > 0,
        }

    def idle(self, target: Target) -> dict[str, Any] | None:
        assert self.tcp is not None
        if target.pid is None or target.tls is not None:
            return None  # no proxy, no proxy memory; TLS: not measured (the run's time)
        # A fresh process: after load, freed arenas would hide what tunnels cost (the
        # second round's tunnels reuse the first round's memory).
        assert target.service is not None
        target.service = target.service.restart()
        self.check(target)
        self.arrange(target)
        assert target.pid is not None
        first, second = self.plan.idle_counts
        time.sleep(0.5)  # start-up allocations settle
        idle_kib = procstat.rss_kib(target.pid)
        holder = loadgen.IdleHolder(target.endpoint, self.tcp.address)
        try:
            at_first = holder.hold(first, timeout=120)
            time.sleep(0.3)  # let the proxy finish its bookkeeping for the last ones
            first_kib = procstat.rss_kib(target.pid)
            at_second = holder.hold(second, timeout=120)
            time.sleep(0.3)
            second_kib = procstat.rss_kib(target.pid)
        finally:
            holder.close()
        errors = at_first["errors"] + at_second["errors"]
        return {
            "rss_idle_MiB": idle_kib / 1024,
            "rss_first_MiB": first_kib / 1024,
            "rss_second_MiB": second_kib / 1024,
            # The slope between the two counts: start-up allocations don't count.
            "per_tunnel_KiB": (second_kib - first_kib) / (second - first),
            "per_tunnel_from_idle_KiB": (second_kib - idle_kib) / second,
            "open": at_second["open"],
            "errors": errors,
            "valid": errors == 0 and at_second["open"] == second,
        }

    def workloads(self) -> list[tuple[str, Workload]]:
        plan = self.plan
        out: list[tuple[str, Workload]] = []
        for c in plan.get_levels:
            out.append((f"get_c{c}", functools.partial(self.get, connections=c)))
        for s in plan.bulk_streams:
            out.append((f"bulk_s{s}", functools.partial(self.bulk, streams=s)))
        for workers in plan.tunnel_workers:
            out.append((f"tunnels_w{workers}", functools.partial(self.tunnels, workers=workers)))
        out.append(("idle_tunnels", self.idle))
        return out


METRICS = {
    "get_c": ("rps", "p50_ms", "p99_ms", "generator_cpu", "origin_cpu", "proxy_cpu"),
    "bulk_s": ("MBps", "cpu_s_per_GB", "generator_cpu", "origin_cpu", "proxy_cpu"),
    "tunnels_w": ("per_s", "setup_p50_ms", "generator_cpu", "origin_cpu", "proxy_cpu"),
    "idle_tunnels": (
        "rss_idle_MiB",
        "rss_first_MiB",
        "rss_second_MiB",
        "per_tunnel_KiB",
        "per_tunnel_from_idle_KiB",
    ),
}


def run_rounds(bench: Bench) -> tuple[dict[str, dict[str, Any]], bool]:
    """Every workload, every target, `rounds` times; target order rotates per round."""
    data: dict[str, dict[str, Any]] = {}
    targets = bench.targets
    ok = True
    for round_no in range(bench.plan.rounds):
        order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
        for name, run in bench.workloads():
            for target in order:
                entry = data.setdefault(name, {}).setdefault(
                    target.name, {"rounds": [], "not_applicable": False}
                )
                started = time.monotonic()
                try:
                    record = run(target)
                except Exception:
                    record = {"valid": False, "errors": 1, "exception": traceback.format_exc()}
                    bench.log(f"  {name} {target.name}: FAILED\n{record['exception']}")
                if record is None:
                    entry["not_applicable"] = True
                    continue
                record["round"] = round_no + 1
                entry["rounds"].append(record)
                ok = ok and bool(record.get("valid"))
                bench.log(
                    f"  round {round_no + 1} {name:<14} {target.name:<18} {_brief(record)}"
                    f" ({time.monotonic() - started:.1f}s)"
                )
    return data, ok


def _brief(record: dict[str, Any]) -> str:
    for key, fmt in (
        ("rps", "{:,.0f} req/s"),
        ("MBps", "{:,.0f} MB/s"),
        ("per_s", "{:,.0f}/s"),
        ("per_tunnel_KiB", "{:.1f} KiB/tunnel"),
    ):
        if key in record:
            text = fmt.format(record[key])
            return text if record.get("valid") else text + f" INVALID errors={record['errors']}"
    return "INVALID" if not record.get("valid") else ""


def summarize(data: dict[str, dict[str, Any]]) -> None:
    for workload, per_target in data.items():
        keys = next(v for k, v in METRICS.items() if workload.startswith(k))
        for entry in per_target.values():
            entry["summary"] = report.summarize(entry["rounds"], keys)
    # Latency at one connection is read from the c=1 GET runs (the same keep-alive GETs).
    if "get_c1" in data:
        data["latency_c1"] = {
            target: {
                "rounds": [
                    {
                        "p50_ms": r.get("p50_ms"),
                        "p99_ms": r.get("p99_ms"),
                        "valid": r.get("valid"),
                        "round": r.get("round"),
                        "errors": r.get("errors", 0),
                    }
                    for r in entry["rounds"]
                ],
                "not_applicable": entry["not_applicable"],
                "summary": report.summarize(entry["rounds"], ("p50_ms", "p99_ms")),
                "source": "get_c1",
            }
            for target, entry in data["get_c1"].items()
        }


def _squid_error(error: str) -> str:
    """The lines of a failed Squid start that say why (FATAL, ERROR), else its last one."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    said = [line for line in lines if "FATAL" in line or "ERROR" in line]
    return " / ".join(said) if said else (lines[-1] if lines else "no output")


def missing_components() -> list[str]:
    return [
        f"{tool} ({package})"
        for tool, package in REQUIRED.items()
        if not (shutil.which(tool) or os.access(tool, os.X_OK))
    ]


def raise_fd_limit() -> int:
    """2000 idle tunnels are 2000-4000 descriptors per process: every child inherits this."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 short round: checks, no figures")
    parser.add_argument("--rounds", type=int, help="override the plan's round count")
    parser.add_argument("--duration", type=float, help="seconds per timed workload")
    parser.add_argument("--out", type=Path, default=services.REPO / "build/bench/results.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.rounds or args.duration:
        plan = Plan(
            args.rounds or plan.rounds,
            args.duration or plan.duration,
            plan.get_levels,
            plan.bulk_streams,
            plan.tunnel_workers,
            plan.idle_counts,
        )
    missing = missing_components()
    if missing:
        print("bench: missing components: " + ", ".join(missing), file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench: run as root (Squid starts as root and switches to `proxy`)", file=sys.stderr)
        return 2
    fd_limit = raise_fd_limit()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="proxyd-bench-"))
    workdir.chmod(0o755)  # Squid's `proxy` user and nginx's workers must get in
    cpus = Cpus.detect()
    bench = Bench(plan, workdir, cpus, lambda text: print(text, flush=True))
    try:
        print(f"bench: starting services in {workdir}", flush=True)
        bench.start()
        fresh = {t.name: procstat.rss_kib(t.pid) / 1024 for t in bench.targets if t.pid}
        data, ok = run_rounds(bench)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summarize(data)
    results = {
        "meta": meta(bench, plan, cpus, fd_limit, fresh, time.monotonic() - t0, args.smoke),
        "config": {
            "rounds": plan.rounds,
            "duration_s": plan.duration,
            "get_levels": list(plan.get_levels),
            "bulk_streams": list(plan.bulk_streams),
            "tunnel_workers": list(plan.tunnel_workers),
            "idle_counts": list(plan.idle_counts),
        },
        "targets": {
            t.name: {
                "label": t.label,
                "auth": t.auth,
                "workers": t.workers,
                "reference": t.reference,
                "optimize": t.optimize,
                "tls": t.tls is not None,
                "scheme": t.scheme if t.auth else None,
                "plain": t.plain,
                "pid": t.pid,
                "argv": t.service.argv if t.service else None,
            }
            for t in bench.targets
        },
        "workloads": data,
        "valid": ok,
    }
    results["goals"] = report.goals(results)
    results["tunnel_goals"] = report.tunnel_goals(results)
    results["tls_comparison"] = report.tls_comparison(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print_report(results, args.out)
    return 0 if ok else 1


def meta(
    bench: Bench,
    plan: Plan,
    cpus: Cpus,
    fd_limit: int,
    fresh: dict[str, float],
    wall: float,
    smoke: bool,
) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_layout": cpus.describe(),
        "smoke": smoke,
        "wall_s": wall,
        "fd_limit": fd_limit,
        "rss_fresh_MiB": fresh,
        "tls": bench.meta["tls"],
        "versions": {
            "squid": services.version([services.SQUID, "-v"], r"Version (\S+)"),
            "nginx": services.version([services.NGINX, "-v"], r"nginx/(\S+)"),
            "wrk": services.version(["wrk", "-v"], r"wrk (\S+)"),
            "python": platform.python_version(),
            "mitmproxy": mitmproxy_version(),
        },
        "notes": [
            *bench.meta["notes"],
            "MB = 10^6 bytes, GB = 10^9 bytes; CPU figures are CPU-seconds / wall seconds",
            "proxy CPU and RSS are summed over the proxy's process tree "
            "(Squid: its digest helpers; proxyd: its workers)",
            "latency p50/p99 come from wrk's c=1 keep-alive GET runs",
            "idle tunnels: each proxy is restarted first (fresh process, one check GET), "
            "so idle RSS is a fresh process's; per-tunnel KiB is the slope between the two "
            "idle counts (per_tunnel_from_idle_KiB in the JSON: from idle)",
            "Squid digest: nonce_max_count 2e9 and check_nonce_count off (see services.py)",
            "bare mitmproxy: bench/bare_engine.py, a mitmproxy master with only the proxy "
            "server and proxyd's layer choice (HTTP proxy; CONNECT passed through, no TLS), "
            "proxyd's engine options, no auth; proxyd ÷ bare is what proxyd's own code costs",
            "-O: the same program under `python -O` (asserts and mitmproxy's `__debug__` "
            "typechecks off)",
            "bulk: upload through the tunnel into a sink that counts bytes; every "
            f"{loadgen.CYCLE >> 20} MiB transfer is acknowledged with its byte count and checked",
            "TLS targets: the client speaks TLS to the proxy's TLS listener (certificate "
            "verified against the bench's CA), then CONNECT inside it; each new tunnel is a "
            "full handshake (no session resumption); proxyd relays tunnels inside TLS in user "
            "space (no splice); measured for the tunnel workloads only (bulk at the most "
            "streams)",
        ],
    }


def mitmproxy_version() -> str:
    try:
        from importlib.metadata import version

        return version("mitmproxy")
    except Exception:  # a bench without mitmproxy still reports the rest
        return "unknown"


def print_report(results: dict[str, Any], out: Path) -> None:
    m, c = results["meta"], results["config"]
    print()
    print(f"## proxyd bench ({'smoke' if m['smoke'] else 'full'}) — {m['date']}, {m['host']}")
    print()
    v = m["versions"]
    print(f"Python {v['python']}, mitmproxy {v.get('mitmproxy', '?')}, Squid {v['squid']}")
    print()
    print(
        f"{c['rounds']} round(s) x {c['duration_s']} s per timed workload, targets interleaved; "
        "cells: median [min-max]; INVALID: a round had errors (non-2xx, socket errors, "
        "short bulk counts)"
    )
    print(f"CPU: {m['cpu_layout']}")
    for note in m["notes"]:
        print(f"- {note}")
    print()
    print(report.results_table(results))
    print()
    print("Ratios of medians (each proxy ÷ Squid with the same auth; ÷ direct):")
    print()
    print(report.ratio_table(results))
    print()
    print("proxyd's own cost and the -O effect (ratios of medians, same engine version):")
    print()
    print(report.engine_table(results))
    print()
    print("Issue 13 targets (reported, not asserted):")
    print()
    print(report.goals_table(results))
    print()
    print("Issue 14 targets, tunnels on proxyd's own front (reported, not asserted):")
    print()
    print(report.tunnel_goals_table(results))
    print()
    print("TLS listener next to the plain listener (tunnels; ratios of medians):")
    print()
    print(report.tls_table(results))
    print()
    print("Generator and proxy CPU (cores busy, median), errors (sum over rounds):")
    print()
    print(report.checks_table(results))
    print()
    print(f"wall time {m['wall_s']:.0f} s; results: {out}")
    if not results["valid"]:
        print("bench: some rounds had errors: their figures are not valid (see INVALID)")


if __name__ == "__main__":
    sys.exit(main())
