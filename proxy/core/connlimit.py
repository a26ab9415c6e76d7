"""Open connections per source address, counted where they are accepted (sans-IO).

The listener counts every connection once, whichever path then serves it. A connection
over the limit is not counted and is kept by its peer address, so that its first request
(on either path) gets a 429 that says why instead of a reset.
"""

from __future__ import annotations

import collections


class SourceCounts:
    def __init__(self) -> None:
        self.open_by_source: collections.Counter[str] = collections.Counter()
        self.over: set[tuple[object, ...]] = set()  # peer addresses of uncounted connections

    def opened(self, peer: tuple[object, ...], limit: int) -> bool:
        """Count a new connection from `peer`; False (and not counted) over `limit`."""
        source = str(peer[0])
        if self.open_by_source[source] >= limit:
            self.over.add(peer)
            return False
        self.open_by_source[source] += 1
        return True

    def closed(self, peer: tuple[object, ...], counted: bool) -> None:
        if not counted:
            self.over.discard(peer)
            return
        source = str(peer[0])
        self.open_by_source[source] -= 1
        if self.open_by_source[source] <= 0:
            del self.open_by_source[source]
