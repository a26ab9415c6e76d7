"""The config file: every error located as `file:line: key.path: message`, all in one run.

Cases edit single lines of one valid document, so each row names the line it broke.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxy.core import config
from proxy.core.errors import ConfigError
from proxy.core.policy import AuthMode, PortRange

SHIPPED = Path(__file__).parents[2] / "config" / "proxyd.yaml"

BASE = """\
listen: 127.0.0.1:3128
realm: proxyd
auth:
  users_file: users.digest
  nonce_secret_file: nonce.secret
  nonce_lifetime: 300
  algorithms: [MD5, SHA-256]
zones:
  prod: [160.44.192.0/20]
  preprod: [80.158.0.0/23, "2001:db8::/32"]
rules:
  - name: prod-to-preprod
    from: [prod]
    to: [preprod]
    ports: [80, 443]
    auth: none
  - name: partners
    from: [any]
    to: [prod, preprod]
    ports: [22, "8000-8099"]
    auth: required
"""


def variant(lines: dict[int, str] | None = None, append: str = "") -> str:
    """BASE with some lines (1-based) replaced; '#' blanks a line out."""
    text = BASE.splitlines()
    for number, line in (lines or {}).items():
        text[number - 1] = line
    return "\n".join(text) + "\n" + append


def problems(text: str, source: Path = Path("t.yaml")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, source)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_base_document_is_valid(tmp_path: Path) -> None:
    cfg = config.parse(BASE, tmp_path / "proxyd.yaml")
    assert (cfg.listen_host, cfg.listen_port, cfg.realm) == ("127.0.0.1", 3128, "proxyd")
    assert cfg.auth == config.AuthConfig(
        tmp_path / "users.digest", tmp_path / "nonce.secret", 300, ("MD5", "SHA-256")
    )
    assert [r.name for r in cfg.policy.rules] == ["prod-to-preprod", "partners"]
    assert [r.auth for r in cfg.policy.rules] == [AuthMode.NONE, AuthMode.REQUIRED]
    assert cfg.policy.rules[1].ports == (PortRange(22, 22), PortRange(8000, 8099))
    assert str(cfg.policy.rules[1].destinations) == "prod, preprod"
    assert cfg.policy.rules[1].sources.networks is None
    assert set(cfg.policy.zones) == {"prod", "preprod"}


def test_shipped_config_parses() -> None:
    cfg = config.load(SHIPPED)
    assert cfg.realm == "proxyd"
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 3128)
    assert cfg.auth.algorithms == ("MD5", "SHA-256")
    assert set(cfg.policy.zones) == {"prod", "preprod"}
    assert [r.name for r in cfg.policy.rules] == ["prod-to-preprod", "partners"]


@pytest.mark.parametrize(
    "text, where, message",
    [
        pytest.param(variant(append="bogus: 1\n"), "t.yaml:22: bogus", "unknown key", id="top-key"),
        pytest.param(
            variant(append="bogus:\n  x: 1\n"),
            "t.yaml:22: bogus",
            "unknown key",
            id="top-key-with-block-value",
        ),
        pytest.param(
            variant({6: "  nonce_lifetim: 300"}),
            "t.yaml:6: auth.nonce_lifetim",
            "unknown key",
            id="auth-key",
        ),
        pytest.param(
            variant({21: "    owner: me"}),
            "t.yaml:21: rules[1].owner",
            "unknown key",
            id="rule-key",
        ),
        pytest.param(
            variant({19: "    to: [prepord]"}),
            "t.yaml:19: rules[1].to[0]",
            "unknown zone 'prepord'",
            id="unknown-zone",
        ),
        pytest.param(
            variant({13: "    from: [prod, staging]"}),
            "t.yaml:13: rules[0].from[1]",
            "unknown zone 'staging'",
            id="unknown-source-zone",
        ),
        pytest.param(
            variant({9: "  prod: [160.44.192.0/33]"}),
            "t.yaml:9: zones.prod[0]",
            "invalid CIDR",
            id="bad-cidr",
        ),
        pytest.param(
            variant({9: "  prod: [160.44.300.0/20]"}),
            "t.yaml:9: zones.prod[0]",
            "invalid CIDR",
            id="bad-address",
        ),
        pytest.param(
            variant({10: '  preprod: [80.158.0.0/23, "2001:db8::1/32"]'}),
            "t.yaml:10: zones.preprod[1]",
            "has host bits set",
            id="v6-host-bits",
        ),
        pytest.param(
            variant({9: "  prod: [160.44.192.1/20]"}),
            "t.yaml:9: zones.prod[0]",
            "host bits set",
            id="host-bits",
        ),
        pytest.param(
            variant({9: "  prod: [42]"}),
            "t.yaml:9: zones.prod[0]",
            "must be a CIDR string",
            id="cidr-number",
        ),
        pytest.param(
            variant({9: "  prod: []"}), "t.yaml:9: zones.prod", "at least one CIDR", id="empty-zone"
        ),
        pytest.param(
            variant({9: "  Prod: [10.0.0.0/8]"}),
            "t.yaml:9: zones.Prod",
            "zone names",
            id="zone-name-case",
        ),
        pytest.param(
            variant({9: "  any: [10.0.0.0/8]"}),
            "t.yaml:9: zones.any",
            "not 'any'",
            id="zone-named-any",
        ),
        pytest.param(
            variant({14: "    to: [10.0.0.1/8]"}),
            "t.yaml:14: rules[0].to[0]",
            "host bits set",
            id="rule-cidr-host-bits",
        ),
        pytest.param(
            variant(append="realm: other\n"),
            "t.yaml:22: realm",
            "duplicate key",
            id="duplicate-top-key",
        ),
        pytest.param(
            variant({6: "  users_file: x"}),
            "t.yaml:6: auth.users_file",
            "duplicate key",
            id="duplicate-auth-key",
        ),
        pytest.param(
            variant({10: "  prod: [80.158.0.0/23]"}),
            "t.yaml:10: zones.prod",
            "duplicate key",
            id="duplicate-zone",
        ),
        pytest.param(
            variant({16: "    from: [any]"}),
            "t.yaml:16: rules[0].from",
            "duplicate key",
            id="duplicate-rule-key",
        ),
        pytest.param(
            variant({17: "  - name: prod-to-preprod"}),
            "t.yaml:17: rules[1].name",
            "duplicate rule name 'prod-to-preprod'",
            id="duplicate-rule-name",
        ),
        pytest.param(
            variant({15: "    ports: [80, 0]"}),
            "t.yaml:15: rules[0].ports[1]",
            "invalid port range",
            id="port-0",
        ),
        pytest.param(
            variant({15: "    ports: [70000]"}),
            "t.yaml:15: rules[0].ports[0]",
            "invalid port range",
            id="port-70000",
        ),
        pytest.param(
            variant({15: "    ports: [443-80]"}),
            "t.yaml:15: rules[0].ports[0]",
            "invalid port range",
            id="reversed-range",
        ),
        pytest.param(
            variant({15: '    ports: ["1-99999"]'}),
            "t.yaml:15: rules[0].ports[0]",
            "invalid port range",
            id="range-too-high",
        ),
        pytest.param(
            variant({15: '    ports: ["80"]'}),
            "t.yaml:15: rules[0].ports[0]",
            "port number or an 'a-b' range",
            id="port-string",
        ),
        pytest.param(
            variant({15: "    ports: [-1]"}),
            "t.yaml:15: rules[0].ports[0]",
            "invalid port range",
            id="port-negative",
        ),
        pytest.param(
            variant({15: "    ports: [true]"}),
            "t.yaml:15: rules[0].ports[0]",
            "port number",
            id="port-bool",
        ),
        pytest.param(
            variant({15: "    ports: []"}),
            "t.yaml:15: rules[0].ports",
            "at least one port",
            id="no-ports",
        ),
        pytest.param(
            variant({15: "#"}), "t.yaml:12: rules[0].ports", "required", id="ports-missing"
        ),
        pytest.param(
            variant({16: "    auth: maybe"}),
            "t.yaml:16: rules[0].auth",
            "must be 'none' or 'required', not 'maybe'",
            id="auth-maybe",
        ),
        pytest.param(
            variant({16: "    auth: false"}),
            "t.yaml:16: rules[0].auth",
            "must be 'none' or 'required'",
            id="auth-bool",
        ),
        pytest.param(
            variant({14: "    to: [any]"}),
            "t.yaml:14: rules[0].to[0]",
            "'any' destination would make an open proxy",
            id="to-any",
        ),
        pytest.param(
            variant({19: "    to: [prod, any]"}),
            "t.yaml:19: rules[1].to[1]",
            "open proxy",
            id="to-any-among-zones",
        ),
        pytest.param(
            variant({14: "    to: []"}), "t.yaml:14: rules[0].to", "at least one", id="to-empty"
        ),
        pytest.param(
            variant({14: "    to: preprod"}),
            "t.yaml:14: rules[0].to",
            "must be a list",
            id="to-not-a-list",
        ),
        pytest.param(variant({13: "#"}), "t.yaml:12: rules[0].from", "required", id="from-missing"),
        pytest.param(
            variant({12: "  - nam: x"}),
            "t.yaml:12: rules[0].nam",
            "unknown key",
            id="rule-name-typo",
        ),
        pytest.param(
            variant({i: "#" for i in range(3, 8)}),
            "t.yaml:1: auth",
            "required (users_file and nonce_secret_file)",
            id="auth-missing",
        ),
        pytest.param(
            variant({3: "auth: {nonce_secret_file: s}", 4: "#", 5: "#", 6: "#", 7: "#"}),
            "t.yaml:3: auth.users_file",
            "required",
            id="users-file-missing",
        ),
        pytest.param(
            variant({3: "auth: []", 4: "#", 5: "#", 6: "#", 7: "#"}),
            "t.yaml:3: auth",
            "must be a mapping, not list",
            id="auth-list",
        ),
        pytest.param(
            variant({2: "realm: 'pro\"xyd'"}),
            "t.yaml:2: realm",
            "must be 1-64 characters",
            id="realm-quote",
        ),
        pytest.param(
            variant({2: "realm: 'a\\b'"}), "t.yaml:2: realm", "must be 1-64", id="realm-backslash"
        ),
        pytest.param(
            variant({2: "realm: ''"}), "t.yaml:2: realm", "must be 1-64", id="realm-empty"
        ),
        pytest.param(
            variant({2: f"realm: {'r' * 65}"}), "t.yaml:2: realm", "must be 1-64", id="realm-long"
        ),
        pytest.param(
            variant({2: 'realm: "proxyd\\n"'}),
            "t.yaml:2: realm",
            "must be 1-64",
            id="realm-trailing-newline",
        ),
        pytest.param(
            variant({1: "listen: x"}), "t.yaml:1: listen", "expected host:port", id="listen-x"
        ),
        pytest.param(
            variant({1: 'listen: "[::1]"'}),
            "t.yaml:1: listen",
            "expected host:port",
            id="listen-v6-no-port",
        ),
        pytest.param(
            variant({1: "listen: host:99999"}),
            "t.yaml:1: listen",
            "invalid port: '99999' (expected 0-65535)",
            id="listen-port-high",
        ),
        pytest.param(
            variant({1: 'listen: "[1.2.3.4]:80"'}),
            "t.yaml:1: listen",
            "'1.2.3.4'",
            id="listen-v4-in-brackets",
        ),
        pytest.param(
            variant({1: "listen: ::1:3128"}),
            "t.yaml:1: listen",
            "expected host:port",
            id="listen-v6-unbracketed",
        ),
        pytest.param(
            variant({1: "listen: 3128"}), "t.yaml:1: listen", "non-empty string", id="listen-number"
        ),
        pytest.param(
            variant({6: "  nonce_lifetime: 0"}),
            "t.yaml:6: auth.nonce_lifetime",
            "between 1 and 86400",
            id="lifetime-0",
        ),
        pytest.param(
            variant({6: "  nonce_lifetime: 1.5"}),
            "t.yaml:6: auth.nonce_lifetime",
            "whole number",
            id="lifetime-float",
        ),
        pytest.param(
            variant({6: "  nonce_lifetime: yes"}),
            "t.yaml:6: auth.nonce_lifetime",
            "whole number",
            id="lifetime-bool",
        ),
        pytest.param(
            variant({7: "  algorithms: [MD4]"}),
            "t.yaml:7: auth.algorithms[0]",
            "unknown algorithm 'MD4'",
            id="algorithm-md4",
        ),
        pytest.param(
            variant({7: "  algorithms: [SHA-256, md5]"}),
            "t.yaml:7: auth.algorithms[1]",
            "unknown algorithm 'md5'",
            id="algorithm-lower-case",
        ),
        pytest.param(
            variant({7: "  algorithms: [MD5, MD5]"}),
            "t.yaml:7: auth.algorithms[1]",
            "MD5 listed twice",
            id="algorithm-twice",
        ),
        pytest.param(
            variant({7: "  algorithms: []"}),
            "t.yaml:7: auth.algorithms",
            "at least one algorithm",
            id="no-algorithms",
        ),
        pytest.param(
            variant({7: "  algorithms: MD5"}),
            "t.yaml:7: auth.algorithms",
            "must be a list",
            id="algorithms-string",
        ),
        pytest.param(
            variant(append="dns: {timeout: 0}\n"),
            "t.yaml:22: dns.timeout",
            "number of seconds",
            id="dns-timeout-0",
        ),
        pytest.param(
            variant(append="dns: {hosts: x}\n"),
            "t.yaml:22: dns.hosts",
            "unknown key",
            id="dns-unknown-key",
        ),
        pytest.param(
            variant(append="access_log: {format: xml}\n"),
            "t.yaml:22: access_log.format",
            "must be one of squid, json",
            id="access-log-format",
        ),
        pytest.param(
            variant(append="admin_listen: nope\n"),
            "t.yaml:22: admin_listen",
            "expected host:port",
            id="admin-listen",
        ),
        pytest.param(
            variant({11: "rules: {a: 1}"} | {i: "#" for i in range(12, 22)}),
            "t.yaml:11: rules",
            "must be a list",
            id="rules-mapping",
        ),
        pytest.param(
            variant({8: "zones: [10.0.0.0/8]", 9: "#", 10: "#"}),
            "t.yaml:8: zones",
            "must be a mapping",
            id="zones-list",
        ),
    ],
)
def test_error_is_located(text: str, where: str, message: str) -> None:
    found = [p for p in problems(text) if p.startswith(f"{where}: ")]
    assert found, problems(text)
    assert message in found[0]


@pytest.mark.parametrize(
    "listen, expected",
    [
        ("'[::1]:3128'", ("::1", 3128)),
        ("0.0.0.0:3128", ("0.0.0.0", 3128)),
        ("proxy.example:8080", ("proxy.example", 8080)),
        ("'[2001:db8::1]:65535'", ("2001:db8::1", 65535)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),  # any free port
        ("127.0.0.1:03128", ("127.0.0.1", 3128)),
    ],
)
def test_listen_forms(listen: str, expected: tuple[str, int]) -> None:
    cfg = config.parse(variant({1: f"listen: {listen}"}), Path("t.yaml"))
    assert (cfg.listen_host, cfg.listen_port) == expected


@pytest.mark.parametrize(
    "number, line, where, message",
    [
        pytest.param(
            19,
            "    to: [cafe]",
            "t.yaml:19: rules[1].to[0]",
            "unknown zone 'cafe'",
            id="hex-looking-zone-typo",
        ),
        pytest.param(
            9,
            '  "prod\\n": [10.0.0.0/8]',
            "t.yaml:9: zones",
            "zone names",
            id="zone-name-trailing-newline",
        ),
        pytest.param(
            1,
            "listen: 127.0.0.1:\u00b2",
            "t.yaml:1: listen",
            "invalid port: '\u00b2' (expected 0-65535 in digits 0-9)",
            id="listen-superscript-port",
        ),
        pytest.param(
            1,
            "listen: 127.0.0.1:\uff13\uff11\uff12\uff18",
            "t.yaml:1: listen",
            "invalid port",
            id="listen-full-width-port",
        ),
        pytest.param(
            1,
            "listen: 127.0.0.1:+3128",
            "t.yaml:1: listen",
            "invalid port",
            id="listen-plus-port",
        ),
        pytest.param(
            1,
            "listen: 127.0.0.1:" + "3" * 5000,
            "t.yaml:1: listen",
            "invalid port",
            id="listen-long-port",
        ),
        pytest.param(
            1,
            "admin_listen: 127.0.0.1:65536",
            "t.yaml:1: admin_listen",
            "invalid port: '65536' (expected 0-65535)",
            id="admin-listen-65536",
        ),
        pytest.param(
            1,
            "public_address: proxy.example:0",
            "t.yaml:1: public_address",
            "invalid port: '0' (expected 1-65535)",
            id="public-address-port-0",
        ),
        pytest.param(
            15,
            '    ports: ["\u0662\u0662-\u0662\u0665"]',  # Arabic-Indic 22-25: int() reads them
            "t.yaml:15: rules[0].ports[0]",
            "invalid port range",
            id="range-of-other-digits",
        ),
        pytest.param(
            15,
            '    ports: ["+22-25"]',
            "t.yaml:15: rules[0].ports[0]",
            "invalid port range '+22-25': invalid port: '+22'",
            id="range-with-plus",
        ),
    ],
)
def test_more_located_errors(number: int, line: str, where: str, message: str) -> None:
    found = problems(variant({number: line}))
    assert any(p.startswith(where) and message in p for p in found), found


def test_unknown_zone_has_the_documented_shape() -> None:
    assert problems(variant({19: "    to: [prepord]"})) == [
        "t.yaml:19: rules[1].to[0]: unknown zone 'prepord'"
    ]


def test_all_errors_are_reported_in_one_run() -> None:
    found = problems(
        variant(
            {
                1: "listen: x",
                6: "  nonce_lifetime: 0",
                9: "  prod: [160.44.192.1/20]",
                15: "    ports: [0]",
                19: "    to: [prepord]",
            },
            append="bogus: 1\n",
        )
    )
    assert sorted(": ".join(p.split(": ", 2)[:2]) for p in found) == [
        "t.yaml:15: rules[0].ports[0]",
        "t.yaml:19: rules[1].to[0]",
        "t.yaml:1: listen",
        "t.yaml:22: bogus",
        "t.yaml:6: auth.nonce_lifetime",
        "t.yaml:9: zones.prod[0]",
    ]


def test_empty_algorithms_reported_alongside_other_errors() -> None:
    found = problems(variant({1: "listen: x", 7: "  algorithms: []"}))
    assert any(p.startswith("t.yaml:7: auth.algorithms: ") for p in found), found


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            variant({15: "    ports: [80, 443"}), "t.yaml:16: YAML syntax error", id="unclosed-flow"
        ),
        pytest.param(variant({4: "\tusers_file: x"}), "t.yaml:4: YAML syntax error", id="tab"),
        pytest.param(
            variant({13: "    from: [prod"}, append=""),
            "t.yaml:14: YAML syntax error",
            id="unclosed-in-rule",
        ),
        pytest.param(
            variant({2: "realm: !!python/object:os.system x"}),
            "t.yaml:2: YAML syntax error",
            id="python-tag",
        ),
        pytest.param(
            variant({1: "listen: &a [*a]"}),
            "t.yaml:",
            id="recursive-alias",
        ),
        pytest.param(
            "a: " + "[" * 5000 + "]" * 5000 + "\n",
            "t.yaml:",
            id="deeply-nested",
        ),
        pytest.param(
            variant({1: "listen: *nowhere"}), "t.yaml:1: YAML syntax error", id="unknown-alias"
        ),
        pytest.param("a: 1\n---\nb: 2\n", "t.yaml:2: YAML syntax error", id="two-documents"),
        pytest.param(
            variant({2: "[1, 2]: x"}),
            "t.yaml:2: (top level): keys must be strings",
            id="non-string-key",
        ),
    ],
)
def test_yaml_errors_are_located(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_alias_bomb_is_refused_quickly() -> None:
    rows = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    start = time.monotonic()
    found = problems("\n".join(rows) + "\n")
    assert time.monotonic() - start < 5
    assert found == ["t.yaml: document too large or too many aliases"]


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("", ["t.yaml:1: (top level): the config file is empty"], id="empty"),
        pytest.param(
            "# only a comment\n",
            ["t.yaml:1: (top level): the config file is empty"],
            id="only-comment",
        ),
        pytest.param(
            "- a\n- b\n", ["t.yaml:1: (top level): must be a mapping, not list"], id="list"
        ),
        pytest.param(
            "just text\n", ["t.yaml:1: (top level): must be a mapping, not str"], id="scalar"
        ),
    ],
)
def test_documents_that_are_not_a_mapping(text: str, expected: list[str]) -> None:
    found = problems(text)
    assert found[: len(expected)] == expected
    assert "t.yaml:1: auth: required (users_file and nonce_secret_file)" in found


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    text = variant(
        {4: "  users_file: ../users/users.digest", 5: "  nonce_secret_file: /etc/proxyd/secret"},
        append="dns: {hosts_file: hosts}\naccess_log: {path: log/access.log}\n",
    )
    cfg = config.parse(text, tmp_path / "etc" / "proxyd.yaml")
    assert cfg.auth.users_file == tmp_path / "etc" / "../users/users.digest"
    assert cfg.auth.nonce_secret_file == Path("/etc/proxyd/secret")
    assert cfg.hosts_file == tmp_path / "etc" / "hosts"
    assert cfg.access_log.path == tmp_path / "etc" / "log" / "access.log"


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"realm: \xe9\n")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "latin1.yaml")


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "proxyd.yaml"
    path.write_text(variant({19: "    to: [prepord]"}))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems == [f"{path}:19: rules[1].to[0]: unknown zone 'prepord'"]


# --- broad destinations: as good as `to: any` unless the rule says allow_broad ---------------

BROAD = (
    "covers more addresses than one IPv{v} /{p}: as broad as 'any', an open proxy "
    "(set allow_broad: true on the rule to mean it)"
)
V4_BROAD = BROAD.format(v=4, p=config.BROADEST_DESTINATION[4])
V6_BROAD = BROAD.format(v=6, p=config.BROADEST_DESTINATION[6])


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            {14: "    to: [0.0.0.0/0]"},
            [f"t.yaml:14: rules[0].to[0]: 0.0.0.0/0 {V4_BROAD}"],
            id="v4-all",
        ),
        pytest.param(
            {14: '    to: ["::/0"]'}, [f"t.yaml:14: rules[0].to[0]: ::/0 {V6_BROAD}"], id="v6-all"
        ),
        pytest.param(
            {14: "    to: [10.0.0.0/7]"},
            [f"t.yaml:14: rules[0].to[0]: 10.0.0.0/7 {V4_BROAD}"],
            id="v4-shorter-than-8",
        ),
        pytest.param(
            {14: '    to: ["2000::/15"]'},
            [f"t.yaml:14: rules[0].to[0]: 2000::/15 {V6_BROAD}"],
            id="v6-shorter-than-16",
        ),
        pytest.param(  # prod is also rule 0's `from`: a broad source is no open proxy
            {9: "  prod: [0.0.0.0/0]"},
            [f"t.yaml:19: rules[1].to[0]: zone 'prod' {V4_BROAD}"],
            id="zone-holding-all",
        ),
        pytest.param(
            {19: "    to: [prod, 0.0.0.0/1, 128.0.0.0/1]"},
            [
                f"t.yaml:19: rules[1].to[1]: 0.0.0.0/1 {V4_BROAD}",
                f"t.yaml:19: rules[1].to[2]: 128.0.0.0/1 {V4_BROAD}",
            ],
            id="two-halves",
        ),
        pytest.param(
            {14: "    to: [preprod, 10.0.0.0/8, 11.0.0.0/8]"},
            [f"t.yaml:14: rules[0].to: the union of these {V4_BROAD}"],
            id="union-of-two-8s",
        ),
        pytest.param(
            {10: '  preprod: [80.158.0.0/23, "2001::/16", "2002::/16"]'},
            [
                f"t.yaml:14: rules[0].to[0]: zone 'preprod' {V6_BROAD}",
                f"t.yaml:19: rules[1].to[1]: zone 'preprod' {V6_BROAD}",
            ],
            id="union-inside-a-zone",
        ),
    ],
)
def test_broad_destinations_are_refused(lines: dict[int, str], expected: list[str]) -> None:
    assert problems(variant(lines)) == expected


@pytest.mark.parametrize(
    "to",
    [
        "[10.0.0.0/8]",  # exactly as broad as allowed
        '["2001::/16"]',
        "[10.0.0.0/8, '2001::/16']",  # the limit is per address family
        "[10.0.0.0/9, 10.128.0.0/9]",  # a /8 in halves
        "[10.0.0.0/8, 10.1.0.0/16]",  # overlaps count once
    ],
)
def test_destinations_up_to_the_limit_are_accepted(to: str) -> None:
    config.parse(variant({14: f"    to: {to}"}), Path("t.yaml"))


@pytest.mark.parametrize("to", ["[0.0.0.0/0]", '["::/0"]', "[0.0.0.0/1, 128.0.0.0/1]"])
def test_allow_broad_accepts_a_broad_destination(to: str) -> None:
    # Line 16 held rule 0's `auth: none`; auth is then required, the default.
    text = variant({14: f"    to: {to}", 16: "    allow_broad: true"})
    rule = config.parse(text, Path("t.yaml")).policy.rules[0]
    assert rule.destinations.networks is not None
    assert str(rule.destinations) == ", ".join(to.strip("[]").replace('"', "").split(", "))


def test_allow_broad_is_per_rule() -> None:
    text = variant({9: "  prod: [0.0.0.0/0]", 16: "    allow_broad: true"})
    assert problems(text) == [f"t.yaml:19: rules[1].to[0]: zone 'prod' {V4_BROAD}"]


def test_allow_broad_must_be_a_boolean_and_does_not_allow_any() -> None:
    found = problems(variant({14: "    to: [0.0.0.0/0]", 16: "    allow_broad: yes please"}))
    where = "t.yaml:16: rules[0].allow_broad: must be true or false"
    assert any(p.startswith(where) for p in found), found
    found = problems(variant({14: "    to: [any]", 16: "    allow_broad: true"}))
    assert found == [
        "t.yaml:14: rules[0].to[0]: 'any' destination would make an open proxy; name zones"
    ]


# --- the TLS listener ---------------------------------------------------------------------


def test_tls_listener_settings(tmp_path: Path) -> None:
    text = BASE + "tls_listen: 127.0.0.1:3129\ntls:\n  certificate: tls.crt\n  key: /k/tls.key\n"
    text = text.replace(
        "  algorithms: [MD5, SHA-256]\n",
        "  algorithms: [MD5, SHA-256]\n  basic_over_tls: true\n  lock_on_plaintext: true\n",
    )
    cfg = config.parse(text, tmp_path / "proxyd.yaml")
    assert cfg.tls_listen == ("127.0.0.1", 3129)
    assert cfg.tls == config.TlsConfig(tmp_path / "tls.crt", Path("/k/tls.key"))
    assert cfg.auth.basic_over_tls and cfg.auth.lock_on_plaintext
    plain = config.parse(BASE, tmp_path / "proxyd.yaml")
    assert plain.tls_listen is None and plain.tls is None
    assert not plain.auth.basic_over_tls and not plain.auth.lock_on_plaintext


@pytest.mark.parametrize(
    ("append", "message"),
    [
        ("tls_listen: 127.0.0.1:3129\n", "tls: tls_listen needs tls.certificate and tls.key"),
        ("tls_listen: 127.0.0.1:3129\ntls: {certificate: c}\n", "tls.key: required"),
        ("tls_listen: 127.0.0.1:3128\ntls: {certificate: c, key: k}\n", "another port"),
        ("tls_listen: nowhere\ntls: {certificate: c, key: k}\n", "tls_listen"),
        ("tls: {certificate: c, key: k, ca: x}\n", "tls.ca"),
    ],
)
def test_tls_listener_errors(append: str, message: str) -> None:
    found = problems(BASE + append)
    assert any(message in p for p in found), found


def test_tls_booleans_are_booleans() -> None:
    text = BASE.replace(
        "  algorithms: [MD5, SHA-256]\n",
        "  algorithms: [MD5, SHA-256]\n  basic_over_tls: yes please\n",
    )
    assert any("auth.basic_over_tls" in p and "true or false" in p for p in problems(text))
