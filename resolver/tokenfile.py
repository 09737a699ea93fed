"""Used by every plane: the tokens file (only SHA-256 hashes of tokens, mode 0600) and its roles, read and watched.

`schooldns token` writes it (resolver.operations.tokens); the admin API reads its admin roles and
a worker's DoH listener its `doh:<school>` tokens, each school's devices off the school network.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import re
import stat
from pathlib import Path

from resolver import yamlfile
from resolver.errors import ResolverError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SCHOOL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class TokenFileError(ResolverError):
    """The tokens file cannot be used: unreadable, malformed, or readable by other users."""


class RoleKind(enum.Enum):
    PROVINCE = "province"  # everything
    SCHOOL = "school"  # one school's policy, explain and audit
    VIEWER = "viewer"  # read only
    DOH = "doh"  # no admin API at all: asks DNS over HTTPS as one school's device, at /dns-query/<token>


@dataclasses.dataclass(frozen=True, slots=True)
class Role:
    """What a token may do: `province`, `viewer`, `school:<id>` (the admin API) or `doh:<id>` (DoH only)."""

    kind: RoleKind
    school: str | None = None  # only for RoleKind.SCHOOL and RoleKind.DOH

    @classmethod
    def parse(cls, text: str) -> Role:
        """A role as written on the command line or in the tokens file; ValueError saying what is allowed."""
        kind, _, school = text.partition(":")
        if kind in (RoleKind.SCHOOL.value, RoleKind.DOH.value) and _SCHOOL_RE.match(school):
            return cls(RoleKind(kind), school)
        if not school and kind in (RoleKind.PROVINCE.value, RoleKind.VIEWER.value):
            return cls(RoleKind(kind))
        raise ValueError(f"unknown role {text!r}: expected province, viewer, school:<school-id> or doh:<school-id>")

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.school}" if self.school else self.kind.value

    @property
    def is_admin(self) -> bool:
        """May this token use the admin API at all? Not a DoH token: it sits on pupils' devices."""
        return self.kind is not RoleKind.DOH

    def may_read_school(self, school_id: str) -> bool:
        return self.is_admin and (self.kind is not RoleKind.SCHOOL or self.school == school_id)

    def may_write_school(self, school_id: str) -> bool:
        return self.kind is RoleKind.PROVINCE or (self.kind is RoleKind.SCHOOL and self.school == school_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """One entry of the tokens file: never the secret, only its hash."""

    name: str
    role: Role
    sha256: str
    created: float  # time.time()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of one file, looked up by the hash of a presented secret."""

    path: Path
    by_hash: dict[str, Token]

    @property
    def tokens(self) -> list[Token]:
        return sorted(self.by_hash.values(), key=lambda token: token.name)

    def find(self, secret: str) -> Token | None:
        """The token whose secret this is; None for an unknown one."""
        return self.by_hash.get(digest(secret))


def load(path: Path) -> Tokens:
    """The tokens file at `path` (no file: no tokens); TokenFileError if others may read it, ConfigError if broken."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            text = file.read().decode("utf-8")
    except FileNotFoundError:
        return Tokens(path, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: cannot read the tokens file: {exc}") from None
    if mode & 0o077:
        raise TokenFileError(
            f"{path}: the tokens file is readable by other users (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    return Tokens(path, _parse(text, str(path)))


def _parse(text: str, file: str) -> dict[str, Token]:
    doc = yamlfile.parse_yaml(text, file)
    if doc.data is None:
        return {}
    top = doc.section()
    out: dict[str, Token] = {}
    names: set[str] = set()
    for i, entry in enumerate(top.raw("tokens", []) or []):
        key: yamlfile.Key = ("tokens", i)
        if not isinstance(entry, dict):
            doc.fail(key, "expected a mapping with name, role, sha256 and created")
            continue
        section = doc.section(key)
        name = section.typed("name", str, "")
        role_text = section.typed("role", str, "")
        sha = section.typed("sha256", str, "")
        created = section.typed("created", (int, float), 0)
        section.done()
        try:
            role = Role.parse(role_text)
        except ValueError as exc:
            doc.fail((*key, "role"), str(exc))
            continue
        if not NAME_RE.match(name) or name in names:
            doc.fail((*key, "name"), f"expected a unique name of [a-z0-9._-], got {name!r}")
        elif not re.fullmatch(r"[0-9a-f]{64}", sha):
            doc.fail((*key, "sha256"), "expected the 64 hex digits of a SHA-256")
        else:
            names.add(name)
            out[sha] = Token(name, role, sha, float(created))
    top.done()
    doc.raise_if_failed()
    return out


class TokenFile:
    """The tokens file as a server reads it: loaded again when it changes on disk (a `token add` or
    `token revoke` takes effect at the next request). While it is broken no token is accepted and
    `problem` says why: a file readable by others may have been tampered with."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple[int, ...] | None = None
        self._tokens = Tokens(path, {})
        self.problem: str | None = None  # why the file on disk is not in use, while it is broken

    def current(self) -> Tokens:
        seen: tuple[int, ...]
        try:
            st = os.stat(self.path)
            # The change time too: a chmod that makes the file readable by others changes nothing else.
            seen = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            seen = ()
        if seen != self._seen:
            try:
                self._tokens = load(self.path)
                self.problem = None
            except ResolverError as exc:
                self._tokens = Tokens(self.path, {})
                self.problem = str(exc)
            self._seen = seen
        return self._tokens
