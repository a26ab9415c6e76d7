"""Abuse limits of a real proxyd: failed-login throttling, head size, connections per source."""

from __future__ import annotations

import pytest
from harness import Origins, ProxydHandle, RawConnection

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "wonderland"


def target(origins: Origins) -> str:
    host, port = origins.http
    return f"http://{host}:{port}/x"


def login(
    proxyd: ProxydHandle,
    origins: Origins,
    password: str,
    user: str = USER,
    source: str | None = None,
) -> int:
    with RawConnection(proxyd.address, source=source) as conn:
        first, final = conn.request_with_digest("GET", target(origins), user, password)
        return (final or first).status


def slow_buckets(**limits: object) -> dict[str, object]:
    return {"limits": limits}


def test_failed_logins_per_source_are_throttled_with_429(proxyd_factory, origins: Origins) -> None:
    proxyd = proxyd_factory(
        **slow_buckets(auth_failures={"per_source": {"burst": 3, "per_minute": 1}})
    )
    assert [login(proxyd, origins, "wrong-password") for _ in range(3)] == [407, 407, 407]
    with RawConnection(proxyd.address) as conn:
        _, final = conn.request_with_digest("GET", target(origins), USER, "wrong-password")
        assert final is not None and final.status == 429
        assert final.header("Retry-After") == "60"
    # Throttled means not even checked, so the right password is refused too, for now...
    assert login(proxyd, origins, PASSWORD) == 429
    proxyd.wait_for_log(r"TCP_DENIED/429 .* auth=throttled")
    # ...but only from that address.
    assert login(proxyd, origins, PASSWORD, source="127.0.0.31") == 200


def test_failed_logins_per_user_are_throttled_across_sources(
    proxyd_factory, origins: Origins
) -> None:
    proxyd = proxyd_factory(
        users={"alice": "wonderland", "bob": "bob-password"},
        **slow_buckets(auth_failures={"per_user_total": {"burst": 2, "per_minute": 1}}),
    )
    for source in ("127.0.0.41", "127.0.0.42"):
        assert login(proxyd, origins, "guess", source=source) == 407
    assert login(proxyd, origins, PASSWORD, source="127.0.0.43") == 429
    assert login(proxyd, origins, "bob-password", user="bob", source="127.0.0.43") == 200


def test_a_stranger_cannot_lock_a_user_out_from_elsewhere(proxyd_factory, origins: Origins) -> None:
    proxyd = proxyd_factory(
        **slow_buckets(auth_failures={"per_user": {"burst": 2, "per_minute": 1}})
    )
    assert [login(proxyd, origins, "guess", source="127.0.0.44") for _ in range(3)] == [
        407,
        407,
        429,
    ]
    assert login(proxyd, origins, PASSWORD, source="127.0.0.45") == 200


def test_basic_attempts_are_not_failed_logins(proxyd_factory, origins: Origins) -> None:
    """A misconfigured pip sending Basic must not lock its NAT address out."""
    proxyd = proxyd_factory(
        **slow_buckets(auth_failures={"per_source": {"burst": 2, "per_minute": 1}})
    )
    basic = {"Proxy-Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="}
    for _ in range(20):
        with RawConnection(proxyd.address) as conn:
            assert conn.request("GET", target(origins), basic).status == 407
    assert login(proxyd, origins, PASSWORD) == 200


def test_stale_nonces_and_challenges_are_not_failures(proxyd_factory, origins: Origins) -> None:
    proxyd = proxyd_factory(
        **slow_buckets(auth_failures={"per_source": {"burst": 1, "per_minute": 1}})
    )
    for _ in range(5):  # each starts with an unauthenticated 407
        assert login(proxyd, origins, PASSWORD) == 200


@pytest.mark.parametrize("terminated", [True, False], ids=["large-head", "endless-head"])
def test_oversized_request_head_gets_431(
    proxyd_factory, origins: Origins, terminated: bool
) -> None:
    proxyd = proxyd_factory(**slow_buckets(max_header_bytes=2048))
    with RawConnection(proxyd.address) as conn:
        head = f"GET {target(origins)} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 4096}\r\n"
        conn.send(head.encode() + (b"\r\n" if terminated else b""))
        response = conn.read_response()
        assert response.status == 431
        assert "2048" in response.text
        assert conn.is_closed_by_peer()
    with RawConnection(proxyd.address) as conn:  # a normal head still works
        assert conn.request("GET", target(origins), {"X-Small": "a" * 1000}).status == 407


def test_connections_per_source_are_capped_with_a_clear_answer(
    proxyd_factory, origins: Origins
) -> None:
    proxyd = proxyd_factory(**slow_buckets(max_connections_per_source=3))
    held = [RawConnection(proxyd.address) for _ in range(3)]
    try:
        for conn in held:  # make sure the proxy has accepted all three
            assert conn.request("GET", target(origins)).status == 407
        with RawConnection(proxyd.address) as extra:
            response = extra.request("GET", target(origins))
            assert response.status == 429
            assert "more than 3 connections" in response.text
        with RawConnection(proxyd.address, source="127.0.0.51") as other:
            assert other.request("GET", target(origins)).status == 407
    finally:
        for conn in held:
            conn.close()
