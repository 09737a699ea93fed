"""The lists' compile in a child process of lower priority: the child's program, and the parent's watch for starvation.

`python -m resolver.control.compiler BLOCKLISTS_DIR STATE_DIR FINGERPRINT PRIORITY LOG_LEVEL` lowers its
own priority before it imports anything that compiles, writes `index.bin` and `index.json` into
STATE_DIR, and prints one JSON line: `{"manifest": ...}` (null when it could not write STATE_DIR)
or `{"error": "..."}`. It imports the list parsers and the index builder only: no asyncio, no
config, nothing of the server (0.15 s less of a cold start).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from resolver.errors import ResolverError

log = logging.getLogger("resolver.control.compiler")  # also as `python -m`, named __main__

NICENESS = 10  # added to the nice value of a start's compile
# A reload's compile at idle priority that gets less than this share of a core over a window is
# starved (queries keep the cores busy): it is started again at nice +10.
IDLE_WINDOW_SECONDS = 30.0
IDLE_MIN_SHARE = 0.25


class Priority(enum.Enum):
    """How a compile child yields to the server it compiles for."""

    # A start: nice +10.
    NICE = "nice"
    # A reload while serving: SCHED_IDLE. The kernel runs it only on CPU time that queries leave,
    # and a query arriving preempts it at once. Under nice +10 the compile kept the core for up to
    # a few milliseconds before the server ran: a swap of the 1M list at 30k qps on the server's
    # core gave p99 4.2-4.5 ms with nice +10 and 1.2-3.0 ms with SCHED_IDLE.
    IDLE = "idle"


def compile_in_child(
    blocklists_dir: Path, state_dir: Path, fingerprint: str, priority: Priority
) -> dict[str, Any] | None:
    """Compile in a child of lower priority: the manifest, or None if the child could not write state_dir.

    Under SCHED_IDLE the child runs only on CPU time that queries leave; on cores they keep busy
    it would never finish, and the new lists (a province's urgent addition too) would never serve.
    So a child that gets less than IDLE_MIN_SHARE of a core over IDLE_WINDOW_SECONDS is stopped
    and the compile starts again at nice +10, which the kernel gives about a tenth of a busy core.
    It is started again rather than raised in place: leaving SCHED_IDLE needs CAP_SYS_NICE or an
    RLIMIT_NICE that a service rarely has. A killed child's temporary files are swept by the next
    compile (`durable.remove_stale_temporaries`).
    """
    child = _start(blocklists_dir, state_dir, fingerprint, priority)
    if priority is Priority.IDLE:
        share = _starved_share(child, IDLE_WINDOW_SECONDS, IDLE_MIN_SHARE)
        if share is not None:
            child.kill()
            child.communicate()
            log.warning(
                "the lists' compile at idle priority had %.0f%% of a core over %gs (queries keep the "
                "cores busy); compiling again at nice +%d",
                share * 100,
                IDLE_WINDOW_SECONDS,
                NICENESS,
            )
            child = _start(blocklists_dir, state_dir, fingerprint, Priority.NICE)
    stdout, _ = child.communicate()
    try:
        outcome = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        outcome = {"error": f"compiling the lists failed (exit status {child.returncode}); see the log"}
    if "error" in outcome:
        raise ResolverError(outcome["error"])
    manifest: dict[str, Any] | None = outcome["manifest"]
    return manifest


def _start(blocklists_dir: Path, state_dir: Path, fingerprint: str, priority: Priority) -> subprocess.Popen[str]:
    # The child logs at this process's level: `--log-level warning` quiets the compile's lines too.
    level = logging.getLevelName(log.getEffectiveLevel())
    return subprocess.Popen(
        [sys.executable, "-m", log.name, str(blocklists_dir), str(state_dir), fingerprint, priority.value, level],
        stdout=subprocess.PIPE,
        text=True,
    )


def _starved_share(child: subprocess.Popen[str], window: float, least: float) -> float | None:
    """Wait for `child` to exit (None), or until it gets under `least` of a core over a window: that share.

    The child prints one short JSON line at its end (far under a pipe's buffer), so waiting
    without reading its output cannot block it.
    """
    used = _cpu_seconds(child.pid)
    while True:
        try:
            child.wait(timeout=window)
            return None
        except subprocess.TimeoutExpired:
            now = _cpu_seconds(child.pid)
            if now is None or used is None:
                return None  # gone between the wait and the read: communicate() collects it
            if (now - used) / window < least:
                return (now - used) / window
            used = now


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live child process (Linux /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str]) -> int:
    """The child: lower the priority first, then import the compiler and compile."""
    blocklists_dir, state_dir, fingerprint, priority, level = argv
    idle = Priority(priority) is Priority.IDLE and hasattr(os, "SCHED_IDLE")
    if idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(NICENESS)
    from resolver.filtering import lists

    logging.basicConfig(level=level, format="%(asctime)s compile %(levelname)s %(name)s: %(message)s")
    log.info(
        "compiling the lists at %s",
        "idle priority (SCHED_IDLE)" if idle and os.sched_getscheduler(0) == os.SCHED_IDLE else f"nice {os.nice(0):+d}",
    )
    outcome: dict[str, Any]
    try:
        manifest, image = lists.compile_to_state_dir(Path(blocklists_dir), Path(state_dir), fingerprint, log.info)
        outcome = {"manifest": manifest if image is None else None}
    except ResolverError as exc:
        outcome = {"error": str(exc)}
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
