"""The container's HEALTHCHECK: GET the admin listener's /healthz; exit 0 if it says 200.

python:3.13-slim has no curl or wget, and the image should not grow one for a probe, so
this is the standard library only. It talks to the admin listener directly: urllib's
default opener would honour an HTTP_PROXY set in the container's environment.

Usage: healthcheck.py [URL]   (default http://127.0.0.1:9128/healthz)
Exit: 0 healthy, 1 anything else (Docker's convention), with one line saying why.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9128/healthz"
TIMEOUT = 3.0  # Docker's HEALTHCHECK --timeout is 5 s: answer before it gives up


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    if not url.startswith("http://"):
        print(f"healthcheck: not an http:// URL: {url!r}", file=sys.stderr)
        return 1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            status = int(response.status)
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, ValueError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
