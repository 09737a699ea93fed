"""A worker carries only the data plane (no admin API, aiohttp, prometheus_client); the compile child only the lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Only the supervisor (or the one process of `workers: 1`) serves the admin API. Each of these
# costs every worker process megabytes of memory it never uses.
ADMIN_ONLY = (
    "aiohttp",
    "prometheus_client",
    "resolver.operations.admin",
    "resolver.operations.exposition",
    "resolver.processes.app",
)
# Only the supervisor (or the one process) of an instance with `sync:` or a hub with `publish:`
# loads the TUF libraries, when it starts.
SYNC_ONLY = ("tuf", "urllib3", "securesystemslib", "resolver.control.sync", "resolver.control.bundle")


def _modules_after_import(*modules: str) -> set[str]:
    """The sys.modules of a fresh interpreter that imported `modules`, as a spawned child would."""
    code = (
        "import importlib, json, sys\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in modules)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout))


# Workers are forked by the spawner (resolver.processes.spawner). The first spawner is forked from
# `schooldns serve` before the admin API's libraries are imported (checked on the running
# processes in tests/integration/test_serve_process.py); a replacement is a fresh interpreter
# whose program imports resolver.processes.spawner. Either way the workers carry the data plane only.
@pytest.mark.parametrize("module", ["resolver.processes.worker", "resolver.processes.spawner"])
def test_a_worker_process_loads_no_admin_modules(module):
    loaded = _modules_after_import(module)
    assert module in loaded
    assert not [name for name in (*ADMIN_ONLY, *SYNC_ONLY) if name in loaded]
    assert "multiprocessing.resource_tracker" not in loaded


# app.start_admin imports the admin API in a thread once DNS answers: importing aiohttp and
# prometheus_client first delayed the first answer of a warm start by ~0.5 s (docs/performance-history.md).
def test_the_serving_process_imports_the_admin_api_only_after_dns_serves():
    loaded = _modules_after_import("resolver.processes.app")
    assert "resolver.processes.worker" in loaded
    assert not [name for name in (*ADMIN_ONLY, *SYNC_ONLY) if name in loaded and name != "resolver.processes.app"]


# Only the supervisor of `workers: N` and its workers talk over multiprocessing's connections
# (`schooldns serve` imports the spawner before it forks it, so the workers share those pages).
def test_one_serving_process_of_workers_1_loads_no_multiprocessing():
    loaded = _modules_after_import("resolver.processes.cli", "resolver.processes.app", "resolver.operations.admin")
    assert not [name for name in loaded if name.partition(".")[0] == "multiprocessing"]
    assert "multiprocessing.connection" in _modules_after_import("resolver.processes.spawner")


def test_the_check_sees_what_the_admin_api_loads():
    loaded = _modules_after_import("resolver.operations.admin")
    assert {"aiohttp", "prometheus_client", "resolver.operations.exposition"} <= loaded


# The compile child (`python -m resolver.control.compiler`) runs at every cold start and list
# change: it needs the list parsers and the index builder, not the server's event loop or its config.
def test_the_compile_child_loads_neither_asyncio_nor_the_server(tmp_path):
    from resolver.filtering import lists

    blocklists = tmp_path / "blocklists"
    (blocklists / "adult").mkdir(parents=True)
    (blocklists / "adult" / "a.txt").write_text("a.example\nb.example\n")
    (blocklists / lists.SOURCES_FILE).write_text(
        "categories:\n  adult:\n    description: Test.\n    sources:\n      - {file: adult/a.txt, format: domains}\n"
    )
    program = (
        "import json, runpy, sys; sys.argv[0] = 'compiler'\n"
        "try:\n    runpy.run_module('resolver.control.compiler', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(blocklists), str(tmp_path / "state"), "fp", "nice", "INFO"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    manifest_line, modules_line = result.stdout.strip().splitlines()[-2:]
    assert json.loads(manifest_line)["manifest"]["entry_counts"] == {"adult": 2}
    loaded = set(json.loads(modules_line))
    assert "resolver.filtering.lists" in loaded
    assert not [
        name
        for name in ("asyncio", "resolver.control.config", "resolver.control.snapshots", "resolver.dataplane.pipeline")
        if name in loaded
    ]


def test_the_admin_api_and_the_composition_root_load_no_tuf_without_sync_or_publish():
    # 0.1-0.2 s of imports and megabytes that a server without `sync:` or `publish:` never uses.
    loaded = _modules_after_import("resolver.operations.admin", "resolver.processes.app")
    assert not [name for name in SYNC_ONLY if name in loaded]
