"""Where `proxyd connect` and `proxyd relay` take the proxy and the password from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.cli.relay import listen_address
from proxy.client.credentials import (
    CredentialsError,
    ProxyEndpoint,
    parse_proxy_url,
    proxy_from,
    read_credentials_file,
    redact_url,
    resolve,
)
from proxy.client.pacroute import PacError, fetch
from proxy.core.errors import ProxydError


def secret_file(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.example:3128", ProxyEndpoint("proxy.example", 3128)),
        ("proxy.example", ProxyEndpoint("proxy.example", 3128)),
        ("http://alice@10.0.0.1:8080/", ProxyEndpoint("10.0.0.1", 8080, "alice")),
        ("http://a%40b@[2001:db8::1]:3128", ProxyEndpoint("2001:db8::1", 3128, "a@b")),
    ],
)
def test_proxy_urls(url: str, expected: ProxyEndpoint) -> None:
    assert parse_proxy_url(url, from_command_line=True) == expected


def test_ipv6_hostport_has_brackets() -> None:
    assert ProxyEndpoint("2001:db8::1", 3128).hostport == "[2001:db8::1]:3128"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://proxy:3128", "only http://"),
        ("socks5://proxy:1080", "only http://"),
        ("http://:3128", "no host"),
        ("http://proxy:99999", "bad proxy URL"),
        ("http://proxy:0", r"invalid port: '0' \(expected 1-65535\)"),
        ("http://proxy:3128/path", "no path"),
        ("http://proxy:3128?q", "no path"),
    ],
)
def test_bad_proxy_urls(url: str, message: str) -> None:
    with pytest.raises(CredentialsError, match=message):
        parse_proxy_url(url, from_command_line=True)


def test_password_in_a_command_line_url_is_refused_but_taken_from_the_environment() -> None:
    with pytest.raises(CredentialsError, match="visible to other users"):
        parse_proxy_url("http://alice:pw@proxy:3128", from_command_line=True)
    endpoint = proxy_from(None, {"HTTPS_PROXY": "http://alice:p%3Aw@proxy:3128"})
    assert endpoint.password == "p:w"
    assert resolve(endpoint, None, None, {"HOME": "/nonexistent"}).password == "p:w"


def test_proxy_environment_order_and_absence() -> None:
    env = {"PROXYD_PROXY": "http://a:1", "HTTPS_PROXY": "http://b:2"}
    assert proxy_from(None, env).host == "a"
    assert proxy_from("http://c:3", env).host == "c"
    with pytest.raises(CredentialsError, match="--proxy"):
        proxy_from(None, {})


def test_credentials_file_entries(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "c", "# partner account\nalice:pa:ss:word\n\nbob:x\n")
    assert read_credentials_file(path) == {"alice": "pa:ss:word", "bob": "x"}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path / "c", "alice:pw\n", mode)
    with pytest.raises(CredentialsError, match=f"mode {mode:04o}.*chmod 600"):
        read_credentials_file(path)


def test_credentials_file_symlink_directory_and_missing_are_refused(tmp_path: Path) -> None:
    target = secret_file(tmp_path / "real", "alice:pw\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(CredentialsError, match="symbolic link"):
        read_credentials_file(str(tmp_path / "link"))
    with pytest.raises(CredentialsError, match="not a regular file"):
        read_credentials_file(str(tmp_path))
    with pytest.raises(CredentialsError, match="No such file"):
        read_credentials_file(str(tmp_path / "missing"))


def test_credentials_file_not_ours_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")  # CI runs as root
    path = secret_file(tmp_path / "c", "alice:pw\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(CredentialsError, match="not owned by you"):
        read_credentials_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", ":2?: expected NAME:PASSWORD"),
        ("alice:\n", "expected NAME:PASSWORD"),
        (":secret\n", "expected NAME:PASSWORD"),
        ("alice:a\nalice:b\n", "appears twice"),
    ],
)
def test_bad_credentials_lines_never_echo_the_password(
    tmp_path: Path, text: str, message: str
) -> None:
    path = secret_file(tmp_path / "c", text)
    with pytest.raises(CredentialsError, match=message.replace(":2?", "")) as info:
        read_credentials_file(path)
    assert "secret" not in str(info.value)


def test_credentials_file_binary_and_huge(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_bytes(b"alice:\xff\xfe\n")
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match="not UTF-8"):
        read_credentials_file(str(path))
    path.write_bytes(b"a" * (70 * 1024))
    with pytest.raises(CredentialsError, match="larger than"):
        read_credentials_file(str(path))


def test_resolve_precedence(tmp_path: Path) -> None:
    file = secret_file(tmp_path / "c", "alice:from-file\nbob:bobs\n")
    proxy = ProxyEndpoint("p", 3128, "alice")
    home = {"HOME": str(tmp_path / "home")}
    assert resolve(proxy, None, file, home) == ("alice", "from-file")
    assert resolve(proxy, "bob", file, home) == ("bob", "bobs")
    env = {**home, "PROXYD_PASSWORD": "from-env"}
    assert resolve(proxy, None, file, env) == ("alice", "from-env")


def test_default_credentials_file_under_xdg_config(tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "proxyd"
    config.mkdir(parents=True)
    secret_file(config / "credentials", "carol:pw\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    # The only entry names the user when neither --user nor the URL does.
    assert resolve(ProxyEndpoint("p", 3128), None, None, env) == ("carol", "pw")


@pytest.mark.parametrize(
    ("user", "env", "message"),
    [
        (None, {}, "no user"),
        ("alice", {}, "no password for 'alice'.*PROXYD_PASSWORD"),
        ("alice", {"PROXYD_PASSWORD": ""}, "no password"),
        ("al:ice", {"PROXYD_PASSWORD": "x"}, "bad user name"),
        ("al\nice", {"PROXYD_PASSWORD": "x"}, "bad user name"),
    ],
)
def test_resolve_errors(
    tmp_path: Path, user: str | None, env: dict[str, str], message: str
) -> None:
    env = {"HOME": str(tmp_path), **env}
    with pytest.raises(CredentialsError, match=message):
        resolve(ProxyEndpoint("p", 3128), user, None, env)


# --- secrets in reprs and messages ----------------------------------------------------------

SECRET = "s3cr%2Ft-pw"  # percent-encoded as written in a URL; decoded: "s3cr/t-pw"
DECODED = "s3cr/t-pw"


def assert_hidden(text: str, *secrets: str) -> None:
    for secret in (SECRET, DECODED, *secrets):
        assert secret not in text, text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy:3128", "http://proxy:3128"),
        ("http://alice@proxy:3128", "http://alice@proxy:3128"),
        ("http://alice:pw@proxy:3128", "http://alice:***@proxy:3128"),
        ("http://alice:@proxy:3128", "http://alice:***@proxy:3128"),
        ("alice:pw@proxy:3128", "alice:***@proxy:3128"),  # no scheme: still a proxy URL
        ("http://alice:p:w@proxy", "http://alice:***@proxy"),  # the password holds ':'
        ("http://alice:p@w@proxy", "http://alice:***@proxy"),  # and '@': the last one ends it
        ("http://alice:p/w?x#y@proxy", "http://alice:***@proxy"),  # urllib would end early
        ("http://proxy:3128/", "http://proxy:3128/"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_endpoint_and_credentials_reprs_hide_the_password() -> None:
    endpoint = proxy_from(None, {"HTTPS_PROXY": f"http://alice:{SECRET}@proxy:3128"})
    assert endpoint.password == DECODED
    credentials = resolve(endpoint, None, None, {"HOME": "/nonexistent"})
    assert credentials == ("alice", DECODED)
    for thing in (endpoint, credentials):
        for text in (repr(thing), str(thing), f"{thing}", repr([thing])):
            assert_hidden(text)
            assert "'alice'" in text and "'***'" in text
    assert repr(ProxyEndpoint("proxy", 3128)) == (
        "ProxyEndpoint(host='proxy', port=3128, user=None, password=None)"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://alice:{SECRET}@proxy:99999", "invalid port: '99999'"),
        (f"http://alice:{SECRET}@proxy:\u00b2", "invalid port"),
        (f"http://alice:{SECRET}@proxy:0", "invalid port: '0'"),
        (f"https://alice:{SECRET}@proxy:3128", "only http://"),
        (f"http://alice:{SECRET}@:3128", "no host"),
        (f"http://alice:{SECRET}@proxy:3128/path", "no path"),
        (f"http://alice:{SECRET}@[::1:3128", "Invalid IPv6 URL"),
        (f"http://alice:{SECRET}@pr\uff0fxy:3128", "NFKC"),  # urllib quotes the netloc
        (f"http://alice:{DECODED}@proxy:3128", "percent-encode the password"),
        ("http://alice:s3cr[t-pw]@proxy:3128", "percent-encode the password"),
        ("http://alice:s3cr\u00e9t-pw@proxy:3128", "percent-encode the password"),
    ],
)
def test_proxy_url_errors_never_show_the_password(url: str, message: str) -> None:
    with pytest.raises(CredentialsError, match=message) as info:
        proxy_from(None, {"HTTPS_PROXY": url})
    text = str(info.value)
    assert_hidden(text, "s3cr[t-pw]", "s3cr\u00e9t-pw", "s3cr")
    assert "alice:***@" in text or "percent-encode" in text


def test_command_line_password_message_shows_no_url() -> None:
    with pytest.raises(CredentialsError, match="visible to other users") as info:
        proxy_from(f"http://alice:{SECRET}@proxy:3128", {})
    assert_hidden(str(info.value), "s3cr")


def test_relay_listen_error_hides_the_password() -> None:
    with pytest.raises(ProxydError) as info:
        listen_address(f"alice:{SECRET}@127.0.0.1:3129", allow_remote=False)
    assert_hidden(str(info.value), "s3cr")


@pytest.mark.parametrize(
    "url",
    [
        f"http://alice:{SECRET}@127.0.0.1:1/proxy.pac",
        f"http://alice:{DECODED}@127.0.0.1:1/proxy.pac",  # urllib: a port "s3cr"
        f"ftp://alice:{SECRET}@127.0.0.1/proxy.pac",
        f"http://alice:{SECRET}@[::1/proxy.pac",
    ],
)
def test_pac_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(PacError) as info:
        fetch(url, timeout=1)
    assert_hidden(str(info.value), "s3cr")


def test_pac_url_with_a_bad_port_is_an_error_not_a_bug() -> None:
    with pytest.raises(PacError, match="can't fetch PAC"):  # http.client's InvalidURL
        fetch("http://127.0.0.1:abc/proxy.pac", timeout=1)
