"""Control plane: build a Snapshot from the config's files, reusing the compiled index on disk when unchanged."""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from resolver.control import compiler, config, lastgood, versions
from resolver.dataplane import pipeline
from resolver.errors import ResolverError
from resolver.filtering import domains, lists, policy, policyfile, schools
from resolver.yamlfile import ConfigError, Problem

log = logging.getLogger(__name__)


class CompileIn(enum.Enum):
    """Where changed lists are compiled (see build_snapshot)."""

    THIS_PROCESS = "this process"  # tools and tests
    CHILD = "child"  # a serving process's start: a child process at nice +10
    IDLE_CHILD = "idle child"  # a reload while serving: a child under SCHED_IDLE (see compiler.Priority)


def build_snapshot(
    cfg: config.Config, generation: int, compile_in: CompileIn = CompileIn.THIS_PROCESS
) -> pipeline.Snapshot:
    """Load and validate policies and lists into a new Snapshot; raise ConfigError on any problem.

    Runs off the event loop (asyncio.to_thread) or before it starts.  Nothing here touches
    the live snapshot: the caller installs the result with one assignment.  Compiled in a
    child process, changed lists never make a serving process's event loop compete with a
    million-entry compile for the GIL. With `sync:` it reads the current synced version.
    """
    cfg = versions.served_config(cfg)
    sources = lists.load_sources(cfg.blocklists_dir)
    policies = policyfile.load_policies(cfg.policies_dir, sources.categories)
    default_school = find_default_school(cfg, policies)  # before a compile that would be wasted
    updated_at = lists_updated_at(cfg.blocklists_dir, sources)  # before the compile reads them
    index, manifest = load_index(cfg, sources, compile_in)
    return _assemble(
        generation, policies, default_school, index, tuple(sources.categories), manifest["entry_counts"], updated_at
    )


def build_serving_snapshot(cfg: config.Config, generation: int, reload: bool = False) -> pipeline.Snapshot:
    """`build_snapshot` for a serving process: compiled in a child, then saved as the last good state.

    A `reload` (queries are being answered) compiles in an idle-priority child.
    """
    cfg = versions.served_config(cfg)
    files_before = lastgood.policy_files(cfg.policies_dir)
    snapshot = build_snapshot(cfg, generation, CompileIn.IDLE_CHILD if reload else CompileIn.CHILD)
    lastgood.save(
        cfg.state_dir, cfg.policies_dir, files_before, snapshot.index, snapshot.categories, snapshot.entry_counts
    )
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
            policies = policyfile.load_policies(saved.policies_dir, saved.categories)
            snapshot = _assemble(
                generation,
                policies,
                find_default_school(cfg, policies),
                domains.DomainIndex.load(saved.index_path),
                saved.categories,
                saved.entry_counts,
                # The saved index was compiled after its lists last changed: they are at least this old.
                os.stat(saved.index_path).st_mtime,
                from_last_good=True,
            )
    except (ResolverError, OSError) as exc:
        raise ResolverError(
            f"{problem}\n(the last good copy in {cfg.state_dir / lastgood.LINK} cannot be used either: {exc})"
        ) from None
    if saved is None:
        raise problem
    log.error(
        "the policies or lists do not build:\n%s\nSERVING THE LAST GOOD policies and lists, saved %s "
        "in %s. Fix the files: the next reload that builds replaces them.",
        problem,
        time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(saved.saved_at)),
        saved.directory,
    )
    return snapshot


def find_default_school(cfg: config.Config, policies: policy.Policies) -> policy.SchoolPolicy | None:
    """The school config.yaml's `default_school` names (None without one); ConfigError if no policy has it."""
    if cfg.default_school is None:
        return None
    school = policies.school(cfg.default_school)
    if school is None:
        raise ConfigError(
            [
                Problem(
                    cfg.file,
                    cfg.default_school_line,
                    "default_school",
                    f"no school '{cfg.default_school}' in {cfg.policies_dir}",
                )
            ]
        )
    return school


def _assemble(
    generation: int,
    policies: policy.Policies,
    default_school: policy.SchoolPolicy | None,
    index: domains.DomainIndex,
    categories: tuple[str, ...],
    entry_counts: dict[str, int],
    lists_updated_at: float,
    from_last_good: bool = False,
) -> pipeline.Snapshot:
    return pipeline.Snapshot(
        generation=generation,
        index=index,
        directory=schools.SchoolDirectory.build(policies.networks()),
        default_school=default_school,
        province=policies.province,
        policies=policies,
        categories=categories,
        entry_counts=dict(entry_counts),
        loaded_at=time.time(),
        from_last_good=from_last_good,
        lists_updated_at=lists_updated_at,
    )


def lists_updated_at(blocklists_dir: Path, sources: lists.Sources) -> float:
    """When the lists last changed: the newest mtime of sources.yaml and the list files it names (0: none)."""
    newest = 0.0
    for path in [blocklists_dir / lists.SOURCES_FILE, *sources.files()]:
        with contextlib.suppress(OSError):  # a missing file is the compile's error to report
            newest = max(newest, path.stat().st_mtime)
    return newest


def sources_fingerprint(blocklists_dir: Path, sources: lists.Sources) -> str:
    """Changes whenever sources.yaml or any list file it names changes (size or mtime).

    Files are named relative to blocklists_dir: a synced version has a directory of its own, and
    the unchanged list files it links from the version before must not cost a compile.
    """
    digest = hashlib.sha256(f"index-format-{domains.FORMAT_VERSION}\n".encode())
    for path in [blocklists_dir / lists.SOURCES_FILE, *sources.files()]:
        name = path.relative_to(blocklists_dir)
        try:
            stat = path.stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest()


def load_index(
    cfg: config.Config, sources: lists.Sources, compile_in: CompileIn = CompileIn.THIS_PROCESS
) -> tuple[domains.DomainIndex, dict[str, Any]]:
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
    written = None
    if compile_in is not CompileIn.THIS_PROCESS:
        priority = compiler.Priority.IDLE if compile_in is CompileIn.IDLE_CHILD else compiler.Priority.NICE
        written = compiler.compile_in_child(cfg.blocklists_dir, cfg.state_dir, fingerprint, priority)
    if written is not None:
        manifest, image = written, None
    else:
        manifest, image = lists.compile_to_state_dir(cfg.blocklists_dir, cfg.state_dir, fingerprint, log.info)
    index = domains.DomainIndex.load(index_path) if image is None else domains.DomainIndex.from_bytes(image)
    log.info("compiled %d list entries in %.2fs", sum(manifest["entry_counts"].values()), time.monotonic() - started)
    return index, manifest


def files_signature(cfg: config.Config) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of every policy and list file: changes when an admin edits one."""
    out = []
    for top in (cfg.policies_dir, cfg.blocklists_dir):
        for directory, subdirs, files in os.walk(top):
            # Dot-names are editors' swap files, our own temporary files and version control (.git).
            subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                out.append((path, stat.st_size, stat.st_mtime_ns))
    return tuple(out)
