"""A live fuzz run: a real `proxyd serve` gets a bounded stream of hostile request heads.

Every byte 0x00-0xFF in every Digest parameter, duplicated and missing parameters,
`username*`, `userhash`, random and mutated headers, random request targets and CONNECT
authorities, and huge `nc` jumps with valid credentials. Bounded by count and by time.

Oracle: the denied origin (127.0.0.3) never accepts a connection, the allowed origins see
only the valid requests, the admin port is never reached through the proxy, the proxy
stays alive with bounded memory, and a good request still works afterwards.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    DENIED_HOST,
    ORIGIN_HOST,
    Origins,
    ProxydHandle,
    RawConnection,
    digest_authorization,
    parse_challenge,
    raw_proxy_request,
)
from test_fail_closed import admin_port

pytestmark = pytest.mark.timeout(300)

USER, PASSWORD = "alice", "wonderland"
PARAMS = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "algorithm")
MAX_INPUTS = 6000
MAX_SECONDS = 120.0
MAX_RSS_GROWTH_KB = 64 * 1024
UNTHROTTLED = {"burst": 100_000, "per_minute": 100_000}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def exchange(address: tuple[str, int], head: bytes) -> bytes:
    """Send one request head on a fresh connection; what came back (up to the head's end
    or the close), b"" if the proxy closed without a word."""
    with socket.create_connection(address, timeout=3) as sock:
        sock.sendall(head)
        got = b""
        deadline = time.monotonic() + 3
        while b"\r\n\r\n" not in got and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got


def head(method: bytes, target: bytes, authorization: bytes | None, host: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host]
    if authorization is not None:
        lines.append(b"Proxy-Authorization: " + authorization)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def authorizations(nonce: str, uri: str, rng: random.Random) -> Iterator[bytes]:
    good = {
        "username": '"bob"',
        "realm": '"proxyd"',
        "nonce": f'"{nonce}"',
        "uri": f'"{uri}"',
        "response": '"0123456789abcdef0123456789abcdef"',
        "qop": "auth",
        "nc": "00000001",
        "cnonce": '"c0ffee"',
        "algorithm": "MD5",
    }

    def render(params: list[tuple[str, str]]) -> bytes:
        return ("Digest " + ", ".join(f"{k}={v}" for k, v in params)).encode("latin-1")

    base = list(good.items())
    for name in PARAMS:  # every byte in every parameter, inside its quotes or token
        for byte in range(256):
            value = good[name]
            cut = 1 if value.startswith('"') else 0
            mutated = value[:cut] + chr(byte) + value[cut:]
            yield render([(k, mutated if k == name else v) for k, v in base])
    for name in PARAMS:
        yield render([(k, v) for k, v in base if k != name])  # missing
        yield render([*base, (name, good[name])])  # duplicated
        yield render([*base, (name.upper(), good[name])])  # duplicated, other case
    for extra in (
        ("username*", "UTF-8''b%C3%B6b"),
        ("username*", "UTF-8''%FF%FE"),
        ("username*", "UTF-16''bob"),
        ("userhash", "true"),
        ("userhash", '"\xff"'),
    ):
        yield render([*base, extra])
        yield render([(k, v) for k, v in base if k != "username"] + [extra])
    for nc in ("ffffffff", "7fffffff", "00000000", "fffffffff", "-0000001", "0x000001"):
        yield render([(k, nc if k == "nc" else v) for k, v in base])
    whole = render(base)
    for _ in range(600):  # random bytes flipped in an otherwise well-formed header
        raw = bytearray(whole)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        yield bytes(raw).replace(b"\r", b"").replace(b"\n", b"")
    for _ in range(300):  # plain noise after the scheme, and with no scheme at all
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        noise = noise.replace(b"\r", b"").replace(b"\n", b"")
        yield b"Digest " + noise
        yield noise


def targets(rng: random.Random, origins: Origins, admin: int) -> Iterator[tuple[bytes, bytes]]:
    """(method, target) pairs: random bytes, near misses, and the admin port."""
    fixed = [
        (b"CONNECT", f"127.0.0.1:{admin}".encode()),
        (b"GET", f"http://127.0.0.1:{admin}/metrics".encode()),
        (b"CONNECT", f"{DENIED_HOST}:{origins.denied_http[1]}".encode()),
        (b"CONNECT", f"[::ffff:{DENIED_HOST}]:{origins.denied_http[1]}".encode()),
        (b"CONNECT", f"2130706435:{origins.denied_http[1]}".encode()),
        (b"CONNECT", f"{DENIED_HOST}:\xb2".encode("latin-1")),
        (b"CONNECT", f"{DENIED_HOST}:{origins.denied_http[1]}\xff".encode("latin-1")),
        (b"GET", f"http://{DENIED_HOST}:{origins.denied_http[1]}/\xff".encode("latin-1")),
        (b"G\xffT", f"http://{DENIED_HOST}:{origins.denied_http[1]}/".encode()),
    ]
    yield from fixed
    for _ in range(300):
        noise = bytes(rng.randrange(0x21, 256) for _ in range(rng.randint(1, 60)))
        yield (b"CONNECT", noise)
        yield (b"GET", b"http://" + noise + b"/")
        yield (noise[:8], b"http://" + DENIED_HOST.encode() + b"/")


def test_live_fuzz_never_lets_anything_through(proxyd_factory, origins: Origins) -> None:
    proxyd: ProxydHandle = proxyd_factory(
        admin_listen="127.0.0.1:0",
        limits={
            "auth_failures": {k: UNTHROTTLED for k in ("per_source", "per_user", "per_user_total")}
        },
    )
    admin = admin_port(proxyd)
    pid = proxyd.proc.pid
    rng = random.Random(7616)
    denied = f"{DENIED_HOST}:{origins.denied_http[1]}"
    allowed = f"http://{ORIGIN_HOST}:{origins.http[1]}/"
    with RawConnection(proxyd.address) as conn:  # a denied destination gets no challenge
        reply = conn.request("GET", allowed)
        nonce = parse_challenge(reply.header_all("Proxy-Authenticate")[0])["nonce"]
    rss_before = rss_kb(pid)
    started = time.monotonic()
    tried = 0
    statuses: dict[bytes, int] = {}

    def send(method: bytes, target: bytes, authorization: bytes | None) -> None:
        nonlocal tried
        got = exchange(proxyd.address, head(method, target, authorization, b"x"))
        tried += 1
        status = got[9:12] if got.startswith(b"HTTP/1.1 ") else b"---"
        statuses[status] = statuses.get(status, 0) + 1
        assert b"# HELP" not in got and b"proxyd_requests" not in got, (method, target)
        assert not got.startswith(b"HTTP/1.1 200"), (method, target, authorization, got)

    def budget_left() -> bool:
        return tried < MAX_INPUTS and time.monotonic() - started < MAX_SECONDS

    for i, authorization in enumerate(authorizations(nonce, denied, rng)):
        if not budget_left():
            break
        method, target = [
            (b"CONNECT", denied.encode()),
            (b"GET", f"http://{denied}/".encode()),
            (b"GET", allowed.encode()),  # where a broken check would show as a 200
        ][i % 3]
        send(method, target, authorization)
    for method, target in targets(rng, origins, admin):
        if not budget_left():
            break
        send(method, target, None)
        send(method, target, b"Digest " + bytes(rng.randrange(0x20, 256) for _ in range(40)))

    # Huge nc jumps with valid credentials on one nonce: each is let through once, and
    # must cost O(window), not O(jump).
    with RawConnection(proxyd.address) as conn:
        challenge = parse_challenge(
            conn.request("GET", allowed).header_all("Proxy-Authenticate")[0]
        )
    jumps = [1, 0xFFFFFFFF, 2, 0x7FFFFFFF, 0xFFFFFFFE, 0x80000000]
    for nc in jumps:
        value = digest_authorization(challenge, USER, PASSWORD, "GET", allowed, nc=nc)
        with RawConnection(proxyd.address) as conn:
            status = conn.request("GET", allowed, {"Proxy-Authorization": value}).status
        tried += 1
        assert status in (200, 407), (nc, status)
    rss_after = rss_kb(pid)
    print(
        f"\nlive fuzz: {tried} inputs in {time.monotonic() - started:.1f}s, "
        f"answers {dict(sorted(statuses.items()))}, RSS {rss_before} -> {rss_after} kB"
    )
    assert tried >= 3000
    assert proxyd.proc.poll() is None
    assert origins.denied_hits() == 0
    assert origins.hits("http") <= len(jumps)
    assert rss_after - rss_before < MAX_RSS_GROWTH_KB
    assert "Addon error" not in proxyd.log()
    assert "internal error" not in proxyd.log()
    good = raw_proxy_request(proxyd, "GET", allowed + "after", auth=(USER, PASSWORD))
    assert good.status == 200 and "origin-http /after" in good.text
