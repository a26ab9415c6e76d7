"""The client side of Digest (proxy/digest_client.py) with plain values.

Round trips go through proxyd's own verifier; the -sess, userhash and RFC 2069 forms, which
proxyd doesn't offer, are checked against the RFC formulas computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest

from proxy.core.digest import (
    DigestVerifier,
    NonceCodec,
    UserSecrets,
    challenges,
    ha1,
    parse_auth_params,
    parse_credentials,
)
from proxy.core.digest_client import (
    Challenge,
    ChallengeError,
    CredentialsRejected,
    DigestClient,
    choose,
    parse_challenges,
)
from proxy.core.errors import AuthFailure

NOW = 1_800_000_000.0
REALM = "proxyd"


def counter_random() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def make_verifier(algorithms: tuple[str, ...] = ("MD5", "SHA-256")) -> DigestVerifier:
    users = {
        "alice": UserSecrets(
            "alice", REALM, {alg: ha1(alg, "alice", REALM, "pw:with:colons") for alg in algorithms}
        )
    }
    return DigestVerifier(REALM, algorithms, NonceCodec(b"k" * 32, 300), users.get)


def issue(verifier: DigestVerifier, stale: bool = False) -> list[str]:
    randoms = iter(bytes([i]) * 12 for i in range(1, 100))
    return challenges(
        REALM, verifier.algorithms, lambda: verifier.nonces.issue(NOW, next(randoms)), stale
    )


# --------------------------------------------------------------------------- parsing


def test_one_header_with_several_challenges_and_quoted_commas() -> None:
    parsed = parse_challenges(
        [
            'Digest realm="a, b", qop="auth,auth-int", nonce="n1", algorithm=SHA-256, '
            'Basic realm="x", Negotiate abc==, Digest realm=r2, nonce=n2'
        ]
    )
    assert [c.scheme for c in parsed] == ["digest", "basic", "negotiate", "digest"]
    assert parsed[0].params["realm"] == "a, b"
    assert parsed[0].qops == {"auth", "auth-int"}
    assert parsed[0].algorithm == "SHA-256"
    assert parsed[3].algorithm == "MD5"  # the RFC's default
    assert parsed[3].params == {"realm": "r2", "nonce": "n2"}


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="unterminated',
        'Digest realm="x" nonce="y"',
        "Digest =x",
        'Digest realm="\x01"',
    ],
)
def test_malformed_challenges_are_errors(value: str) -> None:
    with pytest.raises(ChallengeError, match="malformed"):
        parse_challenges([value])


def test_choose_takes_the_first_usable_in_the_proxys_order() -> None:
    md5 = Challenge("digest", {"realm": "r", "nonce": "1", "qop": "auth"})
    sha = Challenge("digest", {"realm": "r", "nonce": "2", "qop": "auth", "algorithm": "SHA-256"})
    odd = Challenge("digest", {"realm": "r", "nonce": "3", "qop": "auth", "algorithm": "SHA-1"})
    int_only = Challenge("digest", {"realm": "r", "nonce": "4", "qop": "auth-int"})
    assert choose([sha, md5]) is sha
    assert choose([md5, sha]) is md5
    assert choose([odd, int_only, sha]) is sha


def test_choose_explains_what_was_offered() -> None:
    with pytest.raises(ChallengeError, match=r"Basic, Digest SHA-1"):
        choose(parse_challenges(['Basic realm="x"', "Digest realm=r, nonce=n, algorithm=SHA-1"]))
    with pytest.raises(ChallengeError, match="no scheme"):
        choose([])


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("order", [("MD5", "SHA-256"), ("SHA-256", "MD5")])
def test_round_trip_through_proxyds_verifier_with_counting_nc(order: tuple[str, ...]) -> None:
    verifier = make_verifier(order)
    client = DigestClient("alice", "pw:with:colons", random=counter_random())
    assert client.authorization("CONNECT", "h:22") is None
    client.challenged(issue(verifier), sent_nonce=None)
    assert client.algorithm == order[0]
    for expected_nc in range(1, 6):
        header = client.authorization("CONNECT", "h:22")
        assert header is not None
        creds = parse_credentials(header)
        assert creds.nc == expected_nc
        assert verifier.verify(creds, "CONNECT", {"h:22"}, NOW) == "alice"
    assert client.challenges_seen == 1


def test_wrong_password_is_refused_by_the_verifier_and_then_rejected() -> None:
    verifier = make_verifier()
    client = DigestClient("alice", "wrong")
    client.challenged(issue(verifier), sent_nonce=None)
    header = client.authorization("GET", "http://h/")
    assert header is not None
    with pytest.raises(AuthFailure):
        verifier.verify(parse_credentials(header), "GET", {"http://h/"}, NOW)
    with pytest.raises(CredentialsRejected, match="alice"):
        client.challenged(issue(verifier), sent_nonce=client.nonce)
    # The new challenge was adopted all the same: a relay may try it once more.
    assert client.nonce is not None


def test_stale_challenge_is_adopted_without_rejection() -> None:
    verifier = make_verifier()
    client = DigestClient("alice", "pw:with:colons")
    client.challenged(issue(verifier), sent_nonce=None)
    old = client.nonce
    client.challenged(issue(verifier, stale=True)[1:], sent_nonce=old)
    assert client.nonce != old
    header = client.authorization("GET", "/")
    assert header is not None and "nc=00000001" in header


def test_a_407_to_an_older_nonce_is_not_a_rejection() -> None:
    client = DigestClient("alice", "pw")
    client.challenged(["Digest realm=r, nonce=n1, qop=auth"], sent_nonce=None)
    client.challenged(["Digest realm=r, nonce=n2, qop=auth"], sent_nonce="n0")
    assert client.nonce == "n2"


# --------------------------------------------------------------------------- other forms


def h(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}[algorithm]
    return hashlib.new(name, text.encode()).hexdigest()


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess", "SHA-512-256"])
def test_sess_and_sha512_256_follow_rfc7616(algorithm: str) -> None:
    client = DigestClient("bob", "secret", random=lambda n: b"\x07" * n)
    challenge = f'Digest realm="r", nonce="abc", qop="auth", algorithm={algorithm}, opaque="op"'
    client.challenged([challenge], sent_nonce=None)
    header = client.authorization("GET", "/x")
    assert header is not None
    params = parse_auth_params(header.removeprefix("Digest "))
    base = algorithm.upper().removesuffix("-SESS")
    a1 = h(base, "bob:r:secret")
    if algorithm.upper().endswith("-SESS"):
        a1 = h(base, f"{a1}:abc:{params['cnonce']}")
    expected = h(base, f"{a1}:abc:{params['nc']}:{params['cnonce']}:auth:{h(base, 'GET:/x')}")
    assert params["response"] == expected
    assert params["opaque"] == "op"
    assert params["algorithm"] == algorithm.upper()


def test_rfc2069_challenge_without_qop() -> None:
    client = DigestClient("bob", "secret")
    client.challenged(['Digest realm="r", nonce="abc"'], sent_nonce=None)
    header = client.authorization("GET", "/x")
    assert header is not None
    params = parse_auth_params(header.removeprefix("Digest "))
    assert "nc" not in params and "qop" not in params
    assert params["response"] == h("MD5", f"{h('MD5', 'bob:r:secret')}:abc:{h('MD5', 'GET:/x')}")


def test_userhash_and_non_ascii_names() -> None:
    client = DigestClient("bob", "secret")
    client.challenged(
        ['Digest realm="r", nonce="n", qop=auth, algorithm=SHA-256, userhash=true'], None
    )
    header = client.authorization("GET", "/")
    assert header is not None
    params = parse_auth_params(header.removeprefix("Digest "))
    assert params["username"] == h("SHA-256", "bob:r") and params["userhash"] == "true"

    client = DigestClient("jürgen", "secret")
    client.challenged(['Digest realm="r", nonce="n", qop=auth'], None)
    header = client.authorization("GET", "/")
    assert header is not None
    assert "username*=UTF-8''j%C3%BCrgen" in header


def test_quotes_in_values_are_escaped() -> None:
    client = DigestClient('we"ird', "secret")
    client.challenged(['Digest realm="r\\"q", nonce="n", qop=auth'], None)
    header = client.authorization("GET", '/a"b')
    assert header is not None
    params = parse_auth_params(header.removeprefix("Digest "))
    assert params["username"] == 'we"ird'
    assert params["realm"] == 'r"q'
    assert params["uri"] == '/a"b'
