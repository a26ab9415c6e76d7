"""The admission core, sans-IO: one `Ask` in, one outcome out, for any bytes.

The expected digests come from tests/digest_oracle.py, not from proxyd's own code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import digest_oracle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.core import config
from proxy.core.admission import (
    Admission,
    Admit,
    Ask,
    Refuse,
    Resolve,
    ServeLocal,
    read_offer,
)
from proxy.core.digest import DigestVerifier, NonceCodec, UserSecrets
from proxy.service.runtime import ListenPorts, Runtime

NOW = 1_800_000_000.0
SECRET = b"k" * 32
REALM = "proxyd"
PASSWORD = "wonderland"
ORIGIN, DENIED = "127.0.0.2", "127.0.0.3"
PROXY = ("127.0.0.1", 3128)
ADMIN_PORT = 9128

CONFIG = f"""\
realm: {REALM}
admin_listen: 127.0.0.1:{ADMIN_PORT}
auth: {{users_file: users, nonce_secret_file: secret}}
zones:
  lab: [{ORIGIN}/32, 127.0.0.1/32]
  inside: [127.0.0.10/32]
rules:
  - name: inside
    from: [inside]
    to: [lab]
    ports: [80]
    auth: none
  - name: partners
    from: [any]
    to: [lab]
    ports: [80, 443, {ADMIN_PORT}, {PROXY[1]}]
    auth: required
limits:
  auth_failures:
    per_source: {{burst: 3, per_minute: 1}}
    per_user: {{burst: 2, per_minute: 1}}
    per_user_total: {{burst: 4, per_minute: 1}}
"""


def md5(text: str) -> str:
    return digest_oracle.hash_hex("MD5", text)


def make_runtime(text: str = CONFIG) -> Runtime:
    cfg = config.parse(text, Path("/cfg/proxyd.yaml"))
    alice = UserSecrets("alice", REALM, {"MD5": md5(f"alice:{REALM}:{PASSWORD}")})
    verifier = DigestVerifier(
        REALM, ("MD5",), NonceCodec(SECRET, 300), {"alice": alice}.get, replay=None
    )
    return Runtime(cfg, cfg.policy, None, verifier, None, ListenPorts(PROXY[1]))  # type: ignore[arg-type]


@pytest.fixture
def runtime() -> Runtime:
    return make_runtime()


def nonce(runtime: Runtime) -> str:
    return runtime.verifier.nonces.issue(NOW, b"r" * 12)


def digest(
    runtime: Runtime,
    method: str,
    uri: str,
    *,
    user: str = "alice",
    password: str = PASSWORD,
    nc: int = 1,
    cnonce: str = "c0ffee",
    name_param: str | None = None,
) -> bytes:
    n = nonce(runtime)
    response = digest_oracle.response(
        "MD5",
        user=user,
        realm=REALM,
        password=password,
        method=method,
        uri=uri,
        nonce=n,
        nc=f"{nc:08x}",
        cnonce=cnonce,
    )
    name = name_param if name_param is not None else f'username="{user}"'
    return (
        f'Digest {name}, realm="{REALM}", nonce="{n}", uri="{uri}", qop=auth, '
        f'nc={nc:08x}, cnonce="{cnonce}", response="{response}", algorithm=MD5'
    ).encode()


def connect(authority: str, *auth: bytes, peer: str = "127.0.0.50") -> Ask:
    return Ask(peer, PROXY, b"CONNECT", auth, authority=authority.encode())


def get(host: str, port: int, path: str = "/x", *auth: bytes, peer: str = "127.0.0.50") -> Ask:
    return Ask(peer, PROXY, b"GET", auth, scheme="http", host=host, port=port, path=path.encode())


def finish(gate: Admission, runtime: Runtime, ask: Ask) -> object:
    outcome = gate.begin(runtime, ask, NOW)
    if isinstance(outcome, Resolve):
        return gate.resolved(runtime, outcome, (ipaddress.ip_address(ORIGIN),), NOW)
    return outcome


# --- the reported bypass: a 0xFF byte in a Digest parameter ---------------------------

FF_HEADER = (
    b'Digest username="bob", realm="proxyd", nonce="NONCE", uri="127.0.0.3:38081", '
    b'response="00000000000000000000000000000000", qop=auth, nc=00000001, '
    b'cnonce="\xff", algorithm=MD5'
)


@pytest.mark.parametrize(
    "ask",
    [
        connect(f"{DENIED}:38081", FF_HEADER),
        connect(f"{ORIGIN}:443", FF_HEADER),
        connect(f"127.0.0.1:{ADMIN_PORT}", FF_HEADER),
        get(DENIED, 38081, "/x", FF_HEADER),
        get(ORIGIN, 80, "/x", FF_HEADER),
    ],
    ids=["connect-denied", "connect-allowed", "connect-admin", "get-denied", "get-allowed"],
)
def test_a_byte_outside_the_grammar_is_a_400_not_a_pass(runtime: Runtime, ask: Ask) -> None:
    header = FF_HEADER.replace(b"NONCE", nonce(runtime).encode())
    outcome = Admission(runtime.config.limits.auth_failures).begin(
        runtime, dataclasses.replace(ask, proxy_authorization=(header,)), NOW
    )
    assert isinstance(outcome, Refuse)
    assert (outcome.status, outcome.cause, outcome.auth) == (400, "bad_request", "bad_request")
    assert "0xff" in outcome.reason


@pytest.mark.parametrize("byte", [0x00, 0x0A, 0x0D, 0x7F, 0x80, 0xC3, 0xFF])
@pytest.mark.parametrize("param", ["username", "realm", "nonce", "uri", "cnonce", "response"])
def test_every_control_and_non_ascii_byte_in_every_parameter_is_a_400(
    runtime: Runtime, param: str, byte: int
) -> None:
    good = digest(runtime, "CONNECT", f"{ORIGIN}:443")
    start = good.index(f'{param}="'.encode()) + len(param) + 2
    bad = good[:start] + bytes([byte]) + good[start:]
    outcome = Admission(runtime.config.limits.auth_failures).begin(
        runtime, connect(f"{ORIGIN}:443", bad), NOW
    )
    assert isinstance(outcome, Refuse) and outcome.status == 400


# --- credentials ----------------------------------------------------------------------


def test_good_credentials_admit_to_the_checked_address(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    outcome = gate.begin(
        runtime, connect(f"{ORIGIN}:443", digest(runtime, "CONNECT", f"{ORIGIN}:443")), NOW
    )
    assert outcome == Admit(
        "127.0.0.50", "alice", "partners", (ipaddress.ip_address(ORIGIN),), 443, f"{ORIGIN}:443"
    )


def test_username_star_in_utf8_works(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    header = digest(runtime, "GET", "/x", name_param="username*=UTF-8''alice")
    outcome = gate.begin(runtime, get(ORIGIN, 80, "/x", header), NOW)
    assert isinstance(outcome, Admit) and outcome.user == "alice"


def test_username_star_with_a_non_ascii_name_is_an_unknown_user(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    header = digest(runtime, "GET", "/x", user="älice", name_param="username*=UTF-8''%C3%A4lice")
    outcome = gate.begin(runtime, get(ORIGIN, 80, "/x", header), NOW)
    assert isinstance(outcome, Refuse) and (outcome.status, outcome.cause) == (407, "unknown_user")


@pytest.mark.parametrize(
    "name_param",
    [
        "username*=UTF-8''%FF",  # not UTF-8
        "username*=ISO-8859-1''alice",  # only UTF-8
        "username*=alice",  # no charset
        "username*=UTF-8''a%4",  # a cut percent escape
        "username=\"alice\", username*=UTF-8''alice",  # both
    ],
)
def test_bad_username_star_is_a_400(runtime: Runtime, name_param: str) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    header = digest(runtime, "GET", "/x", name_param=name_param)
    outcome = gate.begin(runtime, get(ORIGIN, 80, "/x", header), NOW)
    assert isinstance(outcome, Refuse) and (outcome.status, outcome.cause) == (400, "bad_request")


def test_read_offer() -> None:
    assert read_offer([]).credentials is None and read_offer([]).refusal is None
    basic = read_offer([b"Basic YWxpY2U6d29uZGVybGFuZA=="])
    assert basic.failure is not None and basic.failure.reason == "basic"
    for values in ([b"Digest a=1", b"Digest a=1"], [b'Digest username="alice'], [b"Digest ,,,=="]):
        offer = read_offer(values)
        assert offer.refusal is not None and offer.refusal.status == 400


# --- the request itself ---------------------------------------------------------------


@pytest.mark.parametrize("method", [b"G\xffT", b"GET\x00", b"", b"G T", "GËT".encode()])
def test_a_method_outside_the_token_grammar_is_a_400(runtime: Runtime, method: bytes) -> None:
    ask = dataclasses.replace(get(ORIGIN, 80), method=method)
    outcome = Admission(runtime.config.limits.auth_failures).begin(runtime, ask, NOW)
    assert isinstance(outcome, Refuse) and outcome.status == 400


@pytest.mark.parametrize(
    "authority",
    [
        b"127.0.0.2:\xb2",
        b"127.0.0.2:\xc2\xb2",
        b"h\xffst:443",
        b"127.0.0.2",
        b":443",
        b"::1:443",
        b"[::1]x:443",
    ],
)
def test_a_bad_connect_authority_is_a_400(runtime: Runtime, authority: bytes) -> None:
    ask = Ask("127.0.0.50", PROXY, b"CONNECT", authority=authority)
    outcome = Admission(runtime.config.limits.auth_failures).begin(runtime, ask, NOW)
    assert isinstance(outcome, Refuse) and (outcome.status, outcome.cause) == (
        400,
        "bad_destination",
    )


def test_user_info_in_a_connect_target_is_a_400_and_never_logged(runtime: Runtime) -> None:
    ask = Ask("127.0.0.50", PROXY, b"CONNECT", authority=b"alice:s3cret@127.0.0.2:443")
    outcome = Admission(runtime.config.limits.auth_failures).begin(runtime, ask, NOW)
    assert isinstance(outcome, Refuse) and (outcome.status, outcome.cause) == (
        400,
        "bad_destination",
    )
    assert "s3cret" not in outcome.reason
    assert ask.display_target() == "***@127.0.0.2:443"


def test_the_pac_by_ip_is_served_without_auth_and_a_bad_host_header_is_harmless(
    runtime: Runtime,
) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    ask = dataclasses.replace(get(*PROXY, "/proxy.pac"), host_header=b"pr\xffxy:3128")
    outcome = gate.begin(runtime, ask, NOW)
    assert outcome == ServeLocal("GET", "/proxy.pac", "127.0.0.1")


def test_the_pac_by_a_name_for_the_proxy_is_served_not_forwarded(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    ask = dataclasses.replace(
        get("proxy.example", PROXY[1], "/proxy.pac"), host_header=b"proxy.example:3128"
    )
    step = gate.begin(runtime, ask, NOW)
    assert isinstance(step, Resolve) and step.name == "proxy.example"
    outcome = gate.resolved(runtime, step, (ipaddress.ip_address(PROXY[0]),), NOW)
    assert outcome == ServeLocal("GET", "/proxy.pac", "proxy.example")


@pytest.mark.parametrize("port", [PROXY[1], ADMIN_PORT])
def test_the_proxy_itself_is_never_a_tunnel_destination(runtime: Runtime, port: int) -> None:
    """Even authenticated, and although the zone and rule cover the address and port."""
    gate = Admission(runtime.config.limits.auth_failures)
    authority = f"127.0.0.1:{port}"
    outcome = gate.begin(runtime, connect(authority, digest(runtime, "CONNECT", authority)), NOW)
    assert isinstance(outcome, Refuse) and outcome.status == 403


def test_the_admin_port_on_a_wildcard_admin_listener_is_refused_at_the_local_address() -> None:
    runtime = make_runtime(CONFIG.replace("admin_listen: 127.0.0.1:", "admin_listen: 0.0.0.0:"))
    gate = Admission(runtime.config.limits.auth_failures)
    ask = Ask("127.0.0.50", (ORIGIN, 3128), b"CONNECT", authority=f"{ORIGIN}:{ADMIN_PORT}".encode())
    ask = dataclasses.replace(
        ask, proxy_authorization=(digest(runtime, "CONNECT", f"{ORIGIN}:{ADMIN_PORT}"),)
    )
    outcome = gate.begin(runtime, ask, NOW)
    assert isinstance(outcome, Refuse) and outcome.status == 403


# --- the failed-login throttle ----------------------------------------------------------


def statuses(gate: Admission, runtime: Runtime, asks: list[Ask]) -> list[int]:
    out = []
    for ask in asks:
        outcome = finish(gate, runtime, ask)
        assert isinstance(outcome, Refuse | Admit)
        out.append(200 if isinstance(outcome, Admit) else outcome.status)
    return out


def test_basic_and_malformed_headers_never_cost_tokens(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    basic = get(ORIGIN, 80, "/x", b"Basic YWxpY2U6d29uZGVybGFuZA==")
    malformed = get(ORIGIN, 80, "/x", b'Digest username="alice')
    assert statuses(gate, runtime, [basic] * 20 + [malformed] * 20) == [407] * 20 + [400] * 20
    good = get(ORIGIN, 80, "/x", digest(runtime, "GET", "/x"))
    assert statuses(gate, runtime, [good]) == [200]


def test_a_stranger_cannot_lock_out_a_user_who_logs_in_from_elsewhere(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    wrong = get(
        ORIGIN, 80, "/x", digest(runtime, "GET", "/x", password="guess1234"), peer="127.0.0.66"
    )
    assert statuses(gate, runtime, [wrong] * 3) == [407, 407, 429]  # per user at that source: 2
    mine = get(ORIGIN, 80, "/x", digest(runtime, "GET", "/x", nc=2), peer="127.0.0.77")
    assert statuses(gate, runtime, [mine]) == [200]


def test_guesses_from_many_sources_hit_the_per_user_total(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    for i in range(4):  # per_user_total burst 4, spread over four sources
        wrong = get(
            ORIGIN,
            80,
            "/x",
            digest(runtime, "GET", "/x", password="guess1234"),
            peer=f"127.0.1.{i}",
        )
        assert statuses(gate, runtime, [wrong]) == [407]
    right = get(ORIGIN, 80, "/x", digest(runtime, "GET", "/x", nc=9), peer="127.0.2.1")
    assert statuses(gate, runtime, [right]) == [429]


def test_guesses_at_many_names_from_one_source_hit_the_per_source_bucket(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    asks = [get(ORIGIN, 80, "/x", digest(runtime, "GET", "/x", user=f"u{i}")) for i in range(4)]
    assert statuses(gate, runtime, asks) == [407, 407, 407, 429]


def test_a_replay_is_a_guess_and_costs_a_token(runtime: Runtime) -> None:
    gate = Admission(runtime.config.limits.auth_failures)
    once = get(ORIGIN, 80, "/x", digest(runtime, "GET", "/x"))
    assert statuses(gate, runtime, [once, once, once, once]) == [200, 407, 407, 429]


# --- never raises, never admits what the policy does not --------------------------------

header_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda parts: b"Digest " + b", ".join(parts),
        st.lists(
            st.builds(
                lambda k, v, q: k + b"=" + (b'"' + v + b'"' if q else v),
                st.sampled_from(
                    [
                        b"username",
                        b"username*",
                        b"realm",
                        b"nonce",
                        b"uri",
                        b"response",
                        b"qop",
                        b"nc",
                        b"cnonce",
                        b"algorithm",
                        b"userhash",
                        b"x",
                    ]
                ),
                st.binary(max_size=40),
                st.booleans(),
            ),
            max_size=12,
        ),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    auth=st.lists(header_bytes, max_size=2),
    method=st.one_of(st.sampled_from([b"GET", b"CONNECT", b"POST"]), st.binary(max_size=10)),
    authority=st.one_of(st.binary(max_size=60), st.sampled_from([b"127.0.0.2:443", b"[::1]:443"])),
    host=st.text(max_size=40),
    port=st.integers(min_value=0, max_value=70000),
    path=st.binary(max_size=60),
    host_header=st.one_of(st.none(), st.binary(max_size=60)),
    over=st.booleans(),
)
def test_any_bytes_give_an_outcome_and_never_an_unchecked_admit(
    auth: list[bytes],
    method: bytes,
    authority: bytes,
    host: str,
    port: int,
    path: bytes,
    host_header: bytes | None,
    over: bool,
) -> None:
    runtime = make_runtime_cached()
    gate = Admission(runtime.config.limits.auth_failures)
    ask = Ask(
        "127.0.0.50",
        PROXY,
        method,
        tuple(auth),
        authority,
        "http",
        host,
        port,
        path,
        host_header,
        over,
    )
    outcome = gate.begin(runtime, ask, NOW)
    if isinstance(outcome, Resolve):
        outcome = gate.resolved(runtime, outcome, (ipaddress.ip_address(DENIED),), NOW)
    assert isinstance(outcome, Refuse | ServeLocal | Admit)
    if isinstance(outcome, Admit):  # only with valid credentials, which random bytes aren't
        raise AssertionError(f"admitted {ask!r}")


_RUNTIME: list[Runtime] = []


def make_runtime_cached() -> Runtime:
    if not _RUNTIME:
        _RUNTIME.append(make_runtime())
    return _RUNTIME[0]


# --- Basic inside TLS ------------------------------------------------------------------

TLS_CONFIG = CONFIG.replace(
    "auth: {users_file: users, nonce_secret_file: secret}",
    "auth: {users_file: users, nonce_secret_file: secret, basic_over_tls: true}\n"
    "tls_listen: 127.0.0.1:3129\ntls: {certificate: c.pem, key: k.pem}",
)


def basic(user: str, password: str) -> bytes:
    import base64

    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def tls_runtime() -> Runtime:
    runtime = make_runtime(TLS_CONFIG)
    runtime.ports = ListenPorts(PROXY[1], 43129)
    return runtime


def test_basic_is_admitted_inside_tls_only() -> None:
    runtime = tls_runtime()
    gate = Admission(runtime.config.limits.auth_failures)
    inside = dataclasses.replace(get(ORIGIN, 80, "/x", basic("alice", PASSWORD)), tls=True)
    outcome = finish(gate, runtime, inside)
    assert isinstance(outcome, Admit) and outcome.user == "alice"
    plain = finish(gate, runtime, get(ORIGIN, 80, "/x", basic("alice", PASSWORD)))
    assert isinstance(plain, Refuse) and plain.status == 407 and plain.cause == "basic"
    assert "https://127.0.0.1:43129" in plain.reason  # the port as bound, not the config's


def test_basic_inside_tls_without_the_option_is_refused_as_on_plain_text() -> None:
    runtime = make_runtime(TLS_CONFIG.replace("basic_over_tls: true", "basic_over_tls: false"))
    gate = Admission(runtime.config.limits.auth_failures)
    ask = dataclasses.replace(get(ORIGIN, 80, "/x", basic("alice", PASSWORD)), tls=True)
    outcome = finish(gate, runtime, ask)
    assert isinstance(outcome, Refuse) and outcome.cause == "basic"
    assert "use Digest" in outcome.reason and "https://" not in outcome.reason


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (basic("alice", "wrong-password"), "bad_password"),
        (basic("nobody", PASSWORD), "unknown_user"),
        (b"Basic !!notbase64", None),
        (b"Basic " + __import__("base64").b64encode(b"alice-no-colon"), None),
        (b"Basic " + __import__("base64").b64encode(b"alice:\xff\xfe"), None),
    ],
)
def test_bad_basic_credentials_inside_tls(header: bytes, reason: str | None) -> None:
    runtime = tls_runtime()
    gate = Admission(runtime.config.limits.auth_failures)
    outcome = finish(gate, runtime, dataclasses.replace(get(ORIGIN, 80, "/x", header), tls=True))
    assert isinstance(outcome, Refuse)
    if reason is None:
        assert outcome.status == 400 and "Basic" in outcome.reason
    else:
        assert outcome.status == 407 and outcome.cause == reason


def test_failed_basic_logins_are_throttled_like_digest() -> None:
    runtime = tls_runtime()
    gate = Admission(runtime.config.limits.auth_failures)
    wrong = dataclasses.replace(get(ORIGIN, 80, "/x", basic("alice", "nope-nope")), tls=True)
    # per_user: a burst of 2 guesses at one name from one address, then 429 unverified
    right = dataclasses.replace(get(ORIGIN, 80, "/x", basic("alice", PASSWORD)), tls=True)
    assert statuses(gate, runtime, [wrong, wrong, wrong, right]) == [407, 407, 429, 429]


def test_the_challenges_inside_tls_add_basic() -> None:
    runtime = tls_runtime()
    refusal = Refuse(407, "authentication required", "no_credentials")
    inside = [c.split()[0] for c in runtime.challenges(refusal, tls=True)]
    assert inside == ["Digest", "Digest", "Basic"]  # MD5, SHA-256, then Basic
    assert [c.split()[0] for c in runtime.challenges(refusal, tls=False)] == ["Digest", "Digest"]
    assert runtime.challenges(Refuse(403, "no", "denied"), tls=True) == []
