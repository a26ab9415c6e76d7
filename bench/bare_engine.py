"""The bare engine: a mitmproxy master doing plain proxying, and nothing of proxyd's.

    python [-O] bench/bare_engine.py HOST PORT

What proxyd's own code costs shows as proxyd ÷ this, on the same mitmproxy and Python.
It has what plain proxying needs and no more, built the way proxy/master.py builds
proxyd's master:

- mitmproxy's Proxyserver addon, regular mode on HOST:PORT, with proxyd's options
  (connection_strategy eager, http2 off, stream_large_bodies 1m);
- a `next_layer` choice equivalent to proxyd's: the client's connection is an HTTP
  proxy layer (regular mode, plain text); inside a CONNECT the bytes are passed through
  (mitmproxy's TCPLayer with ignore=True: no flow, no hooks, no TLS interception).

No auth, no policy, no access log, no metrics, no header limit, none of mitmproxy's
other default addons. Like proxyd (proxy/engine.py) it imports `mitmproxy.addons`
without that package's `__init__` (which imports every default addon), so idle RSS
compares like with like. Independent of proxyd's code, so it also runs against an
older checkout's mitmproxy. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import types


def _register_addons_package_only() -> None:
    spec = importlib.util.find_spec("mitmproxy")
    if spec is None or spec.origin is None or "mitmproxy.addons" in sys.modules:
        return
    package = types.ModuleType("mitmproxy.addons")
    package.__path__ = [os.path.join(os.path.dirname(spec.origin), "addons")]
    sys.modules["mitmproxy.addons"] = package


_register_addons_package_only()

from mitmproxy import options  # noqa: E402
from mitmproxy.addons.proxyserver import Proxyserver  # noqa: E402
from mitmproxy.master import Master  # noqa: E402
from mitmproxy.proxy import layer, layers  # noqa: E402
from mitmproxy.proxy.layers.http import HTTPMode  # noqa: E402
from mitmproxy.proxy.mode_specs import RegularMode  # noqa: E402


class PlainLayers:
    """mitmproxy's NextLayer addon cut down to proxyd's two choices (hence the name)."""

    name = "nextlayer"

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        context = nextlayer.context
        if len(context.layers) == 1 and isinstance(context.client.proxy_mode, RegularMode):
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.regular)
        else:
            nextlayer.layer = layers.TCPLayer(context, ignore=True)


async def serve(host: str, port: int) -> None:
    opts = options.Options()
    master = Master(opts)
    master.addons.add(Proxyserver(), PlainLayers())
    opts.update(
        mode=["regular"],
        listen_host=host,
        listen_port=port,
        connection_strategy="eager",
        http2=False,
        stream_large_bodies="1m",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
