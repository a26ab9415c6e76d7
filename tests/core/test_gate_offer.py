"""Reading the Proxy-Authorization a request carries, once, before throttling and verifying."""

from __future__ import annotations

import pytest

from proxy import gate

DIGEST = (
    'Digest username="alice", realm="proxyd", nonce="n", uri="/x", qop=auth, nc=00000001, '
    'cnonce="c", response="0123456789abcdef0123456789abcdef", algorithm=MD5'
)


def test_no_header_is_anonymous() -> None:
    offer = gate.read_offer([])
    assert offer == gate.Offer()
    assert offer.claimed_username is None


def test_digest_credentials_are_parsed_once_and_claim_a_name() -> None:
    offer = gate.read_offer([DIGEST])
    assert offer.credentials is not None and offer.credentials.username == "alice"
    assert offer.claimed_username == "alice"
    assert offer.failure is None and offer.refusal is None


def test_basic_is_a_failure_that_claims_no_name() -> None:
    offer = gate.read_offer(["Basic YWxpY2U6d29uZGVybGFuZA=="])
    assert offer.failure is not None and offer.failure.reason == "basic"
    assert offer.claimed_username is None


@pytest.mark.parametrize("values", [[DIGEST, DIGEST], ['Digest username="alice'], ["Digest ,,,=="]])
def test_two_headers_and_malformed_ones_are_400(values: list[str]) -> None:
    offer = gate.read_offer(values)
    assert offer.refusal is not None and offer.refusal.status == 400
    assert offer.refusal.cause == "malformed"
    assert offer.claimed_username is None
