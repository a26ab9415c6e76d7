"""The open sessions of authenticated users: what revocation ends at once.

A session is a tunnel or a kept-alive client connection that a user's credentials
admitted. Every `SWEEP_INTERVAL` the users file is looked at and each session is asked
again (core/revocation.py) against the user as the file now has them; one that may not
go on is ended by its own `end`, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from proxy.core.digest import UserSecrets
from proxy.core.revocation import revoked

log = logging.getLogger("proxyd")

SWEEP_INTERVAL = 0.25  # seconds: a removed user's tunnels end well within a second


@dataclass
class Session:
    user: UserSecrets  # as the users file had them when the session was admitted
    end: Callable[[str], None]  # ends the session; the argument says why


class Sessions:
    def __init__(self) -> None:
        self.open: dict[Hashable, Session] = {}

    def add(self, key: Hashable, user: UserSecrets | None, end: Callable[[str], None]) -> None:
        """Track a session (None: no user record, nothing to revoke; it is not tracked)."""
        if user is not None:
            self.open[key] = Session(user, end)

    def discard(self, key: Hashable) -> None:
        self.open.pop(key, None)

    def sweep(self, lookup: Callable[[str], UserSecrets | None], now: float) -> int:
        """End every session whose user may no longer have it; how many were ended."""
        ended = 0
        for key, session in list(self.open.items()):
            reason = revoked(session.user, lookup(session.user.name), now)
            if reason is None:
                continue
            del self.open[key]
            ended += 1
            log.warning("ended a session of %s: user %s", session.user.name, reason)
            try:
                session.end(reason)
            except Exception:  # one session that fails to end must not keep the others
                log.exception("could not end a session of %s", session.user.name)
        return ended
