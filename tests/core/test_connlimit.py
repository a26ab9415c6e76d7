from __future__ import annotations

from proxy.core.connlimit import SourceCounts


def test_counts_per_source_and_the_uncounted_over_the_limit() -> None:
    counts = SourceCounts()
    a1, a2, a3, b1 = ("10.0.0.1", 1), ("10.0.0.1", 2), ("10.0.0.1", 3), ("10.0.0.2", 1)
    assert counts.opened(a1, 2) and counts.opened(a2, 2) and counts.opened(b1, 2)
    assert not counts.opened(a3, 2)
    assert a3 in counts.over and a1 not in counts.over
    counts.closed(a3, counted=False)
    counts.closed(a1, counted=True)
    assert counts.opened(a3, 2)
    for peer in (a2, a3, b1):
        counts.closed(peer, counted=True)
    assert not counts.open_by_source and not counts.over
