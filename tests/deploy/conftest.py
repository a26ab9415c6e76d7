"""Fixtures for the deployment tests: the repository's paths, and the integration harness.

The harness (tests/integration/harness.py) and its fixtures are reused, not copied: this
folder puts tests/integration on sys.path and loads that folder's conftest under another
module name, so its fixtures (origins, proxyd_factory, client_env, ...) and its failure
report hook (each proxyd's log attached to a failed test) apply here too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))


def _load_integration_conftest() -> object:
    spec = importlib.util.spec_from_file_location(
        "proxyd_integration_conftest", _INTEGRATION / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_integration = _load_integration_conftest()
origins = _integration.origins  # type: ignore[attr-defined]
client_home = _integration.client_home  # type: ignore[attr-defined]
client_env = _integration.client_env  # type: ignore[attr-defined]
proxyd_factory = _integration.proxyd_factory  # type: ignore[attr-defined]
_fresh_hit_counts = _integration._fresh_hit_counts  # type: ignore[attr-defined]
pytest_runtest_makereport = _integration.pytest_runtest_makereport  # type: ignore[attr-defined]
