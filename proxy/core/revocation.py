"""Whether an open session may go on, sans-IO: revocation takes effect at once.

A tunnel or a kept-alive connection was admitted for a user as the users file was then.
When that user is removed, locked, expired or gets a new password, what was admitted ends
too: an ssh session through a tunnel must not outlive its user's access.
"""

from __future__ import annotations

import hmac

from proxy.core.digest import UserSecrets


def revoked(admitted: UserSecrets, current: UserSecrets | None, now: float) -> str | None:
    """Why a session admitted as `admitted` must end now, or None if it may go on."""
    if current is None:
        return "removed"
    if current.locked:
        return "locked"
    if current.expires is not None and now >= current.expires:
        return "expired"
    if set(current.ha1) != set(admitted.ha1) or not all(
        hmac.compare_digest(current.ha1[a], admitted.ha1[a]) for a in admitted.ha1
    ):
        return "password_changed"
    return None
