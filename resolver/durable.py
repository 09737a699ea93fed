"""Files in state_dir written so that a crash or power loss leaves the old content or the new, never a mix."""

from __future__ import annotations

import os
from pathlib import Path


def write_synced(path: str | os.PathLike[str], data: bytes, mode: int = 0o666) -> None:
    """Create (or truncate) the file at `path` with `data`, on disk when this returns (fsync).

    A file it creates gets `mode` less the umask (0o600 for secrets: never readable by others,
    not even for a moment).
    """
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def sync_directory(path: str | os.PathLike[str]) -> None:
    """Put the directory's entries on disk (fsync): the files made, renamed or removed in it."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_synced(path: str | os.PathLike[str], data: bytes, mode: int = 0o666) -> None:
    """Replace the file at `path` with `data` in one rename, on disk when this returns.

    The data goes to a temporary file beside it (`.<name>.<pid>.tmp`, removed if anything fails),
    which is synced and renamed over `path`, and then the directory is synced. Readers, and a
    start after a crash, see the old file or the new one; a process that opened or mapped the old
    file keeps reading the old inode.
    """
    target = Path(path)
    temp = temporary_path(target, os.getpid())
    try:
        write_synced(temp, data, mode)
        os.replace(temp, target)
    except BaseException:  # a stop (SIGTERM) in the middle too: leave no temporary file
        temp.unlink(missing_ok=True)
        raise
    sync_directory(target.parent)


def temporary_path(target: Path, pid: int) -> Path:
    """Where process `pid` writes the new content of `target` before the rename (replace_synced)."""
    return target.with_name(f".{target.name}.{pid}.tmp")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary files of `target` left by processes that no longer run (killed mid-write).

    Those of live processes are kept: they may be writing now. Returns what was removed.
    """
    return remove_stale_temporaries_in(target.parent, target.name)


def remove_stale_temporaries_in(directory: Path, name: str = "*") -> list[Path]:
    """remove_stale_temporaries for the files of `directory` called `name` (a glob: every file, written or not)."""
    removed = []
    for temp in directory.glob(f".{name}.*.tmp") if directory.is_dir() else ():
        pid = temp.name[: -len(".tmp")].rpartition(".")[2]
        if pid.isdigit() and not _running(int(pid)):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
