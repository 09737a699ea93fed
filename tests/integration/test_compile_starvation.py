"""A reload's compile at idle priority on a core kept busy is started again at nice +10; one that runs is left alone.

Real processes on a real core: the test pins its own thread (which the compile child inherits)
and a busy loop at normal priority to one core, so the SCHED_IDLE child gets almost no CPU time,
as behind a worker at full load.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resolver.control import compiler, config, snapshots
from resolver.filtering import lists
from tests.support.harness import write_site


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.load_config(write_site(tmp_path, ["127.0.0.1:53"]))


@pytest.fixture
def one_core():
    """Pin this thread (and so the children it starts) to one core; restore afterwards."""
    before = os.sched_getaffinity(0)
    core = max(before)
    os.sched_setaffinity(0, {core})
    yield core
    os.sched_setaffinity(0, before)


def compile_at_idle_priority(cfg: config.Config):
    sources = lists.load_sources(cfg.blocklists_dir)
    return snapshots.load_index(cfg, sources, snapshots.CompileIn.IDLE_CHILD)


def test_a_starved_compile_is_started_again_at_nice_10(cfg, one_core, monkeypatch, caplog, capfd):
    monkeypatch.setattr(compiler, "IDLE_WINDOW_SECONDS", 0.5)
    caplog.set_level(logging.INFO, compiler.log.name)  # the children log at their parent's level
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # on the same core, at nice 0
    try:
        index, manifest = compile_at_idle_priority(cfg)
    finally:
        busy.kill()
        busy.wait()

    assert index.entry_count == sum(manifest["entry_counts"].values()) > 0
    warnings = [r.getMessage() for r in caplog.records if "compiling again" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "the lists' compile at idle priority had" in warnings[0] and "over 0.5s" in warnings[0]
    assert warnings[0].endswith("compiling again at nice +10")
    # the starved child may not even get as far as its first log line; the second one finishes
    children = [
        line.split("compiling the lists at ")[1]
        for line in capfd.readouterr().err.splitlines()
        if "compiling the lists at" in line
    ]
    assert children in (["nice +10"], ["idle priority (SCHED_IDLE)", "nice +10"]), children
    assert sorted(p.name for p in cfg.state_dir.iterdir()) == sorted([lists.INDEX_FILE, lists.MANIFEST_FILE])


def test_a_compile_that_finishes_within_its_window_stays_at_idle_priority(cfg, caplog, capfd):
    # The default window (30 s) is far longer than this compile: it is never judged, whatever
    # share of a core a loaded machine gives it, and is never started again.
    (cfg.blocklists_dir / "adult.txt").write_text("".join(f"site{n}.example.org\n" for n in range(10_000)))
    caplog.set_level(logging.INFO, compiler.log.name)

    index, manifest = compile_at_idle_priority(cfg)

    assert manifest["entry_counts"]["adult"] == 10_000 and index.entry_count >= 10_000
    assert "compiling again" not in caplog.text
    children = [line for line in capfd.readouterr().err.splitlines() if "compiling the lists at" in line]
    assert [line.split("compiling the lists at ")[1] for line in children] == ["idle priority (SCHED_IDLE)"]
