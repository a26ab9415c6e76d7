"""Typed errors of the sans-IO core. The adapter maps each to one HTTP answer."""

from __future__ import annotations


class ProxydError(Exception):
    """Base of every error proxyd expects and reports (not a bug)."""


class ConfigError(ProxydError):
    """A config, users or key file is invalid. `problems` lists located messages."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MalformedCredentials(ProxydError):
    """`Proxy-Authorization` cannot be parsed or lacks a required field: 400."""


class AuthFailure(ProxydError):
    """Credentials present but not accepted: 407. `reason` is a short metrics/log label."""

    def __init__(self, reason: str, *, stale: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stale = stale


class BadDestination(ProxydError):
    """The request target is not a usable host:port (400)."""


class UnsupportedEngine(ProxydError):
    """The installed mitmproxy is not the series proxyd's reach-ins were validated on."""
