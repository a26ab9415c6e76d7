"""`proxyd relay` as a subprocess, a tiny PEP 503 index with a wheel, and the Node client.

Everything listens on loopback; every wait is bounded; `RelayHandle.stop()` always reaps.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import signal
import ssl
import subprocess
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from harness import (
    IO_TIMEOUT,
    ORIGIN_HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    CountingHTTPServer,
    ProxydHandle,
    TLSHTTPServer,
    clean_env,
    proxyd_bin,
)

NODE_DIR = Path(__file__).parent / "node"
NODE_SCRIPT = NODE_DIR / "fetch.mjs"

_LISTENING_RE = re.compile(r"proxyd relay: listening on (\S+):(\d+),")


class RelayHandle:
    """A running `proxyd relay`; stdout and stderr are collected by a reader thread."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str]):
        self.args = list(args)
        self.host = ""
        self.port = 0
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            [str(proxyd_bin()), "relay", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
        self._reader = threading.Thread(target=self._read, name="relay-log", daemon=True)
        self._reader.start()
        try:
            match = self.wait_for_log(_LISTENING_RE, timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.host, self.port = match.group(1).strip("[]"), int(match.group(2))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = IO_TIMEOUT
    ) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._eof:
                    raise AssertionError(
                        f"relay exited (status {self.proc.wait(STOP_TIMEOUT)}) before logging "
                        f"{regex.pattern!r}; log:\n{''.join(self._lines)}"
                    )
                if remaining <= 0:
                    raise AssertionError(
                        f"no relay log line matching {regex.pattern!r} within {timeout}s; "
                        f"log:\n{''.join(self._lines)}"
                    )
                self._cond.wait(remaining)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def relay_env(home: Path, password: str) -> dict[str, str]:
    """A clean environment with PROXYD_PASSWORD (and no proxy variables)."""
    return clean_env(home, PROXYD_PASSWORD=password)


def upstream_url(proxy: ProxydHandle | tuple[str, int], user: str) -> str:
    host, port = proxy.address if isinstance(proxy, ProxydHandle) else proxy
    return f"http://{user}@{host}:{port}"


# --------------------------------------------------------------------------- index + wheel


WHEEL_NAME = "demo-1.0-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel() -> bytes:
    """A minimal valid wheel for `demo 1.0` (one module, METADATA, WHEEL, RECORD)."""
    files = {
        "demo/__init__.py": b'VALUE = "through proxyd relay"\n',
        "demo-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nSummary: relay test wheel\n"
        ),
        "demo-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: proxyd-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    record += "demo-1.0.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("demo-1.0.dist-info/RECORD", record)
    return buffer.getvalue()


class IndexHandler(BaseHTTPRequestHandler):
    """PEP 503 simple index: /simple/, /simple/demo/ and the wheel under /files/."""

    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: Any = self.server
        path = self.path.split("?", 1)[0]
        with server.hits_lock:
            server.paths.append(path)
        wheel: bytes = server.wheel
        if path in ("/simple", "/simple/"):
            page = '<!DOCTYPE html><html><body><a href="demo/">demo</a></body></html>'
        elif path in ("/simple/demo", "/simple/demo/"):
            sha = hashlib.sha256(wheel).hexdigest()
            page = (
                "<!DOCTYPE html><html><body>"
                f'<a href="/files/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>'
                "</body></html>"
            )
        elif path == f"/files/{WHEEL_NAME}":
            self._send(wheel, "application/octet-stream")
            return
        else:
            self._send(b"not found\n", "text/plain", 404)
            return
        self._send(page.encode(), "text/html; charset=utf-8")


class IndexServer(CountingHTTPServer):
    def __init__(self, wheel: bytes):
        self.wheel = wheel
        self.paths: list[str] = []
        super().__init__((ORIGIN_HOST, 0), IndexHandler)


class TLSIndexServer(TLSHTTPServer):
    def __init__(self, wheel: bytes, context: ssl.SSLContext):
        self.wheel = wheel
        self.paths: list[str] = []
        super().__init__((ORIGIN_HOST, 0), IndexHandler, context)


__all__ = [
    "NODE_DIR",
    "NODE_SCRIPT",
    "WHEEL_NAME",
    "IndexServer",
    "RelayHandle",
    "TLSIndexServer",
    "build_wheel",
    "relay_env",
    "upstream_url",
]
