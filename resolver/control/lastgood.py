"""The last policies and compiled lists that built, kept in state_dir so that a start with broken files still serves."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from resolver import durable
from resolver.errors import ResolverError
from resolver.filtering import domains

log = logging.getLogger(__name__)

# In state_dir:
#   last-good            symlink to the newest complete copy, swapped in one rename
#   last-good-<id>/      policies/*.yaml  the policy files as they were when they built
#                        index.bin        a hard link to the compiled index that built with them
#                        saved.json       categories, entry counts, policies' sha256, saved_at
#   .last-good.lock      serialises the processes that save (a supervisor and its workers)
LINK = "last-good"
_PREFIX = "last-good-"
_LOCK = ".last-good.lock"
_SAVED = "saved.json"
_INDEX = "index.bin"
_POLICIES = "policies"

# What a policy load reads: (file name, size, mtime_ns) of each *.yaml in the policies directory.
PolicyFiles = tuple[tuple[str, int, int], ...]


class LastGoodError(ResolverError):
    """The last good copy in state_dir is missing a part or was altered."""


@dataclasses.dataclass(frozen=True, slots=True)
class Saved:
    """A complete last good copy, as `locate` finds it."""

    directory: Path
    policies_dir: Path
    index_path: Path
    categories: tuple[str, ...]
    entry_counts: dict[str, int]
    saved_at: float
    policies_sha256: str


def policy_files(policies_dir: Path) -> PolicyFiles:
    """The policy files a load reads, with sizes and mtimes: taken before a build, compared after the copy."""
    try:
        entries = sorted(os.scandir(policies_dir), key=lambda entry: entry.name)
    except OSError:
        return ()
    files = []
    for entry in entries:
        if entry.name.endswith(".yaml") and not entry.name.startswith(".") and entry.is_file():
            try:
                stat = entry.stat()
            except OSError:  # gone since the listing: the build will not read it either
                continue
            files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def save(
    state_dir: Path,
    policies_dir: Path,
    files_before: PolicyFiles,
    index: domains.DomainIndex,
    categories: Sequence[str],
    entry_counts: Mapping[str, int],
) -> bool:
    """Record policies and index that just built as the last good state; True if it holds them now.

    `files_before` is `policy_files` taken before the build read the policies: if a file changed
    since, the copy might not be what was validated, and nothing is saved (the change triggers a
    reload of its own). Never raises: a state_dir that cannot be written only costs the fallback.
    """
    if index.file is None:
        return False  # kept in memory: state_dir is not writable, so there is nothing to link
    try:
        with _locked(state_dir):
            return _save_locked(state_dir, policies_dir, files_before, index.file, categories, entry_counts)
    except OSError as exc:
        log.warning("cannot save the last good policies and lists in %s (%s)", state_dir, exc)
        return False


def _save_locked(
    state_dir: Path,
    policies_dir: Path,
    files_before: PolicyFiles,
    index_file: tuple[str, int, int],
    categories: Sequence[str],
    entry_counts: Mapping[str, int],
) -> bool:
    try:
        texts = {name: (policies_dir / name).read_bytes() for name, _, _ in files_before}
    except FileNotFoundError:
        log.info("a policy file went away while the last good copy was saved; not saving it")
        return False
    digest = _digest(texts)
    index_path, device, inode = index_file
    with contextlib.suppress(LastGoodError, OSError):
        current = locate(state_dir)
        if current is not None and current.policies_sha256 == digest:
            linked = os.stat(current.index_path)
            if (linked.st_dev, linked.st_ino) == (device, inode):
                return True  # already the last good state
    directory = state_dir / f"{_PREFIX}{time.time_ns()}-{os.getpid()}"
    temp_link = durable.temporary_path(state_dir / LINK, os.getpid())
    try:
        (directory / _POLICIES).mkdir(parents=True)
        for name, text in texts.items():
            durable.write_synced(directory / _POLICIES / name, text)
        os.link(index_path, directory / _INDEX)
        linked = os.stat(directory / _INDEX)
        if (linked.st_dev, linked.st_ino) != (device, inode) or policy_files(policies_dir) != files_before:
            log.info("policies or lists changed while the last good copy was saved; not saving it")
            shutil.rmtree(directory, ignore_errors=True)
            return False
        durable.write_synced(
            directory / _SAVED,
            json.dumps(
                {
                    "categories": list(categories),
                    "entry_counts": dict(entry_counts),
                    "policies_sha256": digest,
                    "saved_at": time.time(),
                },
                indent=1,
            ).encode(),
        )
        durable.sync_directory(directory / _POLICIES)
        durable.sync_directory(directory)
        temp_link.unlink(missing_ok=True)
        os.symlink(directory.name, temp_link)
        os.replace(temp_link, state_dir / LINK)  # the swap: readers see the old copy or the new one
    except BaseException:  # a stop (SIGTERM) in the middle too: leave no half-made copy or link
        shutil.rmtree(directory, ignore_errors=True)
        temp_link.unlink(missing_ok=True)
        raise
    durable.sync_directory(state_dir)  # after the swap: a failure here must not remove what the link names
    for old in state_dir.glob(f"{_PREFIX}*"):  # earlier copies, and any a crash left half-written
        if old.name != directory.name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in state_dir.glob(f".{LINK}.*.tmp"):  # a killed saver's link (saves hold the lock: none is live)
        stale.unlink(missing_ok=True)
    log.info("saved policies and lists as the last good state in %s", directory)
    return True


def locate(state_dir: Path) -> Saved | None:
    """The last good copy in state_dir; None if none was ever saved; LastGoodError if it is damaged."""
    link = state_dir / LINK
    if not os.path.lexists(link):
        return None
    directory = link.resolve()
    try:
        saved = json.loads((directory / _SAVED).read_text())
        categories = tuple(saved["categories"])
        entry_counts = {str(k): int(v) for k, v in saved["entry_counts"].items()}
        saved_at = float(saved["saved_at"])
        digest = str(saved["policies_sha256"])
        if not all(isinstance(c, str) for c in categories):
            raise TypeError("categories must be names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LastGoodError(f"{directory / _SAVED}: unreadable ({exc})") from None
    return Saved(directory, directory / _POLICIES, directory / _INDEX, categories, entry_counts, saved_at, digest)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / _LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _digest(texts: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(f"{name}\0{len(texts[name])}\0".encode())
        digest.update(texts[name])
    return digest.hexdigest()
