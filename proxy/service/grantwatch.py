"""What the proxy notices about grants as time passes, looked at once a second:

- when each user and trusted source was last used: merged into `grants.last_use_file`
  every FLUSH_INTERVAL seconds and at shutdown, for `proxyd grants`;
- the audit lines no command writes: a user's or a trusted source's expiry passing (by the
  clock), and trusted-source changes, since the config is edited by hand (at start against
  what the proxy last saw, kept beside the last-use file, and at each reload).

Audit lines come from one process per proxy (the only one, or the first worker), so
`serve --workers N` writes each once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from proxy.core.audit import trusted_record, user_record
from proxy.core.config import Config
from proxy.core.grants import expired_between, format_trusted, parse_trusted, trusted_changes
from proxy.core.lastuse import Uses
from proxy.core.policy import TrustedSource
from proxy.effects.audit import AuditLog, operator
from proxy.effects.files import atomic_write
from proxy.effects.lastusefile import LastUseFile
from proxy.service.recorder import Recorder
from proxy.service.runtime import Runtime

log = logging.getLogger("proxyd")

WATCH_INTERVAL = 1.0  # seconds between looks
FLUSH_INTERVAL = 10.0  # seconds between writes of the last-use file


def seen_file(cfg: Config) -> Path | None:
    """Where the trusted sources last seen are kept: beside the last-use file."""
    if cfg.last_use_file is None:
        return None
    return cfg.last_use_file.with_name("trusted-sources-seen.json")


class GrantWatch:
    def __init__(self, recorder: Recorder, audits: bool, now: float) -> None:
        self.recorder = recorder
        self.audits = audits
        self.since = now  # expiries up to here are noticed already
        self.seen: tuple[TrustedSource, ...] | None = None  # None: not looked yet
        self.last_flush = now
        self.failing: set[str] = set()  # what failed last time: said once, until it works

    def look(self, runtime: Runtime, now: float) -> Uses | None:
        """Audit what happened since the last look; the uses to write, when it is time
        (the caller writes them off the event loop, with `write_uses`)."""
        cfg = runtime.config
        self.recorder.trusted = cfg.trusted_sources
        if self.audits:
            self._audit(cfg, runtime, now)
        self.since = now
        if now - self.last_flush < FLUSH_INTERVAL or cfg.last_use_file is None:
            return None
        self.last_flush = now
        return self.recorder.take_uses()

    def write_uses(self, cfg: Config, uses: Uses) -> None:
        if cfg.last_use_file is None or not uses:
            return
        try:
            problem = LastUseFile(cfg.last_use_file).add(uses)
        except OSError as e:
            self._failed("last-use", f"last use not recorded: {cfg.last_use_file}: {e}")
            return
        if problem is not None:
            log.warning("last-use file %s", problem)
        self._works("last-use")

    def _audit(self, cfg: Config, runtime: Runtime, now: float) -> None:
        records = []
        users = {user.name: user for user in runtime.users.all()}
        expiries = ((user.name, user.expires) for user in users.values())
        for name in expired_between(expiries, self.since, now):
            records.append(user_record("expire", name, users[name], operator(), now))
        sources = {source.name: source for source in cfg.trusted_sources}
        expiries = ((source.name, source.expires) for source in sources.values())
        for name in expired_between(expiries, self.since, now):
            records.append(trusted_record("expire", sources[name], operator(), now, "clock"))
        via = "reload"
        if self.seen is None:
            self.seen, via = self._load_seen(cfg), "start"
        changes = trusted_changes(self.seen, cfg.trusted_sources)
        for action, source in changes:
            records.append(trusted_record(action, source, operator(), now, via))
        if changes or via == "start":
            self._save_seen(cfg)
        self.seen = cfg.trusted_sources
        if not records:
            return
        try:
            audit = AuditLog(cfg.audit_log)
            for record in records:
                audit.write(record)
        except OSError as e:
            self._failed("audit", f"{len(records)} grant audit line(s) not written: {e}")
        else:
            self._works("audit")

    def _load_seen(self, cfg: Config) -> tuple[TrustedSource, ...]:
        """What the proxy saw before this start; without a record, the config itself
        (nothing to tell: the first start, or last use not kept)."""
        path = seen_file(cfg)
        if path is None:
            return cfg.trusted_sources
        try:
            return parse_trusted(path.read_bytes())
        except FileNotFoundError:
            return cfg.trusted_sources
        except (OSError, ValueError) as e:
            log.warning(
                "trusted sources last seen: %s: %s (changes while down not audited)", path, e
            )
            return cfg.trusted_sources

    def _save_seen(self, cfg: Config) -> None:
        path = seen_file(cfg)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, format_trusted(cfg.trusted_sources))
        except OSError as e:
            self._failed("seen", f"trusted sources last seen not recorded: {path}: {e}")
        else:
            self._works("seen")

    def _failed(self, what: str, message: str) -> None:
        if what not in self.failing:
            log.error("%s (said once until it works again)", message)
            self.failing.add(what)

    def _works(self, what: str) -> None:
        if what in self.failing:
            log.info("%s: works again", what)
            self.failing.discard(what)
