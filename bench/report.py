"""Summaries (median, min, max over rounds) and the Markdown tables printed at the end."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# (workload prefix, metric key, row label, format); rows are printed in this order.
ROWS: list[tuple[str, str, str, str]] = [
    ("get_c", "rps", "GET 1 KiB keep-alive, req/s", "{:,.0f}"),
    ("bulk_s", "MBps", "CONNECT bulk upload, MB/s", "{:,.0f}"),
    ("bulk_s", "cpu_s_per_GB", "CONNECT bulk, proxy CPU-s/GB", "{:.2f}"),
    ("tunnels_w", "per_s", "new tunnels/s (connect, CONNECT, 200, ping, close)", "{:,.0f}"),
    ("tunnels_w", "setup_p50_ms", "CONNECT set-up p50 (connect to 200), ms", "{:.3f}"),
    ("idle_tunnels", "rss_idle_MiB", "RSS idle (fresh process), MiB", "{:.1f}"),
    ("idle_tunnels", "rss_first_MiB", "RSS with the first idle-tunnel count, MiB", "{:.1f}"),
    ("idle_tunnels", "rss_second_MiB", "RSS with the second idle-tunnel count, MiB", "{:.1f}"),
    ("idle_tunnels", "per_tunnel_KiB", "RSS per idle tunnel, KiB", "{:.1f}"),
    ("latency_c1", "p50_ms", "latency p50 at c=1, ms", "{:.3f}"),
    ("latency_c1", "p99_ms", "latency p99 at c=1, ms", "{:.3f}"),
]
# Where a smaller figure is better the ratio still reads target/reference: < 1 is better.
LOWER_IS_BETTER = {"cpu_s_per_GB", "rss_idle_MiB", "rss_first_MiB", "rss_second_MiB"}
LOWER_IS_BETTER |= {"per_tunnel_KiB", "p50_ms", "p99_ms", "setup_p50_ms"}


def summarize(rounds: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    out["valid"] = all(r.get("valid", True) for r in rounds)
    return out


def _label(workload: str, prefix: str, label: str, config: dict[str, Any]) -> str:
    suffix = workload[len(prefix) :]
    if prefix == "get_c":
        return f"{label}, c={suffix}"
    if prefix == "bulk_s":
        return f"{label}, {suffix} stream{'s' if suffix != '1' else ''}"
    if prefix == "tunnels_w":
        return f"{label}, {suffix} workers"
    if prefix == "idle_tunnels":
        first, second = config["idle_counts"]
        return label.replace("the first idle-tunnel count", f"{first} idle tunnels").replace(
            "the second idle-tunnel count", f"{second} idle tunnels"
        )
    return label


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(workload, metric, label, format) for every workload present, in ROWS order."""
    out = []
    for prefix, metric, label, fmt in ROWS:
        for workload in results["workloads"]:
            if workload.startswith(prefix):
                out.append(
                    (workload, metric, _label(workload, prefix, label, results["config"]), fmt)
                )
    return out


def _cell(entry: dict[str, Any] | None, metric: str, fmt: str) -> str:
    if entry is None or entry.get("not_applicable") or not entry.get("rounds"):
        return "n/a"
    summary = entry["summary"]
    if metric not in summary:
        return "FAILED" if not summary.get("valid", True) else "n/a"
    s = summary[metric]
    text = fmt.format(s["median"])
    if s["min"] != s["max"]:
        text += f" [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"
    return text if summary.get("valid", True) else text + " INVALID"


def _median(results: dict[str, Any], workload: str, target: str, metric: str) -> float | None:
    summary = results["workloads"][workload].get(target, {}).get("summary", {})
    value = summary.get(metric, {}).get("median")
    return float(value) if value is not None else None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def results_table(results: dict[str, Any]) -> str:
    targets = list(results["targets"])
    labels = [results["targets"][t]["label"] for t in targets]
    lines = [
        "| workload | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for workload, metric, label, fmt in _rows(results):
        cells = [_cell(results["workloads"][workload].get(t), metric, fmt) for t in targets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "direct" in targets:
        for pct in ("p50", "p99"):
            cells = []
            direct = _median(results, "latency_c1", "direct", f"{pct}_ms")
            for t in targets:
                value = _median(results, "latency_c1", t, f"{pct}_ms")
                cells.append("—" if value is None or direct is None else f"{value - direct:+.3f}")
            lines.append(f"| added latency {pct} vs direct, ms | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(results: dict[str, Any]) -> str:
    """proxyd targets against Squid with the same auth, and against direct."""
    targets = results["targets"]
    pairs = [(name, info["reference"]) for name, info in targets.items() if info.get("reference")]
    header = []
    for name, ref in pairs:
        header += [f"{targets[name]['label']} ÷ {targets[ref]['label']}"]
        header += [f"{targets[name]['label']} ÷ direct"]
    lines = ["| workload | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for workload, metric, label, _ in _rows(results):
        cells = []
        for name, ref in pairs:
            mine = _median(results, workload, name, metric)
            cells.append(_ratio(mine, _median(results, workload, ref, metric)))
            cells.append(_ratio(mine, _median(results, workload, "direct", metric)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks_table(results: dict[str, Any]) -> str:
    """Generator and proxy CPU (cores busy, median) and error counts summed over rounds."""
    targets = list(results["targets"])
    labels = [results["targets"][t]["label"] for t in targets]
    lines = [
        "| workload: generator + origin CPU / proxy CPU (cores), errors | "
        + " | ".join(labels)
        + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for workload, data in results["workloads"].items():
        if workload.startswith("latency"):
            continue  # the c=1 GET runs
        if workload.startswith("idle"):
            cells = [_idle_check(data.get(t)) for t in targets]
        else:
            cells = [_load_check(data.get(t)) for t in targets]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_check(entry: dict[str, Any] | None) -> str:
    if entry is None or not entry["rounds"]:
        return "n/a"
    rounds = [r for r in entry["rounds"] if "generator_cpu" in r]
    failed = len(entry["rounds"]) - len(rounds)
    if not rounds:
        return f"{failed} round(s) FAILED"
    gen = statistics.median(r["generator_cpu"] for r in rounds)
    origin = statistics.median(r["origin_cpu"] for r in rounds)
    proxy_values = [r["proxy_cpu"] for r in rounds if r.get("proxy_cpu") is not None]
    proxy = f"{statistics.median(proxy_values):.2f}" if proxy_values else "—"
    errors = sum(r["errors"] for r in rounds)
    text = f"{gen:.2f} + {origin:.2f} / {proxy}, {errors}"
    return text + (f", {failed} round(s) FAILED" if failed else "")


def _idle_check(entry: dict[str, Any] | None) -> str:
    if entry is None or not entry["rounds"]:
        return "n/a"
    errors = sum(r.get("errors", 0) for r in entry["rounds"])
    return f"errors {errors}"


# proxyd's own cost: (target, reference) on the same engine; and the -O effect.
ENGINE_PAIRS: list[tuple[str, str]] = [
    ("proxyd", "bare"),
    ("proxyd-digest", "bare"),
    ("proxyd-O", "bare-O"),
    ("proxyd-O-digest", "bare-O"),
    ("proxyd-O", "proxyd"),
    ("proxyd-O-digest", "proxyd-digest"),
    ("bare-O", "bare"),
]
# Issue 13's targets, reported and never asserted: GET with Digest at least GET_FLOOR x
# the bare engine's req/s, and p50 at one connection at most P50_ALLOWANCE_MS above it.
GOAL_PAIRS: list[tuple[str, str]] = [("proxyd-digest", "bare"), ("proxyd-O-digest", "bare-O")]
GET_FLOOR = 0.9
P50_ALLOWANCE_MS = 0.3


def _pairs(results: dict[str, Any], pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in pairs if a in results["targets"] and b in results["targets"]]


def _valid(results: dict[str, Any], workload: str, *targets: str) -> bool:
    entries = [results["workloads"][workload].get(t, {}) for t in targets]
    return all(e.get("summary", {}).get("valid", False) for e in entries)


def engine_table(results: dict[str, Any]) -> str:
    """Ratios of medians for ENGINE_PAIRS, plus p50/p99 at c=1 as a difference in ms."""
    targets = results["targets"]
    pairs = _pairs(results, ENGINE_PAIRS)
    if not pairs:
        return "(no bare engine or -O targets in this run)"
    header = [f"{targets[a]['label']} ÷ {targets[b]['label']}" for a, b in pairs]
    lines = ["| workload | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for workload, metric, label, _ in _rows(results):
        cells = []
        for a, b in pairs:
            mine, theirs = (
                _median(results, workload, a, metric),
                _median(results, workload, b, metric),
            )
            text = _ratio(mine, theirs)
            if text != "—" and not _valid(results, workload, a, b):
                text += " INVALID"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "latency_c1" in results["workloads"]:
        for pct in ("p50", "p99"):
            cells = []
            for a, b in pairs:
                mine = _median(results, "latency_c1", a, f"{pct}_ms")
                theirs = _median(results, "latency_c1", b, f"{pct}_ms")
                cells.append("—" if mine is None or theirs is None else f"{mine - theirs:+.3f}")
            lines.append(f"| latency {pct} at c=1, difference, ms | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets for each of GOAL_PAIRS present: figures, ratio, met or not."""
    out: list[dict[str, Any]] = []
    workloads = results["workloads"]
    for a, b in _pairs(results, GOAL_PAIRS):
        for workload in workloads:
            if not workload.startswith("get_c"):
                continue
            mine = _median(results, workload, a, "rps")
            theirs = _median(results, workload, b, "rps")
            ratio = mine / theirs if mine is not None and theirs else None
            out.append(
                {
                    "check": f"{workload} rps >= {GET_FLOOR} x reference",
                    "workload": workload,
                    "target": a,
                    "reference": b,
                    "value": mine,
                    "reference_value": theirs,
                    "ratio": ratio,
                    "met": ratio is not None and ratio >= GET_FLOOR,
                    "valid": _valid(results, workload, a, b),
                }
            )
        if "latency_c1" in workloads:
            mine = _median(results, "latency_c1", a, "p50_ms")
            theirs = _median(results, "latency_c1", b, "p50_ms")
            added = mine - theirs if mine is not None and theirs is not None else None
            out.append(
                {
                    "check": f"p50 at c=1 <= reference + {P50_ALLOWANCE_MS} ms",
                    "workload": "latency_c1",
                    "target": a,
                    "reference": b,
                    "value": mine,
                    "reference_value": theirs,
                    "added_ms": added,
                    "met": added is not None and added <= P50_ALLOWANCE_MS,
                    "valid": _valid(results, "latency_c1", a, b),
                }
            )
    return out


def goals_table(results: dict[str, Any]) -> str:
    targets = results["targets"]
    checks = results.get("goals") or goals(results)
    pairs = _pairs(results, GOAL_PAIRS)
    if not pairs:
        return "(no bare engine in this run)"
    header = [f"{targets[a]['label']} vs {targets[b]['label']}" for a, b in pairs]
    lines = ["| target | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    by_row: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for check in checks:
        by_row.setdefault(check["workload"], {})[(check["target"], check["reference"])] = check
    for workload, row in by_row.items():
        if workload == "latency_c1":
            label = f"latency p50 at c=1 ≤ reference + {P50_ALLOWANCE_MS:.3f} ms"
        else:
            label = f"GET req/s, c={workload[len('get_c') :]} ≥ {GET_FLOOR:.2f}x reference"
        cells = []
        for pair in pairs:
            check = row.get(pair)
            if check is None or check["value"] is None or check["reference_value"] is None:
                cells.append("—")
                continue
            verdict = "met" if check["met"] else "NOT met"
            if not check["valid"]:
                verdict += ", INVALID run"
            if workload == "latency_c1":
                cells.append(
                    f"{check['added_ms']:+.3f} ms ({check['value']:.3f} vs "
                    f"{check['reference_value']:.3f}): {verdict}"
                )
            else:
                cells.append(
                    f"{check['ratio']:.2f}x ({check['value']:,.0f} vs "
                    f"{check['reference_value']:,.0f}): {verdict}"
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Issue 14's targets (tunnels on proxyd's own front), reported and never asserted:
# proxyd+digest against Squid+digest, proxyd on one core.
TUNNEL_PAIR = ("proxyd-digest", "squid-digest")
SETUP_RATE_FLOOR = 1.0  # new authenticated tunnels/s; the issue resolves at 0.6
SETUP_P50_ALLOWANCE_MS = 0.2
BULK_FLOOR = 1.5  # MB/s
BULK_CPU_CEILING = 0.3  # CPU-seconds per GB
IDLE_TUNNEL_KIB = 16.0


def tunnel_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    if not _pairs(results, [TUNNEL_PAIR]):
        return []
    a, b = TUNNEL_PAIR
    workloads = results["workloads"]
    out: list[dict[str, Any]] = []

    def check(name: str, workload: str, metric: str, met: Any, shown: str) -> None:
        mine, theirs = _median(results, workload, a, metric), _median(results, workload, b, metric)
        ok = mine is not None and theirs is not None and met(mine, theirs)
        out.append(
            {
                "check": name,
                "workload": workload,
                "metric": metric,
                "value": mine,
                "reference_value": theirs,
                "shown": shown,
                "met": ok,
                "valid": _valid(results, workload, a, b),
            }
        )

    busiest = max((w for w in workloads if w.startswith("tunnels_w")), default=None, key=_suffix)
    if busiest is not None:
        check(
            f"new authenticated tunnels/s, {busiest[len('tunnels_w') :]} clients >= "
            f"{SETUP_RATE_FLOOR:.1f}x Squid (resolved at 0.6x)",
            busiest,
            "per_s",
            lambda m, t: m >= SETUP_RATE_FLOOR * t,
            "ratio",
        )
    if "tunnels_w1" in workloads:
        check(
            f"CONNECT set-up p50, 1 client <= Squid + {SETUP_P50_ALLOWANCE_MS} ms",
            "tunnels_w1",
            "setup_p50_ms",
            lambda m, t: m <= t + SETUP_P50_ALLOWANCE_MS,
            "difference",
        )
    bulk = max((w for w in workloads if w.startswith("bulk_s")), default=None, key=_suffix)
    if bulk is not None:
        check(
            f"tunnel bulk MB/s >= {BULK_FLOOR}x Squid",
            bulk,
            "MBps",
            lambda m, t: m >= BULK_FLOOR * t,
            "ratio",
        )
        check(
            f"tunnel bulk CPU-s/GB <= {BULK_CPU_CEILING}x Squid's",
            bulk,
            "cpu_s_per_GB",
            lambda m, t: m <= BULK_CPU_CEILING * t,
            "ratio",
        )
    if "idle_tunnels" in workloads:
        check(
            f"RSS per idle tunnel <= {IDLE_TUNNEL_KIB:.0f} KiB",
            "idle_tunnels",
            "per_tunnel_KiB",
            lambda m, t: m <= IDLE_TUNNEL_KIB,
            "value",
        )
    return out


def _suffix(workload: str) -> int:
    digits = "".join(c for c in workload if c.isdigit())
    return int(digits) if digits else 0


def tunnel_goals_table(results: dict[str, Any]) -> str:
    checks = results.get("tunnel_goals") or tunnel_goals(results)
    if not checks:
        return "(no proxyd+digest and Squid+digest in this run)"
    lines = ["| target | proxyd+digest | Squid+digest | | verdict |", "|---|---|---|---|---|"]
    for c in checks:
        mine, theirs = c["value"], c["reference_value"]
        if mine is None or theirs is None:
            lines.append(f"| {c['check']} | — | — | | — |")
            continue
        if c["shown"] == "ratio":
            between = f"{mine / theirs:.2f}x" if theirs else "—"
        elif c["shown"] == "difference":
            between = f"{mine - theirs:+.3f} ms"
        else:
            between = ""
        verdict = "met" if c["met"] else "NOT met"
        if not c["valid"]:
            verdict += ", INVALID run"
        lines.append(f"| {c['check']} | {mine:,.3f} | {theirs:,.3f} | {between} | {verdict} |")
    return "\n".join(lines)


# The TLS listeners next to the plain ones (the tunnel workloads): columns in this order,
# then the ratios (a ÷ b) of medians.
TLS_COLUMNS = (
    "squid-digest",
    "squid-tls-digest",
    "proxyd-digest",
    "proxyd-tls-digest",
    "proxyd-tls-basic",
)
TLS_RATIOS: list[tuple[str, str]] = [
    ("proxyd-tls-digest", "squid-tls-digest"),
    ("proxyd-tls-digest", "proxyd-digest"),
    ("squid-tls-digest", "squid-digest"),
    ("proxyd-tls-basic", "proxyd-tls-digest"),
]
TLS_METRICS = {"tunnels_w": ("per_s", "setup_p50_ms"), "bulk_s": ("MBps", "cpu_s_per_GB")}
# Generators + origin at least this many cores busy (of the one they share): the proxy's
# figure is a floor set by the load side, not the proxy's limit (marked in the TLS table).
LOAD_SIDE_FULL = 0.9


def _load_side(results: dict[str, Any], workload: str, target: str) -> float | None:
    """Median cores busy on the load side (generators + origin) over a target's rounds."""
    rounds = results["workloads"][workload].get(target, {}).get("rounds", [])
    busy = [r["generator_cpu"] + r["origin_cpu"] for r in rounds if "generator_cpu" in r]
    return statistics.median(busy) if busy else None


def _tls_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(workload, metric, label, format) of the workloads a TLS target ran."""
    tls = [name for name, info in results["targets"].items() if info.get("tls")]
    ran = {
        workload
        for workload, per_target in results["workloads"].items()
        if any(per_target.get(t, {}).get("rounds") for t in tls)
    }
    order = [metric for metrics in TLS_METRICS.values() for metric in metrics]
    rows = [
        row
        for row in _rows(results)
        if row[0] in ran
        and any(row[0].startswith(p) and row[1] in m for p, m in TLS_METRICS.items())
    ]
    return sorted(rows, key=lambda row: order.index(row[1]))  # tunnels first, then bulk


def tls_comparison(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per TLS row: each column's median and validity, and the TLS_RATIOS present."""
    targets = results["targets"]
    columns = [t for t in TLS_COLUMNS if t in targets]
    out = []
    for workload, metric, label, _ in _tls_rows(results):
        values = {t: _median(results, workload, t, metric) for t in columns}
        ratios = {}
        for a, b in _pairs(results, TLS_RATIOS):
            mine, theirs = values[a], values[b]
            ratios[f"{a} / {b}"] = mine / theirs if mine is not None and theirs else None
        out.append(
            {
                "workload": workload,
                "metric": metric,
                "label": label,
                "values": values,
                "valid": {t: _valid(results, workload, t) for t in columns},
                "load_side_cpu": {t: _load_side(results, workload, t) for t in columns},
                "ratios": ratios,
            }
        )
    return out


def tls_table(results: dict[str, Any]) -> str:
    targets = results["targets"]
    tls_meta = results["meta"].get("tls", {})
    notes = []
    if "squid_refused" in tls_meta:
        refused = tls_meta["squid_refused"]
        notes.append(f"Squid TLS+digest: not measured, Squid refused `https_port`: {refused}")
    columns = [t for t in TLS_COLUMNS if t in targets]
    pairs = _pairs(results, TLS_RATIOS)
    if not any(targets[t].get("tls") for t in columns):
        return "\n".join([*notes, "(no TLS targets in this run)"])
    header = [targets[t]["label"] for t in columns]
    header += [f"{targets[a]['label']} ÷ {targets[b]['label']}" for a, b in pairs]
    lines = ["| workload | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    floors = False
    for workload, metric, label, fmt in _tls_rows(results):
        cells = []
        for t in columns:
            cell = _cell(results["workloads"][workload].get(t), metric, fmt)
            busy = _load_side(results, workload, t)
            if metric in ("per_s", "MBps") and busy is not None and busy >= LOAD_SIDE_FULL:
                cell += " ‡"
                floors = True
            cells.append(cell)
        for a, b in pairs:
            mine = _median(results, workload, a, metric)
            theirs = _median(results, workload, b, metric)
            text = _ratio(mine, theirs)
            if text != "—" and metric.endswith("_ms"):
                assert mine is not None and theirs is not None
                text += f" ({mine - theirs:+.3f} ms)"
            if text != "—" and not _valid(results, workload, a, b):
                text += " INVALID"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if floors:
        notes.append(
            f"‡ the load side (generators + origin, one core) was at least {LOAD_SIDE_FULL} "
            "of its core busy: that proxy's figure is a floor, not its limit"
        )
    negotiated = tls_meta.get("negotiated", {})
    if "certificate" in tls_meta:
        notes.append(f"TLS: certificate {tls_meta['certificate']}")
    if negotiated:
        notes.append(
            "negotiated: " + "; ".join(f"{targets[t]['label']} {v}" for t, v in negotiated.items())
        )
    notes.append(
        "TLS set-up p50: TCP connect, full TLS handshake (certificate verified), CONNECT, "
        "to the 200's head"
    )
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)])
