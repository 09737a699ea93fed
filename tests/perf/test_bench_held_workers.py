"""bench.HeldWorkers: the cgroup files it writes (v1 and v2 layouts) and the error when it cannot hold a worker.

The hierarchies here are plain directories laid out like /sys/fs/cgroup, so the files written can
be read back; the process held is a real child, whose CPU affinity is checked. That the quota
holds a real worker to its share is checked by step 8 itself (the report's quota use) and the
harness test (tests/integration/test_bench_harness.py).
"""

import os
import subprocess
import sys

import pytest

from tests.perf import bench


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def hierarchies(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "v2", tmp_path / "v2" / "cpu"
    v1.mkdir(parents=True)
    monkeypatch.setattr(bench.HeldWorkers, "V2", v2)
    monkeypatch.setattr(bench.HeldWorkers, "V1", v1)
    return v2, v1


def test_v2_writes_cpu_max_and_pins_every_thread(hierarchies, child):
    v2, _ = hierarchies
    (v2 / "cgroup.subtree_control").write_text("cpuset cpu io memory\n")
    core = str(max(os.sched_getaffinity(0)))
    holder = bench.HeldWorkers()
    holder.hold(child.pid, core, 0.5, "2-half-w1")
    (group,) = holder.groups
    assert group.parent == v2 and group.name == f"schooldns-bench-{os.getpid()}-2-half-w1"
    assert (group / "cpu.max").read_text() == "5000 10000"
    assert (group / "cgroup.procs").read_text() == str(child.pid)
    for task in os.listdir(f"/proc/{child.pid}/task"):
        assert os.sched_getaffinity(int(task)) == {int(core)}


def test_v1_writes_quota_and_period(hierarchies, child):
    v2, v1 = hierarchies
    (v2 / "cgroup.subtree_control").write_text("memory\n")  # v2 without cpu for child groups: use v1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    holder = bench.HeldWorkers()
    holder.hold(child.pid, str(min(os.sched_getaffinity(0))), 0.5, "1-half-w0")
    (group,) = holder.groups
    assert group.parent == v1
    assert (group / "cpu.cfs_quota_us").read_text() == "5000"
    assert (group / "cpu.cfs_period_us").read_text() == "10000"
    assert (group / "cgroup.procs").read_text() == str(child.pid)


def test_no_cpu_controller_is_a_clear_error(hierarchies):
    with pytest.raises(OSError, match=r"no cgroup cpu controller for child groups under .*v2"):
        bench.HeldWorkers.hierarchy()
