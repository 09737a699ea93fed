"""The verified versions of the hub's lists and policies in state_dir/sync, and the `current` link a build reads."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from resolver import durable
from resolver.control import config
from resolver.errors import ResolverError

# In state_dir/sync (written by resolver.control.sync, read by every build of an instance with `sync:`):
#   current              symlink to the version being served, swapped in one rename
#   versions/<N>-<sha>/  bundle.json (the hub's manifest), lists/ and policies/ as the hub published them
#   metadata/            the TUF client's verified metadata (root history, timestamp, snapshot, targets)
#   .staging-<pid>/      a download in progress (its files are verified before it becomes a version)
SYNC_DIR = "sync"
CURRENT = "current"
VERSIONS = "versions"
LISTS = "lists"  # the target paths' first part, and the directories of a version
POLICIES = "policies"
MANIFEST = "bundle.json"


class NotSyncedError(ResolverError):
    """An instance with `sync:` has no verified version of the hub's lists and policies on disk."""


def sync_dir(state_dir: Path) -> Path:
    return state_dir / SYNC_DIR


def current(state_dir: Path) -> Path | None:
    """The directory of the version being served (the link resolved once), None before the first sync."""
    link = sync_dir(state_dir) / CURRENT
    if not os.path.lexists(link):
        return None
    directory = link.resolve()
    return directory if directory.is_dir() else None


def version_config(cfg: config.Config, directory: Path) -> config.Config:
    """cfg reading its policies and lists from a synced version's directory (and no longer syncing)."""
    return dataclasses.replace(cfg, sync=None, policies_dir=directory / POLICIES, blocklists_dir=directory / LISTS)


def served_config(cfg: config.Config) -> config.Config:
    """The config a build reads: cfg itself, or with `sync:` the current synced version's directories.

    The link is resolved here, once per build, so that a build never mixes the files of two
    versions when the sync switches the link while it reads.
    """
    if cfg.sync is None:
        return cfg
    directory = current(cfg.state_dir)
    if directory is None:
        raise NotSyncedError(
            f"no verified version of the lists and policies from {cfg.sync.repository} in {sync_dir(cfg.state_dir)} yet"
        )
    return version_config(cfg, directory)


def switch(state_dir: Path, directory: Path) -> Path | None:
    """Point `current` at `directory` in one rename; returns the directory it pointed at before."""
    link = sync_dir(state_dir) / CURRENT
    before = current(state_dir)
    temp = durable.temporary_path(link, os.getpid())
    temp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(directory, link.parent), temp)
    try:
        os.replace(temp, link)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    durable.sync_directory(link.parent)
    return before


def prune(state_dir: Path, keep: tuple[Path | None, ...]) -> None:
    """Remove every version directory but those in `keep` (the current one and the one it replaced)."""
    kept = {path.resolve() for path in keep if path is not None}
    versions = sync_dir(state_dir) / VERSIONS
    for directory in versions.iterdir() if versions.is_dir() else ():
        if directory.resolve() not in kept:
            shutil.rmtree(directory, ignore_errors=True)
