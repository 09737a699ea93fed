"""The hub's TUF repository of lists and policies: `schooldns bundle init / publish / rotate`, and a hub's publishing.

A repository is a directory of static files that any web server or CDN can serve as it is:

    metadata/<N>.root.json       every root version, never removed (an instance walks them in order);
                                 1.root.json is the instances' `sync.trusted_root`
    metadata/<N>.targets.json    the signed list of files: path, length, sha256
    metadata/<N>.snapshot.json   the versions of targets.json
    metadata/timestamp.json      the newest snapshot, re-signed before it expires; written last
    targets/lists/<sha256>.<name>, targets/policies/<sha256>.<name>, targets/<sha256>.bundle.json

Consistent snapshots: every file but timestamp.json is named by its version or hash and never
rewritten, so a client that read the old timestamp.json while a publish runs still finds every
file it names. The keys (ed25519, PEM, mode 0600) are `<role>.pem` in the key directory; the root
key belongs offline (docs/sync.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Signed, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from resolver import durable
from resolver.control import config, versions
from resolver.errors import ResolverError, UsageError
from resolver.filtering import lists, policyfile

log = logging.getLogger(__name__)

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)  # their keys sign every publish on the hub
MANIFEST_FORMAT = 1
# Versions of targets.json (and the files they name) and of snapshot.json kept for clients that
# started a sync before the newest publish; older ones are removed.
KEEP_VERSIONS = 5
DAY = 86_400.0
_METADATA_FILE = re.compile(r"^(\d+)\.(root|targets|snapshot)\.json$")
_SERIALIZER = JSONSerializer(compact=False)


class BundleError(ResolverError):
    """The repository or its keys cannot be used as asked: one line says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Expiries:
    """How long each role's metadata holds after it is signed (seconds); re-signed when half is left."""

    root: float = 365 * DAY  # renewed only with the offline root key: `schooldns bundle rotate`
    targets: float = 30 * DAY
    snapshot: float = 7 * DAY
    timestamp: float = 1 * DAY  # how long instances keep accepting a hub that stopped publishing

    def period(self, role: str) -> float:
        return float(getattr(self, role))

    def due(self, role: str, signed: Signed, now: float) -> bool:
        """True when less than half of the role's period is left (the hub re-signs it)."""
        return signed.expires.timestamp() - now < self.period(role) / 2


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """What a publish or re-sign did."""

    version: int  # the bundle version now published
    changed: bool  # a new version of the files
    signed: tuple[str, ...]  # roles whose metadata got a new version
    expires: float  # timestamp.json's expiry


@dataclasses.dataclass(frozen=True, slots=True)
class PublishStatus:
    """Where a serving hub's publishing stands (times are time.time(); None: not yet)."""

    repository: str  # the repository directory
    version: int | None  # the newest published bundle version
    last_publish: float | None  # when the last new version was published
    last_attempt: float | None
    consecutive_failures: int
    last_error: str | None  # one line: why the last publish failed (None after a success)
    metadata_expires: float | None  # timestamp.json's expiry: instances alert after it


# ---------------------------------------------------------------------------------------
# Keys


def _key_path(keys: Path, role: str) -> Path:
    return keys / f"{role}.pem"


def _generate() -> CryptoSigner:
    return CryptoSigner(ed25519.Ed25519PrivateKey.generate())


def _load_signer(path: Path, role: str, root: Root, root_version: int) -> CryptoSigner:
    """The key in `path`, which must be owner-only and one of the keys the root names for `role`."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: no {role} key here (`schooldns bundle init` writes one)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the {role} key ({exc.strerror})") from None
    if stat.S_IMODE(mode) & 0o077:
        raise BundleError(
            f"{path}: mode {stat.S_IMODE(mode):04o}; a key must be readable by its owner only (chmod 600 {path})"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{path}: not an ed25519 key")
    signer = CryptoSigner(private)
    if signer.public_key.keyid not in root.roles[role].keyids:
        raise BundleError(
            f"{path} is not a {role} key of metadata/{root_version}.root.json (rotated with another key directory?)"
        )
    return signer


def _write_key(path: Path, signer: CryptoSigner) -> None:
    durable.replace_synced(path, signer.private_bytes, mode=0o600)


# ---------------------------------------------------------------------------------------
# The repository's metadata on disk


@dataclasses.dataclass(slots=True)
class _Repository:
    """The newest metadata of each role, as read under the repository's lock."""

    directory: Path
    root: Metadata[Root]
    root_version: int
    targets: Metadata[Targets] | None  # None before the first publish
    snapshot: Metadata[Snapshot] | None
    timestamp: Metadata[Timestamp] | None

    @property
    def metadata(self) -> Path:
        return self.directory / "metadata"

    @classmethod
    def load(cls, directory: Path) -> _Repository:
        metadata = directory / "metadata"
        newest: dict[str, int] = {}
        try:
            names = os.listdir(metadata)
        except FileNotFoundError:
            raise BundleError(
                f"{directory}: not a repository (no metadata/; `schooldns bundle init` makes one)"
            ) from None
        for name in names:
            if match := _METADATA_FILE.match(name):
                newest[match[2]] = max(newest.get(match[2], 0), int(match[1]))
        if Root.type not in newest:
            raise BundleError(f"{metadata}: no root metadata (1.root.json)")

        def read(name: str, kind: type[Any]) -> Any:
            path = metadata / name
            try:
                md = Metadata[Any].from_bytes(path.read_bytes())
            except FileNotFoundError:
                return None
            except Exception as exc:  # tuf's DeserializationError, OSError, ...
                raise BundleError(f"{path}: unreadable ({exc})") from None
            if not isinstance(md.signed, kind):
                raise BundleError(f"{path}: not {kind.type} metadata")
            return md

        root_version = newest[Root.type]
        targets = read(f"{newest[Targets.type]}.targets.json", Targets) if Targets.type in newest else None
        snapshot = read(f"{newest[Snapshot.type]}.snapshot.json", Snapshot) if Snapshot.type in newest else None
        return cls(
            directory,
            read(f"{root_version}.root.json", Root),
            root_version,
            targets,
            snapshot,
            read("timestamp.json", Timestamp),
        )

    def signers(self, keys: Path, roles: Sequence[str] = ONLINE_ROLES) -> dict[str, CryptoSigner]:
        return {role: _load_signer(_key_path(keys, role), role, self.root.signed, self.root_version) for role in roles}

    def manifest(self) -> dict[str, Any] | None:
        """The published bundle.json (None before the first publish)."""
        if self.targets is None or versions.MANIFEST not in self.targets.signed.targets:
            return None
        path = self.directory / "targets" / _stored_name(self.targets.signed.targets[versions.MANIFEST])
        try:
            manifest: dict[str, Any] = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: the published bundle.json is unreadable ({exc})") from None
        return manifest

    def write(self, md: Metadata[Any], name: str) -> None:
        durable.replace_synced(self.metadata / name, md.to_bytes(_SERIALIZER), mode=0o644)


def _stored_name(target: TargetFile) -> str:
    """Where a target lives under targets/ (consistent snapshots: its sha256 before its name)."""
    path = PurePosixPath(target.path)
    return str(path.with_name(f"{target.hashes['sha256']}.{path.name}"))


def _expiry(now: float, seconds: float) -> datetime.datetime:
    # TUF writes whole seconds: round up so that a short expiry (tests) is not cut.
    return datetime.datetime.fromtimestamp(int(now + seconds + 0.999), datetime.UTC)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer at a time: a hub's automatic publish and an operator's command."""
    try:
        lock = open(directory / ".lock", "a")  # noqa: SIM115 (held until the block ends)
    except FileNotFoundError:
        raise BundleError(f"{directory}: not a repository (`schooldns bundle init` makes one)") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------
# init


def init(repository: Path, keys: Path, expiries: Expiries = Expiries(), now: float | None = None) -> Path:
    """Create the repository directory and a new key for each role; returns metadata/1.root.json."""
    now = time.time() if now is None else now
    metadata = repository / "metadata"
    if metadata.exists() and any(metadata.iterdir()):
        raise BundleError(f"{repository}: already a repository (metadata/ is not empty)")
    for role in ROLES:
        if _key_path(keys, role).exists():
            raise BundleError(f"{_key_path(keys, role)}: a key is already there; choose an empty key directory")
    signers = {role: _generate() for role in ROLES}
    root = Root(version=1, expires=_expiry(now, expiries.root), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    md = Metadata(root)
    md.sign(signers[Root.type])
    try:
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keys, 0o700)
        for role, signer in signers.items():
            _write_key(_key_path(keys, role), signer)
        metadata.mkdir(parents=True, exist_ok=True)
        (repository / "targets").mkdir(exist_ok=True)
        durable.replace_synced(metadata / "1.root.json", md.to_bytes(_SERIALIZER), mode=0o644)
        (repository / ".lock").touch()
    except OSError as exc:
        raise BundleError(f"cannot create the repository: {exc}") from None
    return metadata / "1.root.json"


# ---------------------------------------------------------------------------------------
# publish


def publish(
    repository: Path,
    keys: Path,
    cfg: config.Config,
    allow_shrink: Sequence[str] = (),
    expiries: Expiries = Expiries(),
    now: float | None = None,
) -> Published:
    """Publish the lists and policies that cfg names as a new version, or re-sign what is due if they are unchanged.

    The files are validated as a reload would read them (sources.yaml, every policy file) before
    anything is written; what is published is exactly what was validated (a file that changes
    meanwhile fails the publish, to be run again). `allow_shrink` always makes a new version:
    marking a shrink that instances refused needs no change of the files.
    """
    now = time.time() if now is None else now
    with _locked(repository):
        repo = _Repository.load(repository)
        signers = repo.signers(keys)
        files = _collect(cfg)
        hashes = {path: _sha256(source) for path, source in files.items()}
        published = {
            path: target.hashes["sha256"]
            for path, target in (repo.targets.signed.targets.items() if repo.targets else ())
            if path != versions.MANIFEST
        }
        previous = repo.manifest()
        if hashes == published and previous is not None and not allow_shrink:
            return _resign(repo, signers, expiries, now, int(previous["version"]))
        sources = lists.load_sources(cfg.blocklists_dir)
        policyfile.load_policies(cfg.policies_dir, sources.categories)
        marked = _shrink_marks(previous, sources.categories, allow_shrink)
        targets = {}
        for path, source in files.items():
            with open(source, "rb") as file:
                targets[path] = _store(repository, path, file)
        moved = sorted(path for path, target in targets.items() if target.hashes["sha256"] != hashes[path])
        if moved:
            raise BundleError(f"{', '.join(moved)}: changed while being published; publish again")
        version = int(previous["version"]) + 1 if previous else 1
        earlier = previous["files"] if previous else {}
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "published": now,
            "categories": list(sources.categories),
            # When each file's content was first published: an instance gives its copy that mtime.
            "files": {
                path: earlier[path] if published.get(path) == hashes[path] and path in earlier else now
                for path in sorted(files)
            },
            # category -> the version that last marked its shrink intended (carried on, see sync.shrinks)
            "shrink_intended": {
                category: mark
                for category, mark in {**_marks(previous), **dict.fromkeys(marked, version)}.items()
                if category in sources.categories or mark == version
            },
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        targets[versions.MANIFEST] = _store(repository, versions.MANIFEST, io.BytesIO(data))
        signed = _sign_new(repo, signers, expiries, now, targets)
        _prune(repo)
        log.info("published version %d of the lists and policies (%d files) in %s", version, len(files), repository)
        return Published(version, True, signed, _timestamp_expiry(repo))


def _marks(manifest: Mapping[str, Any] | None) -> dict[str, int]:
    return dict(manifest.get("shrink_intended", {})) if manifest else {}


def _shrink_marks(
    previous: Mapping[str, Any] | None, categories: Sequence[str], allow_shrink: Sequence[str]
) -> list[str]:
    """The categories `--allow-shrink` names, each one the new or the last published version has."""
    known = set(categories) | set(previous.get("categories", ()) if previous else ())
    unknown = [category for category in allow_shrink if category not in known]
    if unknown:
        raise UsageError(
            f"--allow-shrink {unknown[0]}: no such category (published or in sources.yaml: {', '.join(sorted(known))})"
        )
    return list(allow_shrink)


def _collect(cfg: config.Config) -> dict[str, Path]:
    """Target path -> file for sources.yaml, every list file it names and every policy file."""
    sources = lists.load_sources(cfg.blocklists_dir)
    files = {f"{versions.LISTS}/{lists.SOURCES_FILE}": cfg.blocklists_dir / lists.SOURCES_FILE}
    for source in sources.sources:
        files[f"{versions.LISTS}/{PurePosixPath(Path(source.file).as_posix())}"] = source.path
    try:
        entries = sorted(cfg.policies_dir.iterdir())
    except OSError as exc:
        raise BundleError(f"{cfg.policies_dir}: cannot read the policies ({exc.strerror})") from None
    for path in entries:
        if path.suffix == ".yaml" and not path.name.startswith(".") and path.is_file():
            files[f"{versions.POLICIES}/{path.name}"] = path
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _store(repository: Path, path: str, source: BinaryIO) -> TargetFile:
    """Copy into targets/ under its hash: what was hashed while being copied is what is published."""
    temp = repository / "targets" / f".incoming.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    length = 0
    try:
        with open(temp, "wb") as copy:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                length += len(chunk)
                copy.write(chunk)
            copy.flush()
            os.fsync(copy.fileno())
        target = TargetFile(length, {"sha256": digest.hexdigest()}, path)
        _place(repository, target, temp)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _place(repository: Path, target: TargetFile, temp: Path) -> None:
    final = repository / "targets" / _stored_name(target)
    if final.exists():
        return  # the same content, published before
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(temp, 0o644)  # served by a web server; the repository's access rule is the web server's (docs/sync.md)
    os.replace(temp, final)
    durable.sync_directory(final.parent)


def _sign_new(
    repo: _Repository,
    signers: Mapping[str, CryptoSigner],
    expiries: Expiries,
    now: float,
    targets: dict[str, TargetFile] | None,
    roles: Sequence[str] = ONLINE_ROLES,
) -> tuple[str, ...]:
    """New versions of `roles` (targets with `targets` if given), written targets first, timestamp last."""
    if Targets.type in roles:
        old = repo.targets.signed if repo.targets else None
        new_targets = Targets(
            version=old.version + 1 if old else 1,
            expires=_expiry(now, expiries.targets),
            targets=targets if targets is not None else (dict(old.targets) if old else {}),
        )
        repo.targets = Metadata(new_targets)
        repo.targets.sign(signers[Targets.type])
        repo.write(repo.targets, f"{new_targets.version}.targets.json")
    if Snapshot.type in roles:
        assert repo.targets is not None
        targets_bytes = repo.targets.to_bytes(_SERIALIZER)
        old_snapshot = repo.snapshot.signed if repo.snapshot else None
        snapshot = Snapshot(
            version=old_snapshot.version + 1 if old_snapshot else 1,
            expires=_expiry(now, expiries.snapshot),
            meta={"targets.json": MetaFile(repo.targets.signed.version, len(targets_bytes))},
        )
        repo.snapshot = Metadata(snapshot)
        repo.snapshot.sign(signers[Snapshot.type])
        repo.write(repo.snapshot, f"{snapshot.version}.snapshot.json")
    assert repo.snapshot is not None
    snapshot_bytes = repo.snapshot.to_bytes(_SERIALIZER)
    old_timestamp = repo.timestamp.signed if repo.timestamp else None
    timestamp = Timestamp(
        version=old_timestamp.version + 1 if old_timestamp else 1,
        expires=_expiry(now, expiries.timestamp),
        snapshot_meta=MetaFile(
            repo.snapshot.signed.version,
            len(snapshot_bytes),
            {"sha256": hashlib.sha256(snapshot_bytes).hexdigest()},
        ),
    )
    repo.timestamp = Metadata(timestamp)
    repo.timestamp.sign(signers[Timestamp.type])
    repo.write(repo.timestamp, "timestamp.json")  # last: clients see the new version from here on
    return tuple(role for role in ONLINE_ROLES if role in roles)


def _resign(
    repo: _Repository, signers: Mapping[str, CryptoSigner], expiries: Expiries, now: float, version: int
) -> Published:
    """New versions of the roles whose metadata is due (and of those that sign over them)."""
    due = [
        role
        for role, md in ((Targets.type, repo.targets), (Snapshot.type, repo.snapshot), (Timestamp.type, repo.timestamp))
        if md is None or expiries.due(role, md.signed, now)
    ]
    if not due:
        return Published(version, False, (), _timestamp_expiry(repo))
    roles = ONLINE_ROLES[ONLINE_ROLES.index(due[0]) :]  # targets -> snapshot -> timestamp
    signed = _sign_new(repo, signers, expiries, now, None, roles)
    _prune(repo)
    log.info("re-signed %s of version %d in %s", ", ".join(signed), version, repo.directory)
    return Published(version, False, signed, _timestamp_expiry(repo))


def resign(repository: Path, keys: Path, expiries: Expiries = Expiries(), now: float | None = None) -> Published:
    """Re-sign the metadata that is due (a hub's timer); BundleError before the first publish."""
    now = time.time() if now is None else now
    with _locked(repository):
        repo = _Repository.load(repository)
        manifest = repo.manifest()
        if manifest is None:
            raise BundleError(f"{repository}: nothing published yet")
        return _resign(repo, repo.signers(keys), expiries, now, int(manifest["version"]))


def _timestamp_expiry(repo: _Repository) -> float:
    assert repo.timestamp is not None
    return repo.timestamp.signed.expires.timestamp()


def _prune(repo: _Repository) -> None:
    """Keep the newest KEEP_VERSIONS of targets.json and snapshot.json and the files they name; every root."""
    found: dict[str, list[int]] = {Targets.type: [], Snapshot.type: []}
    for name in os.listdir(repo.metadata):
        if (match := _METADATA_FILE.match(name)) and match[2] in found:
            found[match[2]].append(int(match[1]))
    kept: set[str] = set()
    for role, numbers in found.items():
        numbers.sort()
        for number in numbers[:-KEEP_VERSIONS]:
            (repo.metadata / f"{number}.{role}.json").unlink(missing_ok=True)
        if role == Targets.type:
            for number in numbers[-KEEP_VERSIONS:]:
                with contextlib.suppress(Exception):  # unreadable: its files go too
                    md = Metadata[Targets].from_bytes((repo.metadata / f"{number}.targets.json").read_bytes())
                    kept.update(_stored_name(target) for target in md.signed.targets.values())
    targets_dir = repo.directory / "targets"
    for directory, _, names in os.walk(targets_dir):
        for name in names:
            path = Path(directory) / name
            if str(path.relative_to(targets_dir)) not in kept:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# rotate


def rotate(
    repository: Path,
    keys: Path,
    roles: Sequence[str] = (),
    root_key: Path | None = None,
    expiries: Expiries = Expiries(),
    now: float | None = None,
) -> int:
    """A new root version, signed with the root key: new keys for `roles` (none: only a later expiry).

    The new keys replace `<role>.pem` in `keys` (the root's in `root_key` when given). Online
    metadata signed by a replaced key is signed again at once with its successor.
    """
    now = time.time() if now is None else now
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise UsageError(f"--role {unknown[0]}: expected one of {', '.join(ROLES)}")
    root_path = root_key or _key_path(keys, Root.type)
    with _locked(repository):
        repo = _Repository.load(repository)
        old_root_signer = _load_signer(root_path, Root.type, repo.root.signed, repo.root_version)
        root = Root.from_dict(repo.root.signed.to_dict())  # a copy to edit
        root.version = repo.root_version + 1
        root.expires = _expiry(now, expiries.root)
        fresh = {role: _generate() for role in dict.fromkeys(roles)}
        for role, signer in fresh.items():
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(signer.public_key, role)
        md = Metadata(root)
        md.sign(old_root_signer)  # the previous root's keys vouch for the new root ...
        if Root.type in fresh:
            md.sign(fresh[Root.type], append=True)  # ... and the new root's keys sign it too
        # Keys first, beside the old ones; renamed into place once the root that names them is written.
        pending = {
            (root_path if role == Root.type else _key_path(keys, role)): signer for role, signer in fresh.items()
        }
        for path, signer in pending.items():
            durable.write_synced(path.with_name(path.name + ".new"), signer.private_bytes, mode=0o600)
        repo.write(md, f"{root.version}.root.json")
        for path in pending:
            os.replace(path.with_name(path.name + ".new"), path)
        repo.root, repo.root_version = md, root.version
        online = [role for role in ONLINE_ROLES if role in fresh]
        if online and repo.timestamp is not None:
            _sign_new(repo, repo.signers(keys), expiries, now, None, ONLINE_ROLES[ONLINE_ROLES.index(online[0]) :])
    return root.version


# ---------------------------------------------------------------------------------------
# A serving hub's publishing


class Publisher:
    """A hub with `publish:`: publishes after each reload that installed new files, and re-signs before expiry.

    Runs the work in a thread, one at a time; requests that arrive meanwhile make one more publish.
    A failure is logged once per change of reason and kept in status(); DNS never waits for it.
    """

    def __init__(self, cfg: config.Config, expiries: Expiries = Expiries()):
        assert cfg.publish is not None
        self.config = cfg
        self.expiries = expiries
        self._wanted = asyncio.Event()
        self._version: int | None = None
        self._last_publish: float | None = None
        self._last_attempt: float | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._expires: float | None = None
        # Re-signing is checked eight times per timestamp period: it is due with half of it left.
        self.check_seconds = min(max(expiries.timestamp / 8, 0.5), 3_600.0)

    def request(self) -> None:
        """Publish soon (after a reload installed new files)."""
        self._wanted.set()

    def status(self) -> PublishStatus:
        assert self.config.publish is not None
        return PublishStatus(
            str(self.config.publish.repository),
            self._version,
            self._last_publish,
            self._last_attempt,
            self._failures,
            self._last_error,
            self._expires,
        )

    async def run(self) -> None:
        """Publish what is requested, and re-sign what is due; never returns (cancel it)."""
        self._wanted.set()  # the files as they are at start
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.check_seconds)
            self._wanted.clear()
            await self.publish_now()

    async def publish_now(self) -> PublishStatus:
        assert self.config.publish is not None
        self._last_attempt = time.time()
        try:
            done = await asyncio.to_thread(
                publish, self.config.publish.repository, self.config.publish.keys, self.config, (), self.expiries
            )
        except Exception as exc:  # BundleError, ConfigError, OSError, ...: DNS goes on
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if reason != self._last_error:
                log.error("publishing to %s failed: %s", self.config.publish.repository, reason)
            self._failures += 1
            self._last_error = reason
            return self.status()
        if self._failures:
            log.info("publishing to %s works again after %d failures", self.config.publish.repository, self._failures)
        self._failures = 0
        self._last_error = None
        self._version = done.version
        self._expires = done.expires
        if done.changed:
            self._last_publish = self._last_attempt
        return self.status()
