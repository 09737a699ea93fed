"""An instance's sync from the hub's TUF repository: verify, stage, build, guard, switch; its status for the API.

One sync (`Syncer.sync_now`, every `sync.interval_seconds`): tuf.ngclient refreshes the signed
metadata (root rotations, timestamp, snapshot, targets: signatures, versions against rollback,
expiry), then the files bundle.json names are downloaded into state_dir/sync/.staging-<pid>,
each checked against its signed length and sha256 (files the served version already holds are
linked from it, not downloaded again). The staged version is built like a reload would build it,
off the event loop and in a directory of its own (state_dir/sync/build), and refused if a
category shrinks past `max_shrink_percent` unless the hub marked that shrink intended. Then
`current` is switched to it in one rename and the process reloads as on SIGHUP, so every worker
of `workers: N` installs it; the version before stays on disk. Any failure leaves what is served
as it was, and says why in status() and in one log line per change of reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from resolver import durable
from resolver.control import config, snapshots, versions
from resolver.control.syncstate import SyncStatus
from resolver.errors import ResolverError
from resolver.filtering import lists

log = logging.getLogger(__name__)
# urllib3 warns at each retry of a failed connection; the sync says once per failure streak why it failed.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

SOCKET_TIMEOUT_SECONDS = 10  # per connection and between bytes: a hub that stops answering
FIRST_SYNC_TIMEOUT_SECONDS = 60.0  # a first start waits this long for the hub, then fails
MAX_FILES = 10_000  # files in one bundle
_METADATA = "metadata"
_BUILD = "build"
_LAST_SUCCESS = "last-success"
_STAGING = ".staging-"


class SyncError(ResolverError):
    """A sync that installed nothing; the message is the one-line reason."""


class Refused(SyncError):
    """A verified version refused for what it holds (a shrink, files that do not build): not fetched again."""

    digest = ""  # the sha256 of the refused bundle.json


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """bundle.json: what the hub published as one version."""

    version: int
    published: float
    categories: tuple[str, ...]
    files: dict[str, float]  # target path -> when its content was first published
    shrink_intended: dict[str, int]  # category -> the version that last marked its shrink intended

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
            manifest = cls(
                int(doc["version"]),
                float(doc["published"]),
                tuple(str(c) for c in doc["categories"]),
                {str(path): float(t) for path, t in doc["files"].items()},
                {str(c): int(v) for c, v in doc["shrink_intended"].items()},
            )
            if doc["format"] != 1:
                raise ValueError(f"format {doc['format']!r}; this schooldns reads format 1")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise Refused(f"bundle.json from the hub is not readable ({exc})") from None
        if len(manifest.files) > MAX_FILES:
            raise Refused(f"bundle.json names {len(manifest.files)} files; at most {MAX_FILES} are taken")
        for path in manifest.files:
            check_target_path(path)
        return manifest


def check_target_path(path: str) -> None:
    """A path a bundle may name: lists/... or policies/..., relative, no dot-names (so no `..`)."""
    parts = PurePosixPath(path).parts
    if (
        len(parts) < 2
        or parts[0] not in (versions.LISTS, versions.POLICIES)
        or "/".join(parts) != path
        or "\\" in path
        or "\0" in path
        or any(part.startswith(".") for part in parts)
    ):
        raise Refused(f"bundle.json names {path!r}: not a path under lists/ or policies/")


def shrinks(
    served: Mapping[str, int],
    candidate: Mapping[str, int],
    max_percent: float,
    intended: Mapping[str, int],
    served_version: int | None,
) -> list[str]:
    """The categories that would lose more than max_percent of the entries served, as `name a -> b`.

    A shrink is let through when the hub marked it intended (`bundle publish --allow-shrink`) in a
    version after the one served: marks are carried on by later versions, so an instance that
    missed the marking version still takes it.
    """
    out = []
    for category, before in sorted(served.items()):
        after = candidate.get(category, 0)
        if before <= 0 or (before - after) * 100 <= max_percent * before:
            continue
        if intended.get(category, 0) > (served_version or 0):
            continue
        out.append(f"{category} {before} -> {after}")
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """A verified version staged in its directory under state_dir/sync/versions, built and guarded."""

    directory: Path
    manifest: Manifest


def fetch(
    cfg: config.Config,
    build_state_dir: Path,
    compile_in: snapshots.CompileIn,
    served: Mapping[str, int],
    served_version: int | None,
    refused: Refused | None = None,
) -> Fetched | None:
    """One sync's work up to the switch (blocking: run it in a thread); None: the served version is the newest.

    Raises SyncError; Refused (with the bundle's digest) for a version that verified but is refused
    for what it holds. `refused` is the last such refusal: the same bundle is refused again at
    once, without downloading and building it again.
    """
    assert cfg.sync is not None
    base = versions.sync_dir(cfg.state_dir)
    (base / _METADATA).mkdir(parents=True, exist_ok=True)
    for stale in base.glob(f"{_STAGING}*"):  # this process is the only one that syncs this state_dir
        shutil.rmtree(stale, ignore_errors=True)
    updater = _updater(cfg, base)
    try:
        updater.refresh()
        info = updater.get_targetinfo(versions.MANIFEST)
    except Exception as exc:
        raise SyncError(describe(exc, cfg.sync.repository)) from None
    if info is None:
        raise SyncError("the hub has published nothing yet (no bundle.json among its signed files)")
    current = versions.current(cfg.state_dir)
    if current is not None and updater.find_cached_target(info, str(current / versions.MANIFEST)):
        return None
    digest = info.hashes["sha256"]
    if refused is not None and refused.digest == digest:
        again = Refused(str(refused))  # a new exception: re-raising one object grows its traceback each time
        again.digest = digest
        raise again
    try:
        directory, manifest = _stage(updater, info, base, current, digest)
        try:
            _build_and_guard(cfg, directory, manifest, build_state_dir, compile_in, served, served_version)
        except Refused:
            shutil.rmtree(directory, ignore_errors=True)
            raise
    except Refused as exc:
        exc.digest = digest
        raise
    return Fetched(directory, manifest)


def _stage(updater: Updater, info: TargetFile, base: Path, current: Path | None, digest: str) -> tuple[Path, Manifest]:
    """Download and verify bundle.json and every file it names; the version's directory once all are there."""
    staging = base / f"{_STAGING}{os.getpid()}"
    staging.mkdir()
    try:
        manifest = Manifest.parse(_download(updater, info, staging / versions.MANIFEST, None).read_bytes())
        for path, published in manifest.files.items():
            target = _target_info(updater, path)
            destination = staging / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            _download(updater, target, destination, current / path if current else None)
            os.utime(destination, (published, published))  # the list's age: when its content was published
        directory = base / versions.VERSIONS / f"{manifest.version}-{digest[:12]}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.parent.mkdir(exist_ok=True)
        os.rename(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory, manifest


def _updater(cfg: config.Config, base: Path) -> Updater:
    assert cfg.sync is not None
    try:
        trusted_root = cfg.sync.trusted_root.read_bytes()
    except OSError as exc:
        raise SyncError(f"sync.trusted_root {cfg.sync.trusted_root}: cannot read it ({exc.strerror})") from None
    repository = cfg.sync.repository.rstrip("/")
    try:
        return Updater(
            str(base / _METADATA),
            f"{repository}/metadata/",
            target_base_url=f"{repository}/targets/",
            fetcher=Urllib3Fetcher(socket_timeout=SOCKET_TIMEOUT_SECONDS, app_user_agent="schooldns"),
            bootstrap=trusted_root,
        )
    except (tuf_errors.RepositoryError, ValueError) as exc:
        raise SyncError(f"sync.trusted_root {cfg.sync.trusted_root}: not a TUF root ({exc})") from None


def _target_info(updater: Updater, path: str) -> TargetFile:
    try:
        target = updater.get_targetinfo(path)
    except Exception as exc:
        raise SyncError(describe(exc, "")) from None
    if target is None:
        raise Refused(f"bundle.json names {path}, which is not among the hub's signed files")
    return target


def _download(updater: Updater, target: TargetFile, destination: Path, served: Path | None) -> Path:
    """The target verified at `destination`: linked from the served version when that copy matches, else downloaded."""
    if served is not None and updater.find_cached_target(target, str(served)):
        os.link(served, destination)
        return destination
    try:
        updater.download_target(target, str(destination))
    except tuf_errors.LengthOrHashMismatchError:
        raise SyncError(f"{target.path}: does not match its signed length and sha256 (altered or cut short)") from None
    except Exception as exc:
        raise SyncError(f"{target.path}: {describe(exc, '')}") from None
    return destination


def _build_and_guard(
    cfg: config.Config,
    directory: Path,
    manifest: Manifest,
    build_state_dir: Path,
    compile_in: snapshots.CompileIn,
    served: Mapping[str, int],
    served_version: int | None,
) -> None:
    """Build the staged version as a reload would; Refused if it does not build or shrinks past the guard."""
    assert cfg.sync is not None
    if build_state_dir != cfg.state_dir:
        _seed(cfg.state_dir, build_state_dir)
    staged = dataclasses.replace(versions.version_config(cfg, directory), state_dir=build_state_dir)
    try:
        snapshot = snapshots.build_snapshot(staged, 0, compile_in)
    except ResolverError as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
        raise Refused(f"version {manifest.version} from the hub does not build: {lines[0]}{more}") from None
    shrunk = shrinks(
        served, snapshot.entry_counts, cfg.sync.max_shrink_percent, manifest.shrink_intended, served_version
    )
    if shrunk:
        raise Refused(
            f"version {manifest.version} from the hub refused: {', '.join(shrunk)} entries, more than "
            f"sync.max_shrink_percent ({cfg.sync.max_shrink_percent:g}%) lost and not published with --allow-shrink"
        )


def _seed(state_dir: Path, build_state_dir: Path) -> None:
    """Start a candidate's build from the compiled index being served (hard links): a version whose
    lists are unchanged is not compiled again (its fingerprint matches; the guard reads its counts)."""
    build_state_dir.mkdir(parents=True, exist_ok=True)
    for name in (lists.INDEX_FILE, lists.MANIFEST_FILE):
        temp = durable.temporary_path(build_state_dir / name, os.getpid())
        try:
            temp.unlink(missing_ok=True)
            os.link(state_dir / name, temp)
            os.replace(temp, build_state_dir / name)
        except OSError:  # nothing compiled yet, or state_dir kept it in memory: the build compiles
            temp.unlink(missing_ok=True)
            return


def describe(exc: BaseException, repository: str) -> str:
    """One line for a failed refresh or download, the same line each time the same failure repeats."""
    if isinstance(exc, SyncError):
        return str(exc)
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return f"the hub's signed metadata has expired ({exc}): the hub is not re-signing it"
    if isinstance(exc, tuf_errors.EqualVersionNumberError | tuf_errors.BadVersionNumberError):
        return f"refused older metadata than already verified (a rollback): {exc}"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return f"signatures do not verify with the trusted root (is sync.trusted_root this hub's 1.root.json?): {exc}"
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return f"metadata does not match its signed length and hash (altered or cut short): {exc}"
    if isinstance(exc, tuf_errors.DownloadHTTPError):
        return f"the hub answered HTTP {exc.status_code}"
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return f"a download was longer than its signed length: {exc}"
    if isinstance(exc, tuf_errors.RepositoryError):
        return f"the hub's metadata is not valid: {exc}"
    where = f" {repository}" if repository else ""
    return f"cannot download from the hub{where}: {_root_cause(exc)}"


def _root_cause(exc: BaseException) -> str:
    """The operating system's words for a network failure (urllib3 wraps them in messages with object ids)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, http.client.IncompleteRead):
            return f"the connection closed before the whole file arrived ({current!r})"
        if isinstance(current, OSError) and not type(current).__module__.startswith("urllib3"):
            return current.strerror or str(current) or type(current).__name__
        reason = getattr(current, "reason", None)
        pending += [reason if isinstance(reason, BaseException) else None, current.__cause__, current.__context__]
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
    name = type(exc).__name__
    text = str(exc)
    return name if "object at 0x" in text or not text else f"{name}: {text}"


def metadata_expiry(state_dir: Path) -> float | None:
    """The earliest expiry of the verified metadata kept in state_dir/sync/metadata (None: none there)."""
    directory = versions.sync_dir(state_dir) / _METADATA
    earliest = math.inf
    for name in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
        try:
            md = Metadata[Any].from_bytes((directory / name).read_bytes())
        except Exception:  # missing, or not written yet: no expiry to report
            continue
        earliest = min(earliest, md.signed.expires.timestamp())
    return None if earliest == math.inf else earliest


def served_manifest(state_dir: Path) -> Manifest | None:
    """The bundle.json of the version `current` names (None before the first sync or if unreadable)."""
    directory = versions.current(state_dir)
    if directory is None:
        return None
    try:
        return Manifest.parse((directory / versions.MANIFEST).read_bytes())
    except (OSError, Refused):
        return None


async def first_sync(cfg: config.Config) -> None:
    """A start: a killed sync's temporaries go; with no verified version on disk, one bounded try at the hub.

    Without one from the hub either: NotSyncedError. A start with a verified version never waits for
    the hub: it serves that one and syncs later.
    """
    assert cfg.sync is not None
    base = versions.sync_dir(cfg.state_dir)
    # A sync killed midway: its build's index and manifest, the `current` link's, its download and the
    # TUF client's metadata (tempfile's names). This process is the only one that syncs this state_dir.
    stale = [*durable.remove_stale_temporaries_in(base), *durable.remove_stale_temporaries_in(base / _BUILD)]
    for path in [*base.glob(f"{_STAGING}*"), *(base / _METADATA).glob("tmp*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        stale.append(path)
    for path in stale:
        log.info("removed %s, left by a sync that was stopped midway", path)
    if versions.current(cfg.state_dir) is not None:
        return
    log.info("no verified lists and policies yet: syncing from %s before serving", cfg.sync.repository)
    work = asyncio.to_thread(fetch, cfg, cfg.state_dir, snapshots.CompileIn.CHILD, {}, None)
    try:
        fetched = await asyncio.wait_for(work, FIRST_SYNC_TIMEOUT_SECONDS)
    except TimeoutError:
        raise versions.NotSyncedError(
            f"sync: no verified lists and policies yet, and the hub at {cfg.sync.repository} gave none "
            f"within {FIRST_SYNC_TIMEOUT_SECONDS:.0f}s"
        ) from None
    except SyncError as exc:
        raise versions.NotSyncedError(
            f"sync: no verified lists and policies yet, and none from the hub at {cfg.sync.repository}: {exc}"
        ) from None
    assert fetched is not None
    versions.switch(cfg.state_dir, fetched.directory)
    _save_last_success(cfg.state_dir, time.time())
    log.info("installed version %d from %s", fetched.manifest.version, cfg.sync.repository)


def _save_last_success(state_dir: Path, when: float) -> None:
    try:
        durable.replace_synced(versions.sync_dir(state_dir) / _LAST_SUCCESS, f"{when!r}\n".encode())
    except OSError as exc:
        log.warning("cannot record the sync's time in %s (%s)", state_dir, exc)


def _read_last_success(state_dir: Path) -> float | None:
    try:
        return float((versions.sync_dir(state_dir) / _LAST_SUCCESS).read_text())
    except (OSError, ValueError):
        return None


class Syncer:
    """The serving process's sync: every `sync.interval_seconds` and on sync_now() (the admin API's POST /v1/sync).

    `reload` is the process's reload (it builds from the `current` version); `served_entries`
    gives the entries per category being served, for the shrink guard.
    """

    def __init__(
        self,
        cfg: config.Config,
        reload: Callable[[], Awaitable[bool]],
        served_entries: Callable[[], Mapping[str, int]],
    ):
        assert cfg.sync is not None
        self.config = cfg
        self.sync = cfg.sync
        self._reload = reload
        self._served_entries = served_entries
        self._lock = asyncio.Lock()
        manifest = served_manifest(cfg.state_dir)
        self._version = manifest.version if manifest else None
        self._published = manifest.published if manifest else None
        self._last_attempt: float | None = None
        self._last_success = _read_last_success(cfg.state_dir)
        self._failures = 0
        self._last_error: str | None = None
        self._expires = metadata_expiry(cfg.state_dir)
        self._refused: Refused | None = None  # the last bundle refused: not fetched again

    def status(self) -> SyncStatus:
        return SyncStatus(
            repository=self.sync.repository,
            version=self._version,
            last_attempt=self._last_attempt,
            last_success=self._last_success,
            consecutive_failures=self._failures,
            last_error=self._last_error,
            metadata_expires=self._expires,
            metadata_expired=self._expires is not None and self._expires <= time.time(),
            published=self._published,
        )

    async def run(self) -> None:
        """Sync now and then every interval; never returns (cancel it)."""
        while True:
            await self.sync_now()
            await asyncio.sleep(self.sync.interval_seconds)

    async def sync_now(self) -> SyncStatus:
        """One sync (after the one running, if any); what is served changes only if it succeeds."""
        async with self._lock:
            self._last_attempt = time.time()
            try:
                installed = await self._sync()
            except SyncError as exc:
                self._failed(str(exc))
            except OSError as exc:  # state_dir full or not writable
                self._failed(f"{exc.filename or self.config.state_dir}: {exc.strerror or exc}")
            except Exception as exc:  # a bug: its traceback once per streak; never the end of syncing or serving
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self._last_error:
                    log.exception("sync from %s failed unexpectedly", self.sync.repository)
                self._failed(reason)
            else:
                self._succeeded(installed)
            self._expires = await asyncio.to_thread(metadata_expiry, self.config.state_dir)
            return self.status()

    async def _sync(self) -> Fetched | None:
        served = dict(self._served_entries())
        build_dir = versions.sync_dir(self.config.state_dir) / _BUILD
        fetched = await asyncio.to_thread(self._fetch, build_dir, served)
        if fetched is None:
            return None
        before = versions.switch(self.config.state_dir, fetched.directory)
        if not await self._reload():
            if before is not None:
                versions.switch(self.config.state_dir, before)
            raise SyncError(
                f"version {fetched.manifest.version} verified and built, but the reload failed (see the log)"
            )
        await asyncio.to_thread(versions.prune, self.config.state_dir, (fetched.directory, before))
        return fetched

    def _fetch(self, build_dir: Path, served: Mapping[str, int]) -> Fetched | None:
        try:
            return fetch(self.config, build_dir, snapshots.CompileIn.IDLE_CHILD, served, self._version, self._refused)
        except Refused as exc:
            self._refused = exc
            raise

    def _failed(self, reason: str) -> None:
        if reason != self._last_error:
            served = f"version {self._version}" if self._version is not None else "nothing synced"
            log.error("sync from %s failed: %s (still serving %s)", self.sync.repository, reason, served)
        self._failures += 1
        self._last_error = reason

    def _succeeded(self, installed: Fetched | None) -> None:
        if self._failures:
            log.info("sync from %s works again after %d failures", self.sync.repository, self._failures)
        self._failures = 0
        self._last_error = None
        self._last_success = self._last_attempt
        if self._last_success is not None:
            _save_last_success(self.config.state_dir, self._last_success)
        if installed is not None:
            self._version = installed.manifest.version
            self._published = installed.manifest.published
            log.info("installed version %d from %s", self._version, self.sync.repository)
