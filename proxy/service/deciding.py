"""One request's decision for both fronts: the admission core, and the one piece of IO it
asks for in between (resolving a name, once). The adapters call this inside their
fail-closed boundary, so a rule, a throttle or a log field is written once."""

from __future__ import annotations

from proxy.core.admission import Admission, Ask, Outcome, Refuse, Resolve
from proxy.effects.resolver import ResolveError
from proxy.service.runtime import Runtime


async def decide(admission: Admission, runtime: Runtime, ask: Ask, now: float) -> Outcome:
    outcome = admission.begin(runtime, ask, now)
    if not isinstance(outcome, Resolve):
        return outcome
    try:
        addresses = await runtime.resolver.resolve(outcome.name, outcome.port)
    except ResolveError as e:
        return Refuse(502, str(e), "dns", outcome.user)
    return admission.resolved(runtime, outcome, addresses, now)
