"""Digest (RFC 7616) on the wire: a raw-socket client against a real `proxyd serve`.

The client half of Digest below (challenge parser, response computation, header writer) is
written independently of `proxy/digest.py` on purpose, so each test cross-checks the server
against a second reading of the RFC; `test_client_matches_rfc7616_example` pins the client to
the RFC's worked example first. Requests are written byte for byte and responses read with
`http.client.HTTPResponse` over one buffered reader per connection, so a connection can carry
a 407, the retry and then tunnel bytes.

Fixtures (`origins`, `proxyd`, `proxyd_factory`) come from tests/integration/conftest.py.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import digest_oracle
import pytest

TIMEOUT = 5.0
REALM = "proxyd"
USER = "alice"
PASSWORD = "wonderland"
REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
SPEAK_FIRST_BANNER = b"SSH-2.0-proxyd-test\r\n"

# --- Client side of Digest, independent of proxy/digest.py ---------------------------------


def quote(value: str) -> str:
    """A quoted-string (RFC 7230 section 3.2.6): backslash-escape backslash and DQUOTE."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# One auth-param: name BWS "=" BWS ( token / quoted-string ), then OWS and "," or the end.
_AUTH_PARAM = re.compile(
    r"""[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*"""
    r"""(?:"((?:[^"\\]|\\.)*)"|([!#$%&'*+.^_`|~0-9A-Za-z-]+))[ \t]*(?:,|$)"""
)


@dataclass(frozen=True)
class Challenge:
    """One `Proxy-Authenticate` field value: a scheme and its params (names lower-cased)."""

    raw: str
    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, raw: str) -> Challenge:
        scheme, _, rest = raw.strip().partition(" ")
        rest = rest.strip()
        params: dict[str, str] = {}
        pos = 0
        for _ in range(64):
            if pos >= len(rest):
                break
            m = _AUTH_PARAM.match(rest, pos)
            assert m, f"unparseable challenge at offset {pos}: {raw!r}"
            name = m.group(1).lower()
            assert name not in params, f"param {name!r} twice in challenge {raw!r}"
            quoted, token = m.group(2), m.group(3)
            params[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
            pos = m.end()
        return cls(raw=raw, scheme=scheme.lower(), params=params)

    @property
    def nonce(self) -> str:
        return self.params["nonce"]

    @property
    def algorithm(self) -> str:
        return self.params.get("algorithm", "MD5")

    @property
    def stale(self) -> bool:
        return self.params.get("stale", "false").lower() == "true"


Params = list[tuple[str, str]]  # (name, value as written on the wire: token or quoted-string)


def digest_params(
    challenge: Challenge,
    method: str,
    uri: str,
    nc: int = 1,
    *,
    username: str = USER,
    password: str = PASSWORD,
    realm: str = REALM,
    cnonce: str | None = None,
    nonce: str | None = None,
) -> Params:
    """The params of a correct answer to `challenge`, in the order curl writes them."""
    algorithm = challenge.algorithm
    nonce = challenge.nonce if nonce is None else nonce
    cnonce = secrets.token_hex(8) if cnonce is None else cnonce
    nc_text = f"{nc:08x}"
    response = digest_oracle.response(
        algorithm,
        user=username,
        realm=realm,
        password=password,
        nonce=nonce,
        nc=nc_text,
        cnonce=cnonce,
        qop="auth",
        method=method,
        uri=uri,
    )
    return [
        ("username", quote(username)),
        ("realm", quote(realm)),
        ("nonce", quote(nonce)),
        ("uri", quote(uri)),
        ("algorithm", algorithm),
        ("qop", "auth"),
        ("nc", nc_text),
        ("cnonce", quote(cnonce)),
        ("response", quote(response)),
    ]


def render(params: Params, *, scheme: str = "Digest", eq: str = "=", sep: str = ", ") -> str:
    return f"{scheme} " + sep.join(f"{name}{eq}{value}" for name, value in params)


def authorization(challenge: Challenge, method: str, uri: str, nc: int = 1, **kw: Any) -> str:
    return render(digest_params(challenge, method, uri, nc, **kw))


def replace(params: Params, name: str, value: str) -> Params:
    assert any(n == name for n, _ in params)
    return [(n, value if n == name else v) for n, v in params]


def without(params: Params, name: str) -> Params:
    return [(n, v) for n, v in params if n != name]


# --- A raw proxy client -------------------------------------------------------------------


class _SharedReader:
    """Hands HTTPResponse our one buffered reader and ignores its close().

    HTTPResponse makes its own reader from a socket and closes it after the body; with a
    fresh reader per response, bytes read ahead (a banner right behind a CONNECT 200) would
    be lost, so every response on a connection reads from the same buffer.
    """

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile

    def makefile(self, *args: Any, **kwargs: Any) -> _SharedReader:
        return self

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rfile, name)


@dataclass(frozen=True, repr=False)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def challenges(self) -> list[Challenge]:
        return [Challenge.parse(v) for v in self.headers.get_all("Proxy-Authenticate") or []]

    def challenge(self, algorithm: str = "MD5") -> Challenge:
        found = [c for c in self.challenges() if c.algorithm == algorithm]
        assert len(found) == 1, f"want one {algorithm} challenge in {self}"
        return found[0]

    def __repr__(self) -> str:  # pytest shows assertion messages with repr()
        return f"<Reply {self.status} {self.headers.items()} {self.body[:300]!r}>"


class ProxyClient:
    """One TCP connection to the proxy; requests go out exactly as written."""

    def __init__(self, proxy: Any) -> None:
        self.sock = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
        self.rfile = self.sock.makefile("rb")

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def send(
        self,
        method: str,
        target: str,
        *,
        auth: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        host = target if method == "CONNECT" else target.split("/")[2]
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        if auth is not None:
            lines.append(f"Proxy-Authorization: {auth}")
        lines += [f"{name}: {value}" for name, value in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        response = http.client.HTTPResponse(_SharedReader(self.rfile), method=method)  # type: ignore[arg-type]
        response.begin()
        tunnel = method == "CONNECT" and 200 <= response.status < 300
        body = b"" if tunnel else response.read()
        return Reply(response.status, response.msg, body)

    def challenge(self, method: str, target: str, algorithm: str = "MD5") -> Challenge:
        """Ask without credentials; the 407's challenge for `algorithm`."""
        reply = self.send(method, target)
        assert reply.status == 407, reply
        return reply.challenge(algorithm)

    def check_speak_first_tunnel(self) -> None:
        """After a CONNECT 200 to origins.speak_first: the banner, then an echo."""
        assert self.rfile.readline(1024) == SPEAK_FIRST_BANNER
        self.sock.sendall(b"ping through the tunnel\r\n")
        assert self.rfile.readline(1024) == b"ping through the tunnel\r\n"


def authority(address: tuple[str, int]) -> str:
    host, port = address
    return f"{host}:{port}"


@pytest.fixture
def url(origins: Any) -> str:
    return f"http://{authority(origins.http)}/x"


@pytest.fixture
def speak_first(origins: Any) -> str:
    return authority(origins.speak_first)


def assert_ok(reply: Reply) -> None:
    assert reply.status == 200, reply
    assert reply.body == b"origin-http /x", reply


def assert_digest_407(reply: Reply, *, stale: bool = False) -> None:
    """A 407 that offers the default Digest challenges again, stale only if asked."""
    assert reply.status == 407, reply
    challenges = reply.challenges()
    assert [c.algorithm for c in challenges] == ["MD5", "SHA-256"], reply
    assert all(c.scheme == "digest" for c in challenges), reply
    assert all(c.stale is stale for c in challenges), reply


# --- The client itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_client_matches_rfc7616_example(algorithm: str, expected: str) -> None:
    # RFC 7616 section 3.9.1.
    challenge = Challenge.parse(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    params = dict(
        digest_params(
            challenge,
            "GET",
            "/dir/index.html",
            username="Mufasa",
            password="Circle of Life",
            realm=challenge.params["realm"],
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
    )
    assert params["response"] == quote(expected)
    assert params["nc"] == "00000001"
    assert Challenge.parse(r'Digest realm="a\"b, c", nonce=n').params == {
        "realm": 'a"b, c',
        "nonce": "n",
    }


# --- Challenges ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [("MD5", "SHA-256"), ("SHA-256", "MD5")])
@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_challenges_in_configured_order_with_fresh_nonces(
    proxyd_factory: Any, url: str, speak_first: str, algorithms: tuple[str, ...], method: str
) -> None:
    proxy = proxyd_factory(algorithms=algorithms)
    target = url if method == "GET" else speak_first
    nonces = []
    with ProxyClient(proxy) as first, ProxyClient(proxy) as second:
        for client in (first, first, second):
            reply = client.send(method, target)
            assert reply.status == 407, reply
            challenges = reply.challenges()
            assert [c.algorithm for c in challenges] == list(algorithms), reply
            for c in challenges:
                assert c.scheme == "digest", c.raw
                assert c.params["realm"] == REALM, c.raw
                assert "auth" in [q.strip() for q in c.params["qop"].split(",")], c.raw
                assert not c.stale, c.raw
                assert c.nonce, c.raw
                nonces.append(c.nonce)
    assert len(set(nonces)) == len(nonces), f"nonces repeat: {nonces}"


# --- Accepted answers ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
@pytest.mark.parametrize("algorithms", [("MD5", "SHA-256"), ("SHA-256", "MD5")])
def test_each_algorithm_authenticates(
    proxyd_factory: Any, url: str, algorithm: str, algorithms: tuple[str, ...]
) -> None:
    proxy = proxyd_factory(algorithms=algorithms)
    with ProxyClient(proxy) as client:
        challenge = client.challenge("GET", url, algorithm)
        assert_ok(client.send("GET", url, auth=authorization(challenge, "GET", url)))


@pytest.mark.parametrize("form", ["absolute", "path"])
def test_uri_may_be_absolute_or_path(proxyd: Any, url: str, form: str) -> None:
    uri = url if form == "absolute" else "/x"
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        assert_ok(client.send("GET", url, auth=authorization(challenge, "GET", uri)))


def test_407_then_retry_on_one_connection_http(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as client:
        reply = client.send("GET", url)
        assert_digest_407(reply)
        auth = authorization(reply.challenge("SHA-256"), "GET", url)
        assert_ok(client.send("GET", url, auth=auth))


def test_407_then_retry_on_one_connection_connect(proxyd: Any, speak_first: str) -> None:
    with ProxyClient(proxyd) as client:
        reply = client.send("CONNECT", speak_first)
        assert_digest_407(reply)
        auth = authorization(reply.challenge("MD5"), "CONNECT", speak_first)
        reply = client.send("CONNECT", speak_first, auth=auth)
        assert reply.status == 200, reply
        client.check_speak_first_tunnel()


def test_keep_alive_with_increasing_nc(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        for nc in range(1, 6):
            uri = url if nc % 2 else "/x"
            assert_ok(client.send("GET", url, auth=authorization(challenge, "GET", uri, nc)))


def test_algorithm_absent_means_md5(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url, "MD5")
        params = without(digest_params(challenge, "GET", url), "algorithm")
        assert_ok(client.send("GET", url, auth=render(params)))


# --- Nonce counts and replays -------------------------------------------------------------


def test_replayed_nc_is_refused(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        first = authorization(challenge, "GET", url, 1)
        assert_ok(client.send("GET", url, auth=first))
        assert_digest_407(client.send("GET", url, auth=first))
        # The same (nonce, nc) with a new cnonce is still a repeat of the count.
        assert_digest_407(client.send("GET", url, auth=authorization(challenge, "GET", url, 1)))
        assert_ok(client.send("GET", url, auth=authorization(challenge, "GET", url, 2)))
    with ProxyClient(proxyd) as other:
        assert_digest_407(other.send("GET", url, auth=first))


def test_nc_out_of_order_across_connections(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as a, ProxyClient(proxyd) as b:
        challenge = a.challenge("GET", url)
        assert_ok(a.send("GET", url, auth=authorization(challenge, "GET", url, 1)))
        assert_ok(b.send("GET", url, auth=authorization(challenge, "GET", url, 3)))
        assert_ok(a.send("GET", url, auth=authorization(challenge, "GET", url, 2)))
        assert_ok(b.send("GET", url, auth=authorization(challenge, "GET", url, 4)))
        assert_digest_407(b.send("GET", url, auth=authorization(challenge, "GET", url, 2)))
        assert_digest_407(a.send("GET", url, auth=authorization(challenge, "GET", url, 3)))
        assert_ok(a.send("GET", url, auth=authorization(challenge, "GET", url, 5)))


# --- Nonce lifetime and forgery -----------------------------------------------------------


def test_stale_nonce_then_new_nonce(proxyd_factory: Any, url: str) -> None:
    proxy = proxyd_factory(nonce_lifetime=1)
    with ProxyClient(proxy) as client:
        challenge = client.challenge("GET", url)
        # Answer correctly until the nonce has expired; lifetime 1 s, so ~2 s at most.
        nc = 0
        deadline = time.monotonic() + 3.0
        while True:
            nc += 1
            reply = client.send("GET", url, auth=authorization(challenge, "GET", url, nc))
            if reply.status != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert_digest_407(reply, stale=True)
        # stale=true is only for a client that knows the password (RFC 7616 section 3.3).
        wrong = authorization(challenge, "GET", url, nc + 1, password="not-" + PASSWORD)
        reply = client.send("GET", url, auth=wrong)
        assert_digest_407(reply, stale=False)
        # A fresh nonce works. A 1 s lifetime may run out within a second of issue, so a
        # second stale answer is tolerated, a bounded number of times.
        for _ in range(3):
            auth = authorization(reply.challenge("MD5"), "GET", url, 1)
            reply = client.send("GET", url, auth=auth)
            if reply.status == 200:
                break
            assert_digest_407(reply, stale=True)
        assert_ok(reply)


@pytest.mark.parametrize("forgery", ["random", "tampered", "empty", "non-alphabet-prefix"])
def test_forged_nonce_is_refused(proxyd: Any, url: str, forgery: str) -> None:
    with ProxyClient(proxyd) as client:
        real = client.challenge("GET", url).nonce
        if forgery == "random":
            raw = secrets.token_bytes(len(real) * 3 // 4 + 2)
            nonce = base64.urlsafe_b64encode(raw).decode()[: len(real)]
        elif forgery == "tampered":
            middle = len(real) // 2
            flipped = "A" if real[middle] != "A" else "B"
            nonce = real[:middle] + flipped + real[middle + 1 :]
        elif forgery == "empty":
            nonce = ""
        else:
            # Not base64url: a lenient decoder skips the "%" and sees the real nonce.
            nonce = "%%%" + real
        assert nonce != real
        challenge = Challenge.parse(f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5')
        reply = client.send("GET", url, auth=authorization(challenge, "GET", url))
        assert_digest_407(reply, stale=False)
        # The real nonce is untouched by the forgery.
        auth = authorization(Challenge.parse(f'Digest nonce="{real}"'), "GET", url)
        assert_ok(client.send("GET", url, auth=auth))


# --- Wrong credentials ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param({"realm": "other-realm"}, id="wrong-realm"),
        pytest.param({"password": "alice"}, id="wrong-password"),
        pytest.param({"username": "mallory"}, id="unknown-user"),
        pytest.param({"username": "Alice"}, id="username-case"),
    ],
)
def test_wrong_credentials_are_refused(proxyd: Any, url: str, wrong: dict[str, str]) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        # Consistent but wrong: the digest matches the wrong values, as a client would send.
        reply = client.send("GET", url, auth=authorization(challenge, "GET", url, **wrong))
        assert_digest_407(reply)


def test_tampered_response_is_refused(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        params = digest_params(challenge, "GET", url)
        response = dict(params)["response"].strip('"')
        flipped = response[:-1] + ("0" if response[-1] != "0" else "1")
        reply = client.send("GET", url, auth=render(replace(params, "response", quote(flipped))))
        assert_digest_407(reply)


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_basic_is_refused_with_digest_challenges(
    proxyd: Any, url: str, speak_first: str, method: str
) -> None:
    target = url if method == "GET" else speak_first
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with ProxyClient(proxyd) as client:
        reply = client.send(method, target, auth=basic)
        assert_digest_407(reply)
        # The connection stays usable for a Digest retry.
        auth = authorization(reply.challenge("MD5"), method, target)
        reply = client.send(method, target, auth=auth)
        assert reply.status == 200, reply


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "MD5-sess", "SHA-256-sess", "bogus"])
def test_unknown_algorithm_is_refused(proxyd: Any, url: str, algorithm: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        params = replace(digest_params(challenge, "GET", url), "algorithm", algorithm)
        reply = client.send("GET", url, auth=render(params))
        assert reply.status in (400, 407), reply


def test_algorithm_not_configured_is_refused(proxyd_factory: Any, url: str) -> None:
    proxy = proxyd_factory(algorithms=("SHA-256",))
    with ProxyClient(proxy) as client:
        reply = client.send("GET", url)
        assert [c.algorithm for c in reply.challenges()] == ["SHA-256"], reply
        sha = reply.challenge("SHA-256")
        md5 = Challenge.parse(f'Digest nonce="{sha.nonce}", algorithm=MD5')
        reply = client.send("GET", url, auth=authorization(md5, "GET", url))
        assert reply.status in (400, 407), reply
        reply = client.send("GET", url, auth=authorization(sha, "GET", url, 2))
        assert_ok(reply)


# --- uri must match the request -------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("/other", id="other-path"),
        pytest.param("/x?y", id="added-query"),
        pytest.param("/", id="root"),
        pytest.param("http://127.0.0.3:{port}/x", id="other-host-absolute"),
        pytest.param("http://127.0.0.2:1/x", id="other-port-absolute"),
        pytest.param("127.0.0.2:{port}", id="authority-form"),
    ],
)
def test_uri_mismatch_http(proxyd: Any, origins: Any, url: str, uri: str) -> None:
    uri = uri.format(port=origins.http[1])
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        # The digest is right for the uri it names; only the request differs.
        reply = client.send("GET", url, auth=authorization(challenge, "GET", uri))
        assert_digest_407(reply)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("127.0.0.2:{other_port}", id="other-port"),
        pytest.param("127.0.0.3:{port}", id="other-host"),
        pytest.param("127.0.0.2", id="no-port"),
        pytest.param("/", id="path"),
    ],
)
def test_uri_mismatch_connect(proxyd: Any, origins: Any, speak_first: str, uri: str) -> None:
    uri = uri.format(port=origins.speak_first[1], other_port=origins.http[1])
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("CONNECT", speak_first)
        reply = client.send("CONNECT", speak_first, auth=authorization(challenge, "CONNECT", uri))
        assert_digest_407(reply)
        # Still open; the right uri on the same connection gets the tunnel.
        auth = authorization(reply.challenge("MD5"), "CONNECT", speak_first)
        assert client.send("CONNECT", speak_first, auth=auth).status == 200
        client.check_speak_first_tunnel()


def test_method_is_part_of_the_digest(proxyd: Any, url: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        reply = client.send("GET", url, auth=authorization(challenge, "POST", url))
        assert_digest_407(reply)


# --- Malformed headers: 400 -------------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_field_is_bad_request(proxyd: Any, url: str, field: str) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        params = without(digest_params(challenge, "GET", url), field)
        reply = client.send("GET", url, auth=render(params))
        assert reply.status == 400, reply


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("realm", quote(REALM)), id="same-value"),
        pytest.param(("username", quote("mallory")), id="other-username"),
        pytest.param(("nc", "00000002"), id="other-nc"),
        pytest.param(("NONCE", quote("x")), id="other-case"),
    ],
)
def test_duplicated_param_is_bad_request(proxyd: Any, url: str, extra: tuple[str, str]) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        params = [*digest_params(challenge, "GET", url), extra]
        reply = client.send("GET", url, auth=render(params))
        assert reply.status == 400, reply


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Digest", id="no-params"),
        pytest.param("Digest ", id="only-space"),
        pytest.param('Digest username="alice', id="unterminated-quote"),
        pytest.param("Digest username", id="name-without-value"),
        pytest.param('Digest username="alice" realm="proxyd"', id="missing-comma"),
        pytest.param("Digest dXNlcm5hbWU9YWxpY2U=", id="token68"),
        pytest.param('Digest ="x"', id="value-without-name"),
    ],
)
def test_unparseable_header_is_bad_request(proxyd: Any, url: str, header: str) -> None:
    with ProxyClient(proxyd) as client:
        reply = client.send("GET", url, auth=header)
        assert reply.status == 400, reply


# --- Parsing edge cases, each fed whole -----------------------------------------------------


def _escaped_cnonce(challenge: Challenge, uri: str) -> str:
    return authorization(challenge, "GET", uri, cnonce='a"b,c=d\\e')


def _extra_spaces(challenge: Challenge, uri: str) -> str:
    return render(digest_params(challenge, "GET", uri), scheme="Digest  ", eq=" = ", sep=" ,\t ")


def _lower_case_scheme(challenge: Challenge, uri: str) -> str:
    return render(digest_params(challenge, "GET", uri), scheme="digest")


def _upper_case_names(challenge: Challenge, uri: str) -> str:
    params = [(n.upper(), v) for n, v in digest_params(challenge, "GET", uri)]
    return render(params, scheme="DIGEST")


def _unknown_params(challenge: Challenge, uri: str) -> str:
    params = [
        ("future", quote("a, b=c")),
        *digest_params(challenge, "GET", uri),
        ("x-token", "tok"),
        ("userhash", "false"),
    ]
    return render(params)


def _swapped_quoting(challenge: Challenge, uri: str) -> str:
    # RFC 7235 section 2.1: a param value is a token or a quoted-string, either way.
    params = digest_params(challenge, "GET", uri)
    for name in ("algorithm", "qop", "nc"):
        params = replace(params, name, quote(dict(params)[name]))
    return render(replace(params, "username", USER))


def _empty_list_elements(challenge: Challenge, uri: str) -> str:
    return render(digest_params(challenge, "GET", uri), sep=", ,") + " ,"


def _leading_empty_element(challenge: Challenge, uri: str) -> str:
    # RFC 7230 section 7: a recipient accepts `#rule` lists that start with ",".
    return "Digest , " + authorization(challenge, "GET", uri).removeprefix("Digest ")


def _reordered(challenge: Challenge, uri: str) -> str:
    return render(list(reversed(digest_params(challenge, "GET", uri))))


@pytest.mark.parametrize(
    "make_header",
    [
        _escaped_cnonce,
        _extra_spaces,
        _lower_case_scheme,
        _upper_case_names,
        _unknown_params,
        _swapped_quoting,
        _empty_list_elements,
        _leading_empty_element,
        _reordered,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_header_edge_case_accepted(
    proxyd: Any, url: str, make_header: Callable[[Challenge, str], str]
) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        assert_ok(client.send("GET", url, auth=make_header(challenge, url)))


def _username_star(challenge: Challenge, uri: str) -> str:
    params = digest_params(challenge, "GET", uri)
    return render([("username*", "UTF-8''alice") if n == "username" else (n, v) for n, v in params])


def test_username_star_in_utf8_logs_in(proxyd: Any, url: str) -> None:
    """RFC 7616 3.4.4: the name as an RFC 8187 ext-value is the same user."""
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        reply = client.send("GET", url, auth=_username_star(challenge, url))
        assert reply.status == 200, reply


def _username_and_username_star(challenge: Challenge, uri: str) -> str:
    return render([*digest_params(challenge, "GET", uri), ("username*", "UTF-8''alice")])


def _userhash_true(challenge: Challenge, uri: str) -> str:
    # Otherwise correct for the plain name: a server ignoring userhash would let it through.
    return render([*digest_params(challenge, "GET", uri), ("userhash", "true")])


def _userhash_true_hashed_name(challenge: Challenge, uri: str) -> str:
    hashed = digest_oracle.hash_hex(challenge.algorithm, f"{USER}:{REALM}")
    params = digest_params(challenge, "GET", uri)
    return render([*replace(params, "username", quote(hashed)), ("userhash", "true")])


def _qop_auth_int(challenge: Challenge, uri: str) -> str:
    return render(replace(digest_params(challenge, "GET", uri), "qop", "auth-int"))


def _nc_not_hex(challenge: Challenge, uri: str) -> str:
    return render(replace(digest_params(challenge, "GET", uri), "nc", "0000000z"))


@pytest.mark.parametrize(
    "make_header",
    [
        _username_and_username_star,
        _userhash_true,
        _userhash_true_hashed_name,
        _qop_auth_int,
        _nc_not_hex,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_header_edge_case_refused(
    proxyd: Any, url: str, make_header: Callable[[Challenge, str], str]
) -> None:
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", url)
        reply = client.send("GET", url, auth=make_header(challenge, url))
        assert reply.status in (400, 407), reply


# --- What reaches the origin ----------------------------------------------------------------


def _header_names(body: bytes) -> set[str]:
    data = json.loads(body)
    if isinstance(data, dict) and isinstance(data.get("headers"), dict | list):
        data = data["headers"]
    names = data.keys() if isinstance(data, dict) else [pair[0] for pair in data]
    return {str(name).lower() for name in names}


def test_proxy_headers_never_reach_the_origin(proxyd: Any, origins: Any) -> None:
    target = f"http://{authority(origins.http)}/headers"
    with ProxyClient(proxyd) as client:
        challenge = client.challenge("GET", target)
        for nc, uri in enumerate((target, "/headers"), start=1):
            reply = client.send(
                "GET",
                target,
                auth=authorization(challenge, "GET", uri, nc),
                headers=(("Proxy-Connection", "keep-alive"), ("X-Marker", "kept")),
            )
            assert reply.status == 200, reply
            names = _header_names(reply.body)
            assert "x-marker" in names, names
            assert "proxy-authorization" not in names, names
            assert "proxy-connection" not in names, names


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_rejected_requests_open_no_upstream_connection(
    proxyd: Any, origins: Any, url: str, speak_first: str, method: str
) -> None:
    target, origin = (url, "http") if method == "GET" else (speak_first, "speak_first")
    before = origins.hits(origin)
    with ProxyClient(proxyd) as client:
        challenge = client.challenge(method, target)
    params = digest_params(challenge, method, target)
    refused = [
        None,
        "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        authorization(challenge, method, target, password="wrong"),
        authorization(challenge, method, target, username="mallory"),
        authorization(challenge, method, target, nonce="forged"),
        authorization(challenge, method, "/elsewhere"),
        render(without(params, "cnonce")),
        render([*params, ("realm", quote(REALM))]),
        'Digest username="alice',
    ]
    for auth in refused:
        with ProxyClient(proxyd) as client:
            reply = client.send(method, target, auth=auth)
            assert reply.status in (400, 407), (auth, reply)
    assert origins.hits(origin) == before
    # The counter does count: the accepted request shows up as one new connection.
    with ProxyClient(proxyd) as client:
        auth = authorization(client.challenge(method, target), method, target)
        reply = client.send(method, target, auth=auth)
        assert reply.status == 200, reply
        if method == "CONNECT":
            client.check_speak_first_tunnel()
    assert origins.hits(origin) == before + 1
