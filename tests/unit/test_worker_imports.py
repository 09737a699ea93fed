"""A spawned worker process imports only the data plane: no admin API, aiohttp or prometheus_client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Only the supervisor (or the one process of `workers: 1`) serves the admin API. Each of these
# costs every worker process megabytes of memory it never uses.
ADMIN_ONLY = ("aiohttp", "prometheus_client", "resolver.admin", "resolver.exposition", "resolver.app")


def _modules_after_import(*modules: str) -> set[str]:
    """The sys.modules of a fresh interpreter that imported `modules`, as a spawned child would."""
    code = "import importlib, json, sys\n" + "".join(
        f"importlib.import_module({m!r})\n" for m in modules) + "print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    return set(json.loads(result.stdout))


# A worker is spawned with resolver.worker.spawned_main as its target; the child re-imports the
# parent's main module (resolver.cli, the `schooldns` console script's module) before unpickling it.
@pytest.mark.parametrize("modules", [("resolver.worker",), ("resolver.cli",), ("resolver.cli", "resolver.worker")])
def test_a_worker_process_loads_no_admin_modules(modules):
    loaded = _modules_after_import(*modules)
    assert set(modules) <= loaded
    assert not [name for name in ADMIN_ONLY if name in loaded]


def test_the_check_sees_what_the_supervisor_loads():
    loaded = _modules_after_import("resolver.app")
    assert {"aiohttp", "prometheus_client", "resolver.admin", "resolver.exposition", "resolver.worker"} <= loaded
