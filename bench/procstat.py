"""Per-process-tree CPU time and RSS from /proc, and CPU affinity helpers.

A proxy with workers is a tree (proxyd master + workers, Squid + its auth helpers), so
every figure here is summed over the process and all its live descendants.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its closing one.
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """`root` and every live descendant, found by scanning /proc for parent ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree, in seconds (live processes only)."""
    total = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the comm split, utime and stime are fields 14 and 15 of stat(5).
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def cpu_snapshot(watch: dict[str, list[int]]) -> dict[str, float]:
    """CPU-seconds per named group of process trees (e.g. proxy, origins)."""
    return {name: sum(cpu_seconds(pid) for pid in roots) for name, roots in watch.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def rss_kib(root: int) -> int:
    total = 0
    for pid in descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def set_affinity(pids: Iterable[int], cpus: set[int]) -> None:
    """Pin every thread of every process in `pids` (affinity is per thread)."""
    for pid in pids:
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, cpus)
