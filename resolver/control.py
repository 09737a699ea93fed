"""Control plane: build a Snapshot from the config's files, reusing the compiled index on disk when unchanged."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from resolver import config, domains, lastgood, lists, pipeline, policy, schools
from resolver.errors import ResolverError
from resolver.yamlfile import ConfigError, Problem

log = logging.getLogger(__name__)

COMPILE_NICENESS = 10  # added to the nice value of a start's compile process
# A reload's compile at idle priority that gets less than this share of a core over a window is
# starved (queries keep the cores busy): it is started again at nice +10 (see _compile_in_child).
COMPILE_IDLE_WINDOW_SECONDS = 30.0
COMPILE_IDLE_MIN_SHARE = 0.25


class CompileIn(enum.Enum):
    """Where changed lists are compiled (see build_snapshot)."""

    THIS_PROCESS = "this process"  # tools and tests
    CHILD = "child"  # a serving process's start: a child process at nice +10
    IDLE_CHILD = "idle child"  # a reload while serving: a child under SCHED_IDLE (see _CHILD_PROGRAM)


def build_snapshot(cfg: config.Config, generation: int,
                   compile_in: CompileIn = CompileIn.THIS_PROCESS) -> pipeline.Snapshot:
    """Load and validate policies and lists into a new Snapshot; raise ConfigError on any problem.

    Runs off the event loop (asyncio.to_thread) or before it starts.  Nothing here touches
    the live snapshot: the caller installs the result with one assignment.  Compiled in a
    child process, changed lists never make a serving process's event loop compete with a
    million-entry compile for the GIL.
    """
    sources = lists.load_sources(cfg.blocklists_dir)
    policies = policy.load_policies(cfg.policies_dir, sources.categories)
    default_school = _default_school(cfg, policies)  # before a compile that would be wasted
    index, manifest = load_index(cfg, sources, compile_in)
    return _assemble(generation, policies, default_school, index, tuple(sources.categories),
                     manifest["entry_counts"])


def build_serving_snapshot(cfg: config.Config, generation: int, reload: bool = False) -> pipeline.Snapshot:
    """`build_snapshot` for a serving process: compiled in a child, then saved as the last good state.

    A `reload` (queries are being answered) compiles in an idle-priority child.
    """
    files_before = lastgood.policy_files(cfg.policies_dir)
    snapshot = build_snapshot(cfg, generation, CompileIn.IDLE_CHILD if reload else CompileIn.CHILD)
    lastgood.save(cfg.state_dir, cfg.policies_dir, files_before, snapshot.index, snapshot.categories,
                  snapshot.entry_counts)
    return snapshot


def start_snapshot(cfg: config.Config, generation: int) -> pipeline.Snapshot:
    """A serving process's first snapshot: from the files or, when they fail to build, from the last good state.

    A school must not lose DNS because a file was broken while the server was down (an edit that
    a reload rejected, then a power cut): it starts on the policies and lists that last built, and
    says so in the log, `/status` and `schooldns_serving_last_good`. Without a last good copy the
    start fails as before, with every problem.
    """
    try:
        return build_serving_snapshot(cfg, generation)
    except (ResolverError, OSError) as exc:
        problem = exc
    try:
        saved = lastgood.locate(cfg.state_dir)
        if saved is not None:
            policies = policy.load_policies(saved.policies_dir, saved.categories)
            snapshot = _assemble(generation, policies, _default_school(cfg, policies),
                                 domains.DomainIndex.load(saved.index_path), saved.categories,
                                 saved.entry_counts, from_last_good=True)
    except (ResolverError, OSError) as exc:
        raise ResolverError(f"{problem}\n(the last good copy in {cfg.state_dir / lastgood.LINK} "
                            f"cannot be used either: {exc})") from None
    if saved is None:
        raise problem
    log.error("the policies or lists do not build:\n%s\nSERVING THE LAST GOOD policies and lists, saved %s "
              "in %s. Fix the files: the next reload that builds replaces them.", problem,
              time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(saved.saved_at)), saved.directory)
    return snapshot


def _default_school(cfg: config.Config, policies: policy.Policies) -> policy.SchoolPolicy | None:
    if cfg.default_school is None:
        return None
    school = policies.school(cfg.default_school)
    if school is None:
        raise ConfigError([Problem(cfg.file, 1, "default_school",
                                   f"no school '{cfg.default_school}' in {cfg.policies_dir}")])
    return school


def _assemble(generation: int, policies: policy.Policies, default_school: policy.SchoolPolicy | None,
              index: domains.DomainIndex, categories: tuple[str, ...], entry_counts: dict[str, int],
              from_last_good: bool = False) -> pipeline.Snapshot:
    return pipeline.Snapshot(
        generation=generation, index=index, directory=schools.SchoolDirectory.build(policies.networks()),
        default_school=default_school, province=policies.province, policies=policies,
        categories=categories, entry_counts=dict(entry_counts), loaded_at=time.time(),
        from_last_good=from_last_good)


def sources_fingerprint(blocklists_dir: Path, sources: lists.Sources) -> str:
    """Changes whenever sources.yaml or any list file it names changes (size or mtime)."""
    digest = hashlib.sha256(f"index-format-{domains.FORMAT_VERSION}\n".encode())
    for path in [blocklists_dir / lists.SOURCES_FILE, *sources.files()]:
        try:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def load_index(cfg: config.Config, sources: lists.Sources,
               compile_in: CompileIn = CompileIn.THIS_PROCESS) -> tuple[domains.DomainIndex, dict]:
    """The memory-mapped compiled index for these sources: reused from state_dir, or compiled now.

    Worker processes map the same file read-only, so its pages are shared, not copied.
    """
    fingerprint = sources_fingerprint(cfg.blocklists_dir, sources)
    index_path = cfg.state_dir / lists.INDEX_FILE
    manifest_path = cfg.state_dir / lists.MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            index = domains.DomainIndex.load(index_path)
            log.info("using compiled lists from %s (%d entries)", index_path, index.entry_count)
            return index, manifest
    except (OSError, ValueError, domains.IndexFormatError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("compiled lists in %s unusable (%s); compiling again", cfg.state_dir, exc)
    started = time.monotonic()
    # A child that could not write state_dir cannot hand its image over: compile here instead.
    written = None if compile_in is CompileIn.THIS_PROCESS else _compile_in_child(cfg, fingerprint, compile_in)
    if written is not None:
        manifest, image = written, None
    else:
        manifest, image = lists.compile_to_state_dir(cfg.blocklists_dir, cfg.state_dir, fingerprint, log.info)
    index = domains.DomainIndex.load(index_path) if image is None else domains.DomainIndex.from_bytes(image)
    log.info("compiled %d list entries in %.2fs", sum(manifest["entry_counts"].values()),
             time.monotonic() - started)
    return index, manifest


# Runs in a fresh interpreter that lowers its priority before importing anything. At a start it
# takes nice +10. On a reload it takes SCHED_IDLE: the kernel then runs it only on CPU time that
# queries leave, and a query arriving preempts it at once. Under nice +10 the compile kept the
# core for up to a few milliseconds before the server ran: a swap of the 1M list at 30k qps on
# the server's core gave p99 4.2-4.5 ms with nice +10 and 1.2-3.0 ms with SCHED_IDLE (bench.py,
# alternated). Cores kept busy by queries alone would starve it: _compile_in_child then starts it
# again at nice +10. It imports only what compiling needs (resolver.lists: no
# asyncio, no config), 0.15 s less of a cold start. Its log lines keep the name resolver.control.
_CHILD_PROGRAM = f"""
import os, sys
idle = sys.argv[4] == "{CompileIn.IDLE_CHILD.value}" and hasattr(os, "SCHED_IDLE")
if idle:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
else:
    os.nice({COMPILE_NICENESS})
import json, logging
from pathlib import Path
from resolver import errors, lists
logging.basicConfig(level=logging.INFO, format="%(asctime)s compile %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("resolver.control")
log.info("compiling the lists at %s", "idle priority (SCHED_IDLE)"
         if idle and os.sched_getscheduler(0) == os.SCHED_IDLE else f"nice {{os.nice(0):+d}}")
try:
    manifest, image = lists.compile_to_state_dir(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], log.info)
    print(json.dumps({{"manifest": manifest if image is None else None}}))
except errors.ResolverError as exc:
    print(json.dumps({{"error": str(exc)}}))
"""


def _compile_in_child(cfg: config.Config, fingerprint: str, compile_in: CompileIn) -> dict | None:
    """lists.compile_to_state_dir in a child process of lower priority: the manifest, or None if it could not write.

    Under SCHED_IDLE the child runs only on CPU time that queries leave; on cores they keep
    busy it would never finish, and the new lists (a province's urgent addition too) would never
    serve. So a child that gets less than COMPILE_IDLE_MIN_SHARE of a core over a window of
    COMPILE_IDLE_WINDOW_SECONDS is stopped and the compile starts again at nice +10, which the
    kernel gives about a tenth of a busy core. It is started again rather than raised in place:
    leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE that a service rarely has.
    """
    child = _start_compile_child(cfg, fingerprint, compile_in)
    if compile_in is CompileIn.IDLE_CHILD:
        share = _starved_share(child, COMPILE_IDLE_WINDOW_SECONDS, COMPILE_IDLE_MIN_SHARE)
        if share is not None:
            child.kill()
            child.communicate()  # reaped: the next compile sweeps any write it was in the middle of
            log.warning("the lists' compile at idle priority had %.0f%% of a core over %gs (queries keep the "
                        "cores busy); compiling again at nice +%d", share * 100, COMPILE_IDLE_WINDOW_SECONDS,
                        COMPILE_NICENESS)
            child = _start_compile_child(cfg, fingerprint, CompileIn.CHILD)
    stdout, _ = child.communicate()
    try:
        outcome = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ResolverError(f"compiling the lists failed (exit status {child.returncode}); see the log") from None
    if "error" in outcome:
        raise ResolverError(outcome["error"])
    return outcome["manifest"]


def _start_compile_child(cfg: config.Config, fingerprint: str, compile_in: CompileIn) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD_PROGRAM, str(cfg.blocklists_dir), str(cfg.state_dir),
                             fingerprint, compile_in.value], stdout=subprocess.PIPE, text=True)


def _starved_share(child: subprocess.Popen, window: float, least: float) -> float | None:
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
            if now is None:
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


def files_signature(cfg: config.Config) -> tuple:
    """Names, sizes and mtimes of every policy and list file: changes when an admin edits one."""
    out = []
    for top in (cfg.policies_dir, cfg.blocklists_dir):
        for directory, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                if name.startswith("."):
                    continue  # editors' swap files and our own temp files
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                out.append((path, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def entry_counts(snapshot: pipeline.Snapshot) -> dict[str, int]:
    return dict(snapshot.entry_counts)


def check(cfg: config.Config) -> list[str]:
    """`schooldns check`: everything a reload would do; raises ConfigError; returns a summary."""
    sources = lists.load_sources(cfg.blocklists_dir)
    policies = policy.load_policies(cfg.policies_dir, sources.categories)
    compiled = lists.compile_lists(cfg.blocklists_dir)
    if cfg.default_school is not None and policies.school(cfg.default_school) is None:
        raise ConfigError([Problem(cfg.file, 1, "default_school", f"no school '{cfg.default_school}'")])
    schools.SchoolDirectory.build(policies.networks())
    out = [f"{len(policies.schools)} schools, {len(compiled.categories)} categories, "
           f"{sum(compiled.entry_counts.values())} list entries"]
    for report in compiled.reports:
        out.append(f"  {report.file}: {report.entries} entries, {report.skipped} skipped, "
                   f"{report.invalid} invalid")
    return out


def explain(snapshot: pipeline.Snapshot, school_id: str, name: str, now_epoch_seconds: float,
            blocklists_dir: Path | None = None) -> list[str]:
    """`schooldns explain`: the decision for one school and name, with every reason.

    With `blocklists_dir`, each matching list entry is traced to its file and line.
    """
    school = snapshot.policies.school(school_id)
    if school is None:
        known = ", ".join(s.id for s in snapshot.policies.schools)
        raise ConfigError([Problem(str(snapshot.province.file), 1, "", f"no school '{school_id}' (known: {known})")])
    normalized = policy.normalize_name(name)
    mask = snapshot.index.lookup(normalized)
    out = policy.explain(school, normalized, mask, now_epoch_seconds).lines()
    if normalized != name.lower().rstrip("."):
        out.insert(2, f"input: {name}")
    sources = lists.load_sources(blocklists_dir) if blocklists_dir is not None else None
    for match in snapshot.index.explain(normalized):
        categories = [c for i, c in enumerate(snapshot.categories) if match.bits >> i & 1]
        out.append(f"listed: {match.name} ({match.kind}, {match.match}) in {', '.join(categories)}")
        if sources is not None:
            out.extend(f"  from {where}" for category in categories
                       for where in lists.find_entry(sources, category, match.name))
    return out
