"""FailureThrottle: token buckets driven by a given clock."""

from __future__ import annotations

from proxy.core.throttle import BucketSpec, FailureThrottle


def test_burst_then_throttled_then_refilled() -> None:
    t = FailureThrottle(BucketSpec(burst=3, per_minute=6))  # one token back every 10 s
    for now in (0.0, 0.1, 0.2):
        assert not t.throttled("1.2.3.4", now)
        t.failed("1.2.3.4", now)
    assert t.throttled("1.2.3.4", 0.3)
    assert not t.throttled("5.6.7.8", 0.3)  # per key
    assert t.throttled("1.2.3.4", 9.8)  # 0.02 left after the burst, +0.96 refilled
    assert not t.throttled("1.2.3.4", 10.1)


def test_refill_is_capped_at_burst() -> None:
    t = FailureThrottle(BucketSpec(burst=2, per_minute=60))
    t.failed("k", 0.0)
    for now in (1000.0, 1000.1):
        t.failed("k", now)
    assert t.throttled("k", 1000.2)


def test_clock_going_backwards_never_adds_tokens() -> None:
    t = FailureThrottle(BucketSpec(burst=1, per_minute=60))
    t.failed("k", 100.0)
    assert t.throttled("k", 50.0)


def test_memory_is_bounded_least_recent_forgotten() -> None:
    t = FailureThrottle(BucketSpec(burst=1, per_minute=1), max_keys=3)
    for i in range(5):
        t.failed(f"k{i}", float(i))
    assert len(t) == 3
    assert not t.throttled("k0", 5.0) and t.throttled("k4", 5.0)
