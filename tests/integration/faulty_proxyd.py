"""`proxyd` with one or more locks broken on purpose, for the fail-closed tests.

    python faulty_proxyd.py FAULT[,FAULT...] serve --config ...

Each fault stands for a bug proxyd might one day have; the tests prove that the other
lock still refuses. Nothing here is importable from proxyd itself.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from typing import Any

from proxy.cli.main import main
from proxy.core import admission
from proxy.core.addresses import canonical_ip
from proxy.core.firstbytes import Path
from proxy.engine import addon, guard
from proxy.front import tunnel


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("injected fault")


async def _raise_async(*_args: Any, **_kwargs: Any) -> None:
    raise RuntimeError("injected fault")


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _patch(*changes: tuple[type, str, Any]) -> Callable[[], None]:
    def apply() -> None:
        for cls, name, value in changes:
            setattr(cls, name, value)

    return apply


_begin = admission.Admission.begin


def _admit_every_connect(self: Any, runtime: Any, ask: Any, now: float) -> Any:
    """A core that admits every CONNECT to a literal address, credentials or not."""
    if not ask.is_connect:
        return _begin(self, runtime, ask, now)
    host, port = admission.Admission._target(ask)
    address = canonical_ip(ipaddress.ip_address(host))
    return admission.Admit(ask.peer, None, None, (address,), port, f"{host}:{port}")


FAULTS: dict[str, Callable[[], None]] = {
    # A bug inside the admission core: the boundary must turn it into a 500.
    "core-raises": _patch((admission.Admission, "begin", _raise)),
    # A bug outside the boundary: the gate's hooks raise before deciding anything, and
    # mitmproxy logs it and carries on with the flow. Only the guard is left.
    "gate-raises": _patch(
        (addon.ProxydAddon, "requestheaders", _raise_async),
        (addon.ProxydAddon, "http_connect", _raise_async),
    ),
    # The guard's per-request check broken: only server_connect and next_layer are left.
    "guard-check-raises": _patch((guard.EngineGuard, "_check", _raise)),
    # The guard's connection check gone: only next_layer is left for tunnels.
    "guard-connect-off": _patch((guard.EngineGuard, "server_connect", _nothing)),
    # The front's dispatch broken: every connection, CONNECTs included, goes to the engine,
    # whose own locks must then hold.
    "front-off": _patch((tunnel, "classify", lambda first: Path.ENGINE)),
    # The front's core admits every CONNECT: only its second lock (the policy) is left.
    "front-core-admits": _patch((admission.Admission, "begin", _admit_every_connect)),
    # The front fails outside its boundary: the connection must close, unanswered.
    "front-raises": _patch((tunnel.TunnelFront, "_connect", _raise_async)),
    # The whole guard gone: only the gate is left.
    "guard-off": _patch(
        (guard.EngineGuard, "_check", _nothing), (guard.EngineGuard, "server_connect", _nothing)
    ),
}


if __name__ == "__main__":
    for fault in sys.argv[1].split(","):
        FAULTS[fault]()
    sys.exit(main(sys.argv[2:]))
