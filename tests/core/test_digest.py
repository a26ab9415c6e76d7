"""Digest auth (RFC 7616), sans-IO: parser, nonces, replay window and verifier.

Every case is a row of plain values: a fixed clock, fixed random bytes and a fixed secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable

import pytest

from proxy.core.digest import (
    REQUIRED_PARAMS,
    DigestCredentials,
    DigestVerifier,
    NonceCodec,
    ReplayWindow,
    UserSecrets,
    challenges,
    expected_response,
    ha1,
    parse_auth_params,
    parse_credentials,
)
from proxy.core.errors import AuthFailure, MalformedCredentials

# --- RFC 7616 section 3.9.1 ---------------------------------------------------------------

RFC_PASSWORD = "Circle of Life"
RFC_PARAMS = {
    "username": '"Mufasa"',
    "realm": '"http-auth@example.org"',
    "uri": '"/dir/index.html"',
    "algorithm": "MD5",
    "nonce": '"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"',
    "nc": "00000001",
    "cnonce": '"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"',
    "qop": "auth",
    "response": '"8ca523f5e9506fed4657c9700eebdbec"',
    "opaque": '"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
}
RFC_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def header(params: dict[str, str], sep: str = ", ", scheme: str = "Digest") -> str:
    """A Proxy-Authorization value from already-quoted parameter values."""
    return f"{scheme} " + sep.join(f"{k}={v}" for k, v in params.items())


def rfc_header(**changes: str | None) -> str:
    """The RFC example header with some parameters replaced (None: left out)."""
    params = {**RFC_PARAMS, **changes}
    return header({k: v for k, v in params.items() if v is not None})


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_worked_example(algorithm: str) -> None:
    response = RFC_RESPONSES[algorithm]
    creds = parse_credentials(rfc_header(algorithm=algorithm, response=f'"{response}"'))
    assert creds.algorithm == algorithm
    secret = ha1(algorithm, "Mufasa", "http-auth@example.org", RFC_PASSWORD)
    assert expected_response(algorithm, secret, creds, "GET") == response


def test_rfc_example_parses_to_the_record() -> None:
    assert parse_credentials(rfc_header()) == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        uri="/dir/index.html",
        response="8ca523f5e9506fed4657c9700eebdbec",
        algorithm="MD5",
        qop="auth",
        nc=1,
        nc_text="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )


@pytest.mark.parametrize(
    "sep",
    [
        pytest.param(",", id="no-space"),
        pytest.param(" ,  ", id="spaces-both-sides"),
        pytest.param("\t,\t", id="tabs"),
        pytest.param(",        ", id="unfolded-line"),
        pytest.param(", ,, ", id="empty-elements"),
    ],
)
def test_rfc_example_with_odd_separators(sep: str) -> None:
    assert parse_credentials(header(RFC_PARAMS, sep=sep)) == parse_credentials(rfc_header())


@pytest.mark.parametrize("value", [f"  {rfc_header()}  ", rfc_header() + ",", rfc_header() + " , "])
def test_rfc_example_with_surrounding_whitespace_and_trailing_comma(value: str) -> None:
    assert parse_credentials(value) == parse_credentials(rfc_header())


def test_every_prefix_parses_or_raises_malformed() -> None:
    """Truncated anywhere, the header is refused cleanly (never another exception)."""
    whole = rfc_header()
    for end in range(len(whole)):
        with contextlib.suppress(MalformedCredentials):
            parse_credentials(whole[:end])


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(" garbage", id="bare-word"),
        pytest.param(', x="unterminated', id="unterminated"),
        pytest.param(", =x", id="no-name"),
        pytest.param('"', id="stray-quote"),
    ],
)
def test_trailing_garbage_is_refused(trailer: str) -> None:
    with pytest.raises(MalformedCredentials):
        parse_credentials(rfc_header() + trailer)


def test_unknown_params_are_ignored() -> None:
    assert parse_credentials(rfc_header() + ', x-extra="a,b", y=z') == parse_credentials(
        rfc_header()
    )


# --- The auth-param grammar ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("a=b", {"a": "b"}),
        ("a = b", {"a": "b"}),
        ("a\t=\tb", {"a": "b"}),
        ("A=b", {"a": "b"}),
        ("a=b,c=d", {"a": "b", "c": "d"}),
        ("a=b ,   c=d", {"a": "b", "c": "d"}),
        ("a=b,,c=d", {"a": "b", "c": "d"}),
        ("a=b, , ,c=d,", {"a": "b", "c": "d"}),
        ('a=""', {"a": ""}),
        ('a="x y"', {"a": "x y"}),
        ('a="x\ty"', {"a": "x\ty"}),
        ('a="1,2", b=3', {"a": "1,2", "b": "3"}),
        ('a="x=1, y=2"', {"a": "x=1, y=2"}),
        ('a="say \\"hi\\""', {"a": 'say "hi"'}),
        ('a="back\\\\slash"', {"a": "back\\slash"}),
        ('a="\\a\\b"', {"a": "ab"}),
        ('a="é"', {"a": "é"}),
        ("a=!#$%&'*+-.^_`|~09", {"a": "!#$%&'*+-.^_`|~09"}),
        (", a=b", {"a": "b"}),
        (" ,, a=b", {"a": "b"}),
        (",", {}),
    ],
)
def test_parse_auth_params(text: str, expected: dict[str, str]) -> None:
    assert parse_auth_params(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("a=b, a=c", "given twice"),
        ("a=b, A=c", "given twice"),
        ('a="unterminated', "unterminated"),
        ('a="ends in backslash\\', "unterminated"),
        ('a="x\x01y"', "control character"),
        ('a="x\x7fy"', "control character"),
        ('a="x\ny"', "control character"),
        ('a="x\\\x00"', "control character"),
        ("a", "has no value"),
        ("a=", "empty value"),
        ("a=, b=c", "empty value"),
        ("=b", "expected a parameter name"),
        ("a=b c=d", "expected ','"),
        ('a="b"c', "expected ','"),
        ("a=b;c=d", "expected ','"),
        ("a=/path", "empty value"),
        ("a=b\x00", "expected ','"),
    ],
)
def test_parse_auth_params_refuses(text: str, message: str) -> None:
    with pytest.raises(MalformedCredentials, match=message):
        parse_auth_params(text)


# --- Credentials records ------------------------------------------------------------------


@pytest.mark.parametrize("missing", REQUIRED_PARAMS)
def test_each_required_param_is_required(missing: str) -> None:
    with pytest.raises(MalformedCredentials, match=f"missing parameter.*{missing}"):
        parse_credentials(rfc_header(**{missing: None}))


def test_username_star_is_decoded_from_utf8() -> None:
    value = rfc_header(username=None, **{"username*": "UTF-8''J%C3%A4s%C3%B8n"})
    assert parse_credentials(value).username == "J\u00e4s\u00f8n"


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "no authentication scheme"),
        ("   ", "no authentication scheme"),
        ("Basic dXNlcjpwYXNz", "not a Digest header"),
        ("Bearer abc", "not a Digest header"),
        ('Dig\x00est username="x"', "byte 0x00 at offset 3"),
        ("Digest", "missing parameter"),
        (rfc_header(nc="1"), "nc must be 8 hex digits"),
        (rfc_header(nc="0000001"), "nc must be 8 hex digits"),
        (rfc_header(nc="000000001"), "nc must be 8 hex digits"),
        (rfc_header(nc="0000000g"), "nc must be 8 hex digits"),
        (rfc_header(nc="+0000001"), "nc must be 8 hex digits"),
        (rfc_header(nc='"0000 01"'), "nc must be 8 hex digits"),
        (rfc_header(**{"username*": "UTF-8''J%C3%A4s%C3%B8n"}), "username\\*"),
        (rfc_header(userhash="true"), "userhash"),
        (rfc_header(userhash='"TRUE"'), "userhash"),
        (rfc_header(nonce=None, Nonce='"x"', NONCE='"y"'), "given twice"),
    ],
)
def test_parse_credentials_refuses(value: str, message: str) -> None:
    with pytest.raises(MalformedCredentials, match=message):
        parse_credentials(value)


@pytest.mark.parametrize(
    "changes, field, expected",
    [
        ({}, "algorithm", "MD5"),
        ({"algorithm": None}, "algorithm", "MD5"),
        ({"algorithm": "sha-256"}, "algorithm", "SHA-256"),
        ({"algorithm": '"SHA-256"'}, "algorithm", "SHA-256"),
        ({"qop": '"AUTH"'}, "qop", "auth"),
        ({"response": '"8CA523F5E9506FED4657C9700EEBDBEC"'}, "response", RFC_RESPONSES["MD5"]),
        ({"nc": "0000000A"}, "nc", 10),
        ({"nc": "ffffffff"}, "nc", 0xFFFFFFFF),
        ({"userhash": "false"}, "nc", 1),
        ({"username": '"Mu\\"fasa"'}, "username", 'Mu"fasa'),
        ({"uri": '"http://example.org/a,b?c=d"'}, "uri", "http://example.org/a,b?c=d"),
        ({"uri": '"example.org:443"'}, "uri", "example.org:443"),
    ],
)
def test_parse_credentials_normalises(
    changes: dict[str, str], field: str, expected: object
) -> None:
    assert getattr(parse_credentials(rfc_header(**changes)), field) == expected


@pytest.mark.parametrize("scheme", ["digest", "DIGEST", "DiGeSt"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert parse_credentials(header(RFC_PARAMS, scheme=scheme)) == parse_credentials(rfc_header())


# --- Nonces ---------------------------------------------------------------------------

SECRET = bytes(range(32))
NOW = 1_700_000_000
RANDOM = b"\x01" * 12
LIFETIME = 300


def codec(secret: bytes = SECRET) -> NonceCodec:
    return NonceCodec(secret, LIFETIME)


def test_nonce_round_trip() -> None:
    nonce = codec().issue(NOW + 0.75, RANDOM)
    assert codec().issued_at(nonce) == NOW + 0.75
    assert len(nonce) == 48
    assert set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_nonce_is_deterministic_in_clock_and_random() -> None:
    assert codec().issue(NOW, RANDOM) == codec().issue(NOW, RANDOM)
    assert codec().issue(NOW, RANDOM) != codec().issue(NOW, b"\x02" * 12)
    assert codec().issue(NOW, RANDOM) != codec().issue(NOW + 0.001, RANDOM)


def test_short_random_is_padded() -> None:
    assert codec().issued_at(codec().issue(NOW, b"\x01")) == NOW


def test_every_tampered_character_is_refused() -> None:
    nonce = codec().issue(NOW, RANDOM)
    for i, c in enumerate(nonce):
        forged = nonce[:i] + ("A" if c != "A" else "B") + nonce[i + 1 :]
        with pytest.raises(AuthFailure, match="bad_nonce"):
            codec().issued_at(forged)


def _nonce_variants() -> list[object]:
    nonce = codec().issue(NOW, RANDOM)
    return [
        pytest.param(nonce[:-4], id="truncated"),
        pytest.param(nonce + "AAAA", id="extended"),
        pytest.param("", id="empty"),
        pytest.param("A", id="one-char"),
        pytest.param("!!!!" * 12, id="not-base64"),
        pytest.param("é" * 48, id="non-ascii"),
        pytest.param(nonce + "=", id="stray-padding"),
        pytest.param("7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", id="rfc-example"),
        pytest.param(NonceCodec(b"another secret!!", LIFETIME).issue(NOW, RANDOM), id="other-key"),
    ]


@pytest.mark.parametrize("nonce", _nonce_variants())
def test_bad_nonces_are_refused(nonce: str) -> None:
    with pytest.raises(AuthFailure, match="bad_nonce") as info:
        codec().issued_at(nonce)
    assert info.value.reason == "bad_nonce"
    assert not info.value.stale


def test_nonce_aliases_are_refused() -> None:
    """base64 decoders skip stray characters and take '+' for '-': one nonce, one spelling."""
    nonce = next(n for r in range(256) if "-" in (n := codec().issue(NOW, bytes([r]) * 12)))
    assert codec().issued_at(nonce) == NOW
    for alias in (
        nonce.replace("-", "+"),
        nonce[:10] + "." + nonce[10:],
        nonce[:10] + " " + nonce[10:],
    ):
        with pytest.raises(AuthFailure, match="bad_nonce"):
            codec().issued_at(alias)


def test_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        NonceCodec(b"x" * 15, LIFETIME)


@pytest.mark.parametrize(
    "now, stale",
    [
        (NOW, False),
        (NOW + LIFETIME, False),
        (NOW + LIFETIME + 0.001, True),
        (NOW + 10 * LIFETIME, True),
        (NOW - 30, False),  # issued up to 30 s in the future: another replica's clock
    ],
)
def test_nonce_age(now: int, stale: bool) -> None:
    assert codec().is_stale(NOW, now) is stale


def test_nonce_from_too_far_in_the_future_is_refused() -> None:
    with pytest.raises(AuthFailure, match="bad_nonce"):
        codec().is_stale(NOW, NOW - 31)


# --- Replay window ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, accepted",
    [
        pytest.param([1, 2, 3, 4], [True, True, True, True], id="increasing"),
        pytest.param([1, 1], [True, False], id="exact-repeat"),
        pytest.param([1, 2, 2], [True, True, False], id="repeat-highest"),
        pytest.param([1, 3, 2, 2], [True, True, True, False], id="out-of-order"),
        pytest.param([5, 1, 2, 1], [True, True, True, False], id="first-seen-high"),
        pytest.param([1, 9, 2, 1], [True, True, True, False], id="inside-window"),
        pytest.param([1, 20, 12, 13], [True, True, False, True], id="edge-of-window"),
        pytest.param([1, 100, 1, 99], [True, True, False, True], id="jump-past-window"),
        pytest.param([3, 3, 3], [True, False, False], id="hammering"),
    ],
)
def test_replay_window_counts(counts: list[int], accepted: list[bool]) -> None:
    window = ReplayWindow(window=8)
    assert [window.accept("n", nc, expires_at=NOW + 300, now=NOW) for nc in counts] == accepted


def test_replay_window_keeps_nonces_apart() -> None:
    window = ReplayWindow()
    assert window.accept("a", 1, NOW + 300, NOW)
    assert window.accept("b", 1, NOW + 300, NOW)
    assert not window.accept("a", 1, NOW + 300, NOW)


def test_replay_window_forgets_expired_nonces() -> None:
    window = ReplayWindow()
    window.accept("old", 1, expires_at=NOW + 10, now=NOW)
    window.accept("young", 1, expires_at=NOW + 300, now=NOW)
    assert len(window) == 2
    window.accept("new", 1, expires_at=NOW + 400, now=NOW + 11)
    assert len(window) == 2
    assert not window.accept("young", 1, expires_at=NOW + 300, now=NOW + 11)


def test_replay_window_is_bounded() -> None:
    window = ReplayWindow(max_nonces=3)
    for i in range(10):
        window.accept(f"n{i}", 1, expires_at=NOW + 300, now=NOW)
        assert len(window) <= 3
    assert not window.accept("n9", 1, NOW + 300, NOW)  # the newest are kept


# --- Verifier ------------------------------------------------------------------------------

REALM = "proxyd"
PASSWORD = "wonderland"
USERS = {
    "alice": UserSecrets(
        "alice", REALM, {alg: ha1(alg, "alice", REALM, PASSWORD) for alg in ("MD5", "SHA-256")}
    ),
    # As imported from an htdigest file: MD5 only.
    "bob": UserSecrets("bob", REALM, {"MD5": ha1("MD5", "bob", REALM, PASSWORD)}),
    # Expires one second after the fixed clock's NOW.
    "carol": UserSecrets(
        "carol",
        REALM,
        {alg: ha1(alg, "carol", REALM, PASSWORD) for alg in ("MD5", "SHA-256")},
        expires=NOW + 1,
    ),
}
URIS = {"/index.html", "http://origin.test/index.html"}


def verifier(algorithms: tuple[str, ...] = ("MD5", "SHA-256")) -> DigestVerifier:
    return DigestVerifier(REALM, algorithms, codec(), USERS.get)


@dataclasses.dataclass(frozen=True)
class Signed:
    """What a client sends, signed with `password` after any changes to the fields."""

    username: str = "alice"
    password: str = PASSWORD
    realm: str = REALM
    algorithm: str = "SHA-256"
    uri: str = "/index.html"
    method: str = "GET"
    qop: str = "auth"
    nc: str = "00000001"
    nonce: str = dataclasses.field(default_factory=lambda: codec().issue(NOW, RANDOM))

    def header(self) -> str:
        def h(text: str) -> str:
            return hashlib.new(self.algorithm.replace("-", ""), text.encode()).hexdigest()

        secret = h(f"{self.username}:{self.realm}:{self.password}")
        ha2 = h(f"{self.method}:{self.uri}")
        response = h(f"{secret}:{self.nonce}:{self.nc}:c0ffee:{self.qop}:{ha2}")
        return (
            f'Digest username="{self.username}", realm="{self.realm}", nonce="{self.nonce}", '
            f'uri="{self.uri}", algorithm={self.algorithm}, qop={self.qop}, nc={self.nc}, '
            f'cnonce="c0ffee", response="{response}"'
        )

    def verify(self, v: DigestVerifier | None = None, now: float = NOW + 1) -> str:
        return (v or verifier()).verify(parse_credentials(self.header()), "GET", URIS, now)


@pytest.mark.parametrize(
    "signed",
    [
        pytest.param(Signed(algorithm="MD5"), id="md5"),
        pytest.param(Signed(algorithm="SHA-256"), id="sha-256"),
        pytest.param(Signed(username="bob", algorithm="MD5"), id="md5-only-user"),
        pytest.param(Signed(uri="http://origin.test/index.html"), id="absolute-uri"),
        pytest.param(Signed(nc="000000ff"), id="any-first-nc"),
    ],
)
def test_verify_accepts(signed: Signed) -> None:
    assert signed.verify() == signed.username


def test_expected_response_matches_an_independent_computation() -> None:
    signed = Signed()
    creds = parse_credentials(signed.header())
    assert expected_response("SHA-256", USERS["alice"].ha1["SHA-256"], creds, "GET") == (
        creds.response
    )


@dataclasses.dataclass(frozen=True)
class Refused:
    signed: Signed
    reason: str
    now: float = NOW + 1
    algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    stale: bool = False


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Refused(Signed(qop="auth-int"), "bad_qop"), id="bad_qop"),
        pytest.param(Refused(Signed(algorithm="SHA-512"), "bad_algorithm"), id="bad_algorithm"),
        pytest.param(
            Refused(Signed(algorithm="MD5"), "bad_algorithm", algorithms=("SHA-256",)),
            id="bad_algorithm-not-configured",
        ),
        pytest.param(Refused(Signed(realm="other"), "wrong_realm"), id="wrong_realm"),
        pytest.param(Refused(Signed(uri="/elsewhere"), "uri_mismatch"), id="uri_mismatch"),
        pytest.param(
            Refused(
                Signed(nonce=NonceCodec(b"another secret!!", 300).issue(NOW, RANDOM)), "bad_nonce"
            ),
            id="bad_nonce-forged",
        ),
        pytest.param(Refused(Signed(nonce="x" * 48), "bad_nonce"), id="bad_nonce-garbage"),
        pytest.param(Refused(Signed(), "bad_nonce", now=NOW - 31), id="bad_nonce-future"),
        pytest.param(Refused(Signed(username="mallory"), "unknown_user"), id="unknown_user"),
        pytest.param(
            Refused(Signed(username="bob", algorithm="SHA-256"), "algorithm_unavailable"),
            id="algorithm_unavailable",
        ),
        pytest.param(Refused(Signed(password="wrong-password"), "bad_response"), id="bad_response"),
        pytest.param(
            Refused(Signed(password="wrong-password"), "bad_response", now=NOW + 301),
            id="stale-but-wrong-password-is-bad_response",
        ),
        pytest.param(Refused(Signed(), "stale", now=NOW + 301, stale=True), id="stale"),
        pytest.param(Refused(Signed(username="carol"), "expired", now=NOW + 1), id="expired"),
        pytest.param(
            Refused(
                Signed(username="carol", password="wrong-password"), "bad_response", now=NOW + 1
            ),
            id="expired-but-wrong-password-is-bad_response",
        ),
        pytest.param(
            Refused(Signed(algorithm="MD5"), "stale", now=NOW + 301, stale=True), id="stale-md5"
        ),
    ],
)
def test_verify_refuses(case: Refused) -> None:
    with pytest.raises(AuthFailure) as info:
        case.signed.verify(verifier(case.algorithms), now=case.now)
    assert (info.value.reason, info.value.stale) == (case.reason, case.stale)


def test_verify_refuses_a_replay_and_accepts_the_next_count() -> None:
    v = verifier()
    assert Signed(nc="00000001").verify(v) == "alice"
    with pytest.raises(AuthFailure, match="replay"):
        Signed(nc="00000001").verify(v)
    assert Signed(nc="00000003").verify(v) == "alice"
    assert Signed(nc="00000002").verify(v) == "alice"  # slightly out of order: fine


def test_wrong_password_does_not_burn_a_count() -> None:
    v = verifier()
    with pytest.raises(AuthFailure, match="bad_response"):
        Signed(password="wrong-password").verify(v)
    assert Signed().verify(v) == "alice"


def test_unknown_user_is_checked_the_same_for_each_algorithm() -> None:
    for algorithm in ("MD5", "SHA-256"):
        with pytest.raises(AuthFailure, match="unknown_user"):
            Signed(username="mallory", algorithm=algorithm).verify()


# --- Challenges -----------------------------------------------------------------------------


def counter() -> Callable[[], str]:
    count = iter(range(100))
    return lambda: f"nonce{next(count)}"


@pytest.mark.parametrize(
    "algorithms, stale, expected",
    [
        (
            ["MD5", "SHA-256"],
            False,
            [
                'Digest realm="proxyd", qop="auth", algorithm=MD5, nonce="nonce0"',
                'Digest realm="proxyd", qop="auth", algorithm=SHA-256, nonce="nonce1"',
            ],
        ),
        (
            ["SHA-256"],
            True,
            ['Digest realm="proxyd", qop="auth", algorithm=SHA-256, nonce="nonce0", stale=true'],
        ),
    ],
)
def test_challenges_in_order_each_with_a_fresh_nonce(
    algorithms: list[str], stale: bool, expected: list[str]
) -> None:
    assert challenges(REALM, algorithms, counter(), stale=stale) == expected


def test_challenge_parses_back() -> None:
    value = challenges(REALM, ["MD5"], counter())[0]
    assert parse_auth_params(value.removeprefix("Digest ")) == {
        "realm": "proxyd",
        "qop": "auth",
        "algorithm": "MD5",
        "nonce": "nonce0",
    }


def test_a_huge_nc_jump_costs_only_the_window() -> None:
    """nc=1 then nc=ffffffff once shifted the bitmap by the jump: a 4 Gbit integer."""
    import tracemalloc

    window = ReplayWindow(window=1024)
    assert window.accept("n", 1, 1e12, 0.0)
    tracemalloc.start()
    assert window.accept("n", 0xFFFFFFFF, 1e12, 0.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024  # the old shift allocated 512 MiB here
    assert not window.accept("n", 0xFFFFFFFF, 1e12, 0.0)  # a replay is still one
    assert not window.accept("n", 1, 1e12, 0.0)  # far below the window: refused
    assert window.accept("n", 0xFFFFFFFE, 1e12, 0.0)  # inside it, not seen: fine
