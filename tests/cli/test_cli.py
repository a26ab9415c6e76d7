"""The real `proxyd` console script, run as a subprocess on a config in tmp_path.

Every run is checked for tracebacks: expected errors exit 1 with one clear line.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import pty
import select
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from passlib.apache import HtdigestFile

from proxy.core.users import format_users, make_user, parse_users

PROXYD = Path(sys.executable).parent / "proxyd"
HTDIGEST = Path("/usr/bin/htdigest")

CONFIG = """\
listen: 127.0.0.1:3128
realm: proxyd
auth:
  users_file: users.digest
  nonce_secret_file: nonce.secret
dns:
  hosts_file: hosts
zones:
  prod: [160.44.192.0/20]
  preprod: [80.158.0.0/23]
rules:
  - name: prod-to-preprod
    from: [prod]
    to: [preprod]
    ports: [80, 443, 8443]
    auth: none
  - name: partners
    from: [any]
    to: [prod, preprod]
    ports: [22, 80, 443, 8443]
    auth: required
audit_log: audit.log
"""

HOSTS = """\
80.158.0.10   api.preprod.test
160.44.192.10 web.prod.test   web
10.0.0.1      internal.test
80.158.0.11   mixed.test
10.0.0.2      mixed.test
"""


IN_30 = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
IN_60 = (datetime.date.today() + datetime.timedelta(days=60)).isoformat()


def md5_ha1(name: str, password: str, realm: str = "proxyd") -> str:
    return hashlib.md5(f"{name}:{realm}:{password}".encode()).hexdigest()


def sha256_ha1(name: str, password: str, realm: str = "proxyd") -> str:
    return hashlib.sha256(f"{name}:{realm}:{password}".encode()).hexdigest()


@dataclasses.dataclass
class Site:
    """A config folder: proxyd.yaml, hosts, and (once written) users.digest."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "proxyd.yaml"

    @property
    def users_file(self) -> Path:
        return self.root / "users.digest"

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(PROXYD), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
        )
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        return result

    def users(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """`proxyd users ARGS`; an `add` or `import` that gives no lifetime gets 30 days
        (every grant needs one; the lifetime tests give theirs)."""
        if args and args[0] in ("add", "import") and not {"--expires", "--no-expiry"} & set(args):
            args = (args[0], "--expires", IN_30, *args[1:])
        return self.run("users", "--config", str(self.config), *args, stdin=stdin)

    def explain(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("explain", "--config", str(self.config), *args)

    def listing(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.root.iterdir() if p.is_file()}

    def stored(self) -> dict[str, dict[str, str]]:
        users = parse_users(self.users_file.read_text(), str(self.users_file))
        return {name: user.ha1 for name, user in users.items()}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    (tmp_path / "proxyd.yaml").write_text(CONFIG)
    (tmp_path / "hosts").write_text(HOSTS)
    return Site(tmp_path)


def htdigest_via_tty(path: Path, realm: str, user: str, password: str, create: bool) -> None:
    """Run Apache's htdigest, which reads the password from its terminal, on a pty."""
    argv = ["htdigest", *(["-c"] if create else []), str(path), realm, user]
    pid, fd = pty.fork()
    if pid == 0:  # the child: htdigest with the pty as its controlling terminal
        os.execv(str(HTDIGEST), argv)
    try:
        seen = b""
        for prompt in (b"New password: ", b"Re-type new password: "):
            while not seen.endswith(prompt):
                ready, _, _ = select.select([fd], [], [], 10)
                assert ready, f"htdigest did not prompt: {seen!r}"
                seen += os.read(fd, 1024)
            os.write(fd, password.encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0, seen
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


# --- check-config ------------------------------------------------------------------------


def test_check_config_ok(site: Site) -> None:
    assert site.users("add", "alice", "--generate").returncode == 0
    result = site.run("check-config", str(site.config))
    assert result.returncode == 0
    assert result.stdout == f"{site.config}: OK (2 zones, 2 rules)\n"


def test_check_config_says_the_users_file_is_missing(site: Site) -> None:
    result = site.run("check-config", str(site.config))
    assert result.returncode == 0  # a first start creates it
    assert result.stdout.splitlines() == [
        f"note: users_file {site.users_file} does not exist: `proxyd serve` creates it empty "
        "at its first start; a reload to this config is refused until it exists",
        f"{site.config}: OK (2 zones, 2 rules)",
    ]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("loop", "cannot read: Too many levels of symbolic links"),
        ("dangling", "does not exist"),
        ("garbage", ":1: expected"),
    ],
)
def test_check_config_reports_a_users_file_a_start_would_refuse(
    site: Site, fault: str, message: str
) -> None:
    if fault == "loop":
        site.users_file.symlink_to(site.users_file.name)
    elif fault == "dangling":
        site.users_file.symlink_to("gone/users.digest")
    else:
        site.users_file.write_text("garbage\n")
    result = site.run("check-config", str(site.config))
    assert result.returncode == 1
    assert message in result.stdout
    assert result.stdout.endswith(f"{site.config}: 1 error(s)\n")


def test_check_config_lists_every_error(site: Site) -> None:
    site.config.write_text(
        CONFIG.replace("realm: proxyd", "realm: 'pro\"xyd'")
        .replace("to: [preprod]", "to: [prepord]")
        .replace("ports: [22, 80, 443, 8443]", "ports: [22, 0]")
    )
    result = site.run("check-config", str(site.config))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{site.config}:2: realm: must be 1-64 characters of letters, digits, space and ._@-",
        f"{site.config}:14: rules[0].to[0]: unknown zone 'prepord'",
        f"{site.config}:20: rules[1].ports[1]: invalid port range 0 (1-65535, low <= high)",
        f"{site.config}: 3 error(s)",
    ]


def test_check_config_reports_a_bad_hosts_file(site: Site) -> None:
    (site.root / "hosts").write_text("80.158.0.10 ok.test\nnot-an-address bad.test\n10.0.0.1\n")
    result = site.run("check-config", str(site.config))
    assert result.returncode == 1
    hosts = site.root / "hosts"
    assert result.stdout.splitlines()[:2] == [
        f"{hosts}:2: invalid address 'not-an-address'",
        f"{hosts}:3: address without a name",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(None, "cannot read", id="missing"),
        pytest.param("rules: [\n", "YAML syntax error", id="yaml-syntax"),
        pytest.param(CONFIG + "realm: again\n", ":23: realm: duplicate key", id="duplicate-key"),
        pytest.param(
            "listen: &a [*a]\n",
            "proxyd.yaml",
            id="recursive-alias",
        ),
    ],
)
def test_check_config_bad_files(site: Site, text: str | None, message: str) -> None:
    if text is None:
        site.config.unlink()
    else:
        site.config.write_text(text)
    result = site.run("check-config", str(site.config))
    assert result.returncode == 1
    assert message in result.stdout


# --- explain --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, lines",
    [
        pytest.param(
            ["--from", "160.44.192.5", "--to", "80.158.0.10:443"],
            0,
            [
                "  160.44.192.5 -> 80.158.0.10:443: rule 'prod-to-preprod' (auth: none)",
                "allow: allowed by rule 'prod-to-preprod'",
            ],
            id="allowed-no-auth",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "api.preprod.test:443"],
            1,
            [
                "api.preprod.test resolves to 80.158.0.10",
                "  198.51.100.1 -> 80.158.0.10:443: rule 'partners' (auth: required)",
                "auth_required: rule 'partners' requires auth",
            ],
            id="auth-required",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "api.preprod.test:443", "--user", "alice"],
            0,
            ["allow: allowed by rule 'partners'"],
            id="allowed-with-user",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "WEB:22", "--user", "alice"],
            0,
            ["web resolves to 160.44.192.10", "allow: allowed by rule 'partners'"],
            id="hosts-alias-any-case",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "api.preprod.test:443", "--user", "ghost"],
            1,
            [
                "note: no user 'ghost' in realm 'proxyd'; treated as anonymous",
                "auth_required: rule 'partners' requires auth",
            ],
            id="unknown-user",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "api.preprod.test:443", "--user", "eve"],
            1,
            ["note: no user 'eve' in realm 'proxyd'; treated as anonymous"],
            id="user-of-another-realm",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "internal.test:443", "--user", "alice"],
            1,
            [
                "  198.51.100.1 -> 10.0.0.1:443: no rule matches",
                "deny: no rule allows 198.51.100.1 to 10.0.0.1 port 443",
            ],
            id="denied-zone",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "web.prod.test:25", "--user", "alice"],
            1,
            ["deny: no rule allows 198.51.100.1 to 160.44.192.10 port 25"],
            id="denied-port",
        ),
        pytest.param(
            ["--from", "198.51.100.1", "--to", "mixed.test:443", "--user", "alice"],
            1,
            [
                "mixed.test resolves to 80.158.0.11, 10.0.0.2",
                "  198.51.100.1 -> 80.158.0.11:443: rule 'partners' (auth: required)",
                "  198.51.100.1 -> 10.0.0.2:443: no rule matches",
                "deny: no rule allows 198.51.100.1 to 10.0.0.2 port 443",
            ],
            id="one-address-denied",
        ),
        pytest.param(
            ["--from", "160.44.192.5", "--to", "1352531978:80"],
            0,
            ["  160.44.192.5 -> 80.158.0.10:80: rule 'prod-to-preprod' (auth: none)"],
            id="decimal-literal",
        ),
        pytest.param(
            ["--from", "160.44.192.5", "--to", "0x50.0x9e.0.012:80"],
            0,
            ["  160.44.192.5 -> 80.158.0.10:80: rule 'prod-to-preprod' (auth: none)"],
            id="hex-and-octal-literal",
        ),
        pytest.param(
            ["--from", "::ffff:160.44.192.5", "--to", "[::ffff:80.158.0.10]:443"],
            0,
            ["  160.44.192.5 -> 80.158.0.10:443: rule 'prod-to-preprod' (auth: none)"],
            id="mapped-v6",
        ),
        pytest.param(
            ["--from", "2001:db8::1", "--to", "[2001:db8::2]:443"],
            1,
            ["deny: no rule allows 2001:db8::1 to 2001:db8::2 port 443"],
            id="v6-denied",
        ),
    ],
)
def test_explain(site: Site, args: list[str], code: int, lines: list[str]) -> None:
    site.users_file.write_text(
        format_users(
            [make_user("alice", "proxyd", "password-a"), make_user("eve", "other", "password-e")]
        )
    )
    result = site.explain(*args)
    assert result.returncode == code, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert [line for line in out if line in lines] == lines, result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(
            ["--from", "nowhere", "--to", "80.158.0.10:443"],
            "--from: not an IP address: 'nowhere'",
            id="bad-from",
        ),
        pytest.param(
            ["--from", "10.0.0.300", "--to", "80.158.0.10:443"],
            "--from: not an IP address",
            id="from-out-of-range",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "80.158.0.10"],
            "--to: expected HOST:PORT, got '80.158.0.10'",
            id="to-without-port",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "host:https"],
            "invalid port: 'https'",
            id="to-named-port",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "evil.test\r\nX: y:80"],
            "IPv6 address without brackets: 'evil.test\\r\\nX: y:80'",
            id="to-header-injection",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "evil.test\r\nX-y:80"],
            "invalid host name: 'evil.test\\r\\nX-y'",
            id="to-crlf-in-name",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "999.1.1.1:80"],
            "invalid IPv4 address: '999.1.1.1'",
            id="to-bad-v4",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "[fe80::1%eth0]:80"],
            "scoped IPv6 address not allowed",
            id="to-scoped-v6",
        ),
        pytest.param(["--from", "1.2.3.4", "--to", ":80"], "no host in ':80'", id="to-no-host"),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "api.preprod.test:99999"],
            "invalid port",
            id="to-port-out-of-range",
        ),
        pytest.param(  # str.isdigit takes "²" and int() refuses it: this exited 3, a "bug"
            ["--from", "1.2.3.4", "--to", "host:\u00b2"],
            "proxyd: error: invalid port: '\u00b2' (expected 1-65535 in digits 0-9)",
            id="to-superscript-port",
        ),
        pytest.param(  # int() reads full-width digits as 80
            ["--from", "1.2.3.4", "--to", "host:\uff18\uff10"],
            "invalid port: '\uff18\uff10'",
            id="to-full-width-port",
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "host:+80"], "invalid port: '+80'", id="to-plus-port"
        ),
        pytest.param(
            ["--from", "1.2.3.4", "--to", "host:" + "8" * 5000],
            "invalid port: '8888888888888888'...",
            id="to-5000-digit-port",
        ),
    ],
)
def test_explain_bad_arguments(site: Site, args: list[str], message: str) -> None:
    result = site.explain(*args)
    assert result.returncode == 1
    assert message in result.stderr, result.stdout + result.stderr


def test_explain_with_a_broken_config(site: Site) -> None:
    site.config.write_text(CONFIG.replace("to: [preprod]", "to: [prepord]"))
    result = site.explain("--from", "1.2.3.4", "--to", "80.158.0.10:443")
    assert result.returncode == 1
    assert f"{site.config}:14: rules[0].to[0]: unknown zone 'prepord'" in result.stderr


# --- users add / passwd / remove / list ------------------------------------------------------


def test_add_with_password_stdin(site: Site) -> None:
    password = "correct-horse-battery"
    result = site.users("add", "alice", "--password-stdin", stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "added alice\n"
    assert result.stdout == ""
    assert stat.S_IMODE(site.users_file.stat().st_mode) == 0o600
    assert site.stored() == {
        "alice": {"MD5": md5_ha1("alice", password), "SHA-256": sha256_ha1("alice", password)}
    }


def test_add_strips_crlf_from_stdin(site: Site) -> None:
    assert site.users("add", "alice", "--password-stdin", stdin="windows-pass\r\n").returncode == 0
    assert site.stored()["alice"]["MD5"] == md5_ha1("alice", "windows-pass")


def test_add_generate_prints_a_working_password(site: Site) -> None:
    result = site.users("add", "bob", "--generate")
    assert result.returncode == 0, result.stderr
    password = result.stdout.strip()
    assert len(password) >= 20 and result.stdout == password + "\n"
    assert password not in result.stderr
    assert site.stored()["bob"] == {
        "MD5": md5_ha1("bob", password),
        "SHA-256": sha256_ha1("bob", password),
    }
    assert stat.S_IMODE(site.users_file.stat().st_mode) == 0o600


def test_add_existing_user_changes_nothing(site: Site) -> None:
    site.users("add", "alice", "--password-stdin", stdin="first-password\n")
    before = site.users_file.read_bytes()
    result = site.users("add", "alice", "--password-stdin", stdin="second-password\n")
    assert result.returncode == 1
    assert "user exists: alice" in result.stderr
    assert site.users_file.read_bytes() == before


def test_passwd(site: Site) -> None:
    site.users("add", "alice", "--password-stdin", stdin="first-password\n")
    result = site.users("passwd", "alice", "--password-stdin", stdin="second-password\n")
    assert result.returncode == 0
    assert result.stderr == "password set for alice\n"
    assert site.stored()["alice"]["SHA-256"] == sha256_ha1("alice", "second-password")
    assert stat.S_IMODE(site.users_file.stat().st_mode) == 0o600


def test_passwd_of_a_missing_user_changes_nothing(site: Site) -> None:
    site.users("add", "alice", "--password-stdin", stdin="first-password\n")
    before = site.listing()
    result = site.users("passwd", "bob", "--password-stdin", stdin="second-password\n")
    assert result.returncode == 1
    assert "no such user: bob" in result.stderr
    assert site.listing() == before


@pytest.mark.parametrize(
    "args, stdin",
    [
        pytest.param(["add", "carol", "--password-stdin"], "secret-carol-1\n", id="add"),
        pytest.param(["passwd", "alice", "--password-stdin"], "secret-alice-2\n", id="passwd"),
        pytest.param(["add", "dave", "--generate"], "", id="generate"),
    ],
)
def test_no_secret_on_stderr(site: Site, args: list[str], stdin: str) -> None:
    site.users("add", "alice", "--password-stdin", stdin="secret-alice-1\n")
    result = site.users(*args, stdin=stdin)
    assert result.returncode == 0
    secrets = [stdin.strip()] if stdin else [result.stdout.strip()]
    for ha1 in site.stored().values():
        secrets += ha1.values()
    assert all(s and s not in result.stderr for s in secrets)


def test_remove(site: Site) -> None:
    for name in ("alice", "bob"):
        site.users("add", name, "--password-stdin", stdin=f"password-{name}\n")
    result = site.users("remove", "alice")
    assert result.returncode == 0
    assert result.stderr == "removed alice\n"
    assert set(site.stored()) == {"bob"}
    assert stat.S_IMODE(site.users_file.stat().st_mode) == 0o600


def test_remove_missing_user_changes_nothing(site: Site) -> None:
    site.users("add", "alice", "--password-stdin", stdin="password-alice\n")
    before = site.listing()
    result = site.users("remove", "bob")
    assert result.returncode == 1
    assert "no such user: bob" in result.stderr
    assert site.listing() == before


def test_list(site: Site) -> None:
    site.users("add", "alice", "--password-stdin", stdin="password-alice\n")
    with site.users_file.open("a") as f:  # what an imported htdigest line looks like
        f.write(f"bob:proxyd:{md5_ha1('bob', 'password-bob')}\n")
        f.write(f"eve:other:{md5_ha1('eve', 'password-eve', 'other')}\n")
    result = site.users("list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ALGORITHMS", "EXPIRES", "NOTE"]
    assert lines[1].split() == ["alice", "MD5,SHA-256", IN_30]
    assert lines[2].split(None, 3) == [
        "bob",
        "MD5",
        "-",
        "MD5 only until the password is set again",
    ]
    assert lines[3].split(None, 3) == [
        "eve",
        "MD5",
        "-",
        "MD5 only until the password is set again; "
        "realm 'other' differs from 'proxyd': cannot log in",
    ]
    assert len(lines) == 4


def test_list_without_a_users_file(site: Site) -> None:
    result = site.users("list")
    assert result.returncode == 0
    assert result.stdout.split() == ["NAME", "ALGORITHMS", "EXPIRES", "NOTE"]


# --- users import ---------------------------------------------------------------------------


@pytest.mark.skipif(not HTDIGEST.exists(), reason="apache2-utils' htdigest is not installed")
def test_import_a_file_made_by_apache_htdigest(site: Site) -> None:
    source = site.root / "apache.htdigest"
    htdigest_via_tty(source, "proxyd", "bob", "bob-password-1", create=True)
    htdigest_via_tty(source, "proxyd", "carol", "carol-password-2", create=False)
    htdigest_via_tty(source, "elsewhere", "dave", "dave-password-3", create=False)
    result = site.users("import", str(source))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "imported 2 user(s) (MD5 only until their password is set again)\n"
    assert "skipped dave: realm 'elsewhere' is not 'proxyd'" in result.stderr
    assert site.stored() == {
        "bob": {"MD5": md5_ha1("bob", "bob-password-1")},
        "carol": {"MD5": md5_ha1("carol", "carol-password-2")},
    }
    assert stat.S_IMODE(site.users_file.stat().st_mode) == 0o600


def test_import_a_passlib_file_skips_other_realms(site: Site) -> None:
    source = site.root / "passlib.htdigest"
    ht = HtdigestFile(str(source), new=True)
    ht.set_password("erin", "proxyd", "erin-password")
    ht.set_password("frank", "Other Realm", "frank-password")
    ht.save()
    result = site.users("import", str(source))
    assert result.returncode == 0, result.stderr
    assert "skipped frank: realm 'Other Realm' is not 'proxyd'" in result.stderr
    assert site.stored() == {"erin": {"MD5": md5_ha1("erin", "erin-password")}}


def test_import_keeps_existing_users_unless_replace(site: Site) -> None:
    site.users("add", "alice", "--password-stdin", stdin="password-new\n")
    source = site.root / "old.htdigest"
    source.write_text(f"alice:proxyd:{md5_ha1('alice', 'password-old')}\n")
    result = site.users("import", str(source))
    assert result.returncode == 0
    assert "skipped alice: exists (use --replace)" in result.stderr
    assert site.stored()["alice"]["MD5"] == md5_ha1("alice", "password-new")
    assert site.users("import", "--replace", str(source)).returncode == 0
    assert site.stored()["alice"] == {"MD5": md5_ha1("alice", "password-old")}


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(b"this is not an htdigest file\n", "cannot read htdigest file", id="garbage"),
        pytest.param(b"bob:proxyd\n", "cannot read htdigest file", id="two-fields"),
        pytest.param(None, "cannot read htdigest file", id="missing"),
        pytest.param(
            f"x y:proxyd:{md5_ha1('x y', 'pw')}\n".encode(), "invalid user name", id="bad-name"
        ),
        pytest.param(
            b"bob:proxyd:not-a-hash\n",
            "malformed",
            id="bad-hash",
        ),
    ],
)
def test_import_refuses_bad_files(site: Site, content: bytes | None, message: str) -> None:
    site.users("add", "alice", "--password-stdin", stdin="password-alice\n")
    before = site.listing()
    source = site.root / "in.htdigest"
    if content is not None:
        source.write_bytes(content)
        before[source.name] = content
    result = site.users("import", str(source))
    assert result.returncode == 1
    assert message in result.stderr
    assert site.listing() == before


# --- refused input ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a:b", "x y", "", "x" * 65, "-x", "alice/..", "é"])
def test_bad_user_names_write_nothing(site: Site, name: str) -> None:
    before = site.listing()
    result = site.users("add", "--password-stdin", "--", name, stdin="good-password\n")
    assert result.returncode == 1
    assert "invalid user name" in result.stderr
    assert site.listing() == before


def test_option_like_name_without_separator_is_a_usage_error(site: Site) -> None:
    before = site.listing()
    result = site.users("add", "-x", "--password-stdin", stdin="good-password\n")
    assert result.returncode == 2
    assert site.listing() == before


@pytest.mark.parametrize(
    "stdin, message",
    [
        pytest.param("", "too short", id="empty"),
        pytest.param("\n", "too short", id="empty-line"),
        pytest.param("short\n", "too short", id="short"),
        pytest.param("short\nlonger-second-line\n", "password", id="newline-after-short"),
        pytest.param("has\ttab-inside\n", "control characters", id="tab"),
        pytest.param(
            "first-long-part\nsecond-part\n",
            "password",
            id="newline-in-the-middle",
        ),
    ],
)
def test_bad_passwords_write_nothing(site: Site, stdin: str, message: str) -> None:
    before = site.listing()
    result = site.users("add", "alice", "--password-stdin", stdin=stdin)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert site.listing() == before


def test_no_password_source_and_no_tty(site: Site) -> None:
    result = site.users("add", "alice")
    assert result.returncode == 1
    assert "no password: use --password-stdin or --generate" in result.stderr
    assert not site.users_file.exists()


def test_users_with_a_broken_users_file(site: Site) -> None:
    site.users_file.write_text("alice:proxyd:not-a-hash\n")
    before = site.listing()
    result = site.users("add", "bob", "--password-stdin", stdin="password-bob\n")
    assert result.returncode == 1
    assert f"{site.users_file}:1: user 'alice': malformed MD5 hash" in result.stderr
    assert "not-a-hash" not in result.stderr
    assert site.listing() == before


def test_users_with_a_broken_config(site: Site) -> None:
    site.config.write_text("auth: {}\n")
    result = site.users("add", "alice", "--generate")
    assert result.returncode == 1
    assert "auth.users_file: required" in result.stderr
    assert result.stdout == ""


def test_concurrent_adds_all_land(site: Site) -> None:
    names = [f"user{i:02d}" for i in range(20)]
    procs = [
        subprocess.Popen(
            [
                *(str(PROXYD), "users", "--config", str(site.config), "add", n),
                *("--password-stdin", "--expires", IN_30),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in names
    ]
    for name, proc in zip(names, procs, strict=True):
        _, err = proc.communicate(f"password-{name}\n", timeout=60)
        assert proc.returncode == 0, err
    stored = site.stored()
    assert sorted(stored) == names
    assert all(stored[n]["MD5"] == md5_ha1(n, f"password-{n}") for n in names)


# --- the audit log (issue 17) ---------------------------------------------------------


def test_every_user_change_is_one_audit_line_without_secrets(site: Site) -> None:
    import json

    site.config.write_text(
        site.config.read_text().replace("zones:", "groups:\n  acme: ACME GmbH\nzones:", 1)
    )
    password = "first-password-1"
    assert (
        site.users(
            "add",
            "alice",
            "--password-stdin",
            "--expires",
            IN_30,
            "--note",
            "ACME, t42",
            "--group",
            "acme",
            "--owner",
            "ACME GmbH",
            stdin=password + "\n",
        ).returncode
        == 0
    )
    assert (
        site.users("passwd", "alice", "--password-stdin", stdin="second-password\n").returncode == 0
    )
    assert site.users("renew", "alice", "--expires", IN_60, "--owner", "Beta AG").returncode == 0
    assert site.users("groups", "alice").returncode == 0
    assert site.users("list").returncode == 0  # not a change: no line
    assert site.users("remove", "alice").returncode == 0
    log = site.root / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["action"] for r in records] == ["add", "passwd", "renew", "groups", "remove"]
    assert all(r["kind"] == "user" and r["name"] == "alice" and r["operator"] for r in records)
    assert records[0]["expires"] == IN_30 and records[0]["groups"] == "acme"
    assert records[0]["reason"] == "ACME, t42"
    assert records[2]["expires"] == IN_60 and "groups" not in records[3]
    # Who it is for, who made it and when: set by add, kept by passwd, owner set by renew.
    assert [r["owner"] for r in records[:4]] == ["ACME GmbH", "ACME GmbH", "Beta AG", "Beta AG"]
    assert "owner" not in records[4]  # removed: nothing left to describe
    assert {r["created_at"] for r in records[:4]} == {records[0]["created_at"]}
    assert {r["created_by"] for r in records[:4]} == {records[0]["operator"]}
    made = datetime.datetime.fromisoformat(records[0]["created_at"])
    assert abs((datetime.datetime.now(datetime.UTC) - made).total_seconds()) < 300
    text = log.read_text()
    stored = site.users_file.read_text()
    assert password not in text and "second-password" not in text
    assert not any(
        field in text for field in stored.replace("\n", ":").split(":") if len(field) >= 32
    )
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_an_unwritable_audit_log_is_said_and_exits_1(site: Site) -> None:
    site.config.write_text(
        site.config.read_text().replace("audit_log: audit.log", "audit_log: /proc/nope/audit.log")
    )
    result = site.users("add", "alice", "--password-stdin", stdin="a-good-password\n")
    assert result.returncode == 1
    assert "the change is made but not audited" in result.stderr
    assert "alice:" in site.users_file.read_text()


def test_unknown_groups_are_refused_by_users_add(site: Site) -> None:
    result = site.users(
        "add", "alice", "--password-stdin", "--group", "nope", stdin="a-good-password\n"
    )
    assert result.returncode == 1 and "unknown group(s) nope" in result.stderr


# --- lifetimes (issue 17) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expires", "2099-01-01"], "more than grants.max_lifetime (90 days) away"),
        (["--expires", "2020-01-01"], "has passed already"),
        (["--no-expiry"], "needs a reason (--reason)"),
        ([], "one of the arguments --expires --no-expiry is required"),
    ],
)
def test_every_grant_has_a_lifetime(site: Site, args: list[str], message: str) -> None:
    before = site.listing()
    result = site.run(
        "users",
        "--config",
        str(site.config),
        "add",
        "alice",
        "--password-stdin",
        *args,
        stdin="a-good-password\n",
    )
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert site.listing() == before


def test_a_grant_without_expiry_needs_a_reason_and_is_audited_as_never(site: Site) -> None:
    import json

    result = site.users(
        "add",
        "svc",
        "--password-stdin",
        "--no-expiry",
        "--note",
        "monitoring, ticket 7",
        stdin="a-good-password\n",
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in (site.root / "audit.log").read_text().splitlines()]
    assert record["expires"] == "never" and record["reason"] == "monitoring, ticket 7"
    assert site.users("renew", "svc", "--expires", "2099-01-01").returncode == 1
    assert site.users("renew", "svc", "--expires", IN_60).returncode == 0


def test_max_lifetime_is_configurable(site: Site) -> None:
    site.config.write_text(site.config.read_text() + "grants: {max_lifetime: 7}\n")
    result = site.users("add", "alice", "--password-stdin", stdin="a-good-password\n")
    assert result.returncode == 1 and "(7 days)" in result.stderr


@pytest.mark.parametrize("option", ["--reason", "--owner"])
def test_a_reason_or_owner_that_is_not_utf8_is_refused(site: Site, option: str) -> None:
    """argv bytes that are not UTF-8 reach Python as surrogates: refused, never a crash."""
    result = site.users(
        "add",
        "alice",
        "--password-stdin",
        option,
        os.fsdecode(b"ACME \xff"),
        stdin="a-good-password\n",
    )
    assert result.returncode == 1 and "not valid UTF-8" in result.stderr, result.stderr
    assert not site.users_file.exists() or "alice:" not in site.users_file.read_text()
