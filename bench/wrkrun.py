"""Keep-alive GET of 1 KiB with wrk: plain, or with precomputed Digest headers."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import digest
import procstat
from loadgen import Endpoint

WRK = "wrk"
HERE = Path(__file__).resolve().parent
# Precomputed Digest values per wrk thread: duration x this rate. Far above what a
# Digest-checking proxy does on one core (Squid ~9k/s); if a run ever outruns it, the
# Lua script replays counts, the proxy answers 407 and the run is marked invalid.
MAX_RATE = 50_000
RESULT_PREFIX = "BENCH-RESULT "


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _digest_files(
    endpoint: Endpoint, uri: str, host: str, threads: int, duration: float, prefix: Path
) -> None:
    """PREFIX.1 .. PREFIX.threads, one fresh nonce each (see get_digest.lua)."""
    assert endpoint.proxy is not None
    per_thread = math.ceil(MAX_RATE * duration / threads) + 1024
    request = f"GET {uri} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for tid in range(1, threads + 1):
        signer = digest.DigestSigner(digest.fetch_challenge(endpoint.proxy, request), "GET", uri)
        lines = [signer.fixed_part, *(signer.response(nc) for nc in range(1, per_thread + 1))]
        Path(f"{prefix}.{tid}").write_text("\n".join(lines) + "\n")


def run_wrk(
    endpoint: Endpoint,
    origin: tuple[str, int],
    connections: int,
    threads: int,
    duration: float,
    watch: dict[str, list[int]],
    workdir: Path,
) -> dict[str, Any]:
    # wrk takes whole seconds only.
    duration = max(1, round(duration))
    host = f"{origin[0]}:{origin[1]}"
    uri = f"http://{host}/1k" if endpoint.proxy else "/1k"
    connect_to = endpoint.proxy or origin
    args = [uri, host]
    script = HERE / "get.lua"
    if endpoint.auth and endpoint.proxy:
        prefix = workdir / f"digest-c{connections}"
        _digest_files(endpoint, uri, host, threads, duration, prefix)
        args.append(str(prefix))
        script = HERE / "get_digest.lua"
    argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
    argv += ["--timeout", "10s", "-s", str(script), f"http://{connect_to[0]}:{connect_to[1]}/"]
    argv += ["--", *args]
    cpu0, watched0, t0 = _children_cpu(), procstat.cpu_snapshot(watch), time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - t0
    generator_cpu = _children_cpu() - cpu0
    watched = procstat.cpu_delta(watched0, procstat.cpu_snapshot(watch))
    for path in workdir.glob(f"digest-c{connections}.*"):
        path.unlink()
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    raw: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "rps": raw["requests"] / seconds,
        "requests": raw["requests"],
        "non_2xx": raw["non_2xx_3xx"],
        "socket_errors": errors,
        "digest_exhausted": raw["exhausted"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "generator_cpu": generator_cpu / wall,
        **{f"{name}_cpu": seconds / wall for name, seconds in watched.items()},
        "valid": raw["non_2xx_3xx"] == 0 and errors == 0 and not raw["exhausted"],
        "raw": raw,
    }
