"""Admin API and DoH tokens: add, list, revoke (the file's reading and its roles are resolver.tokenfile's)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from resolver import durable
from resolver.errors import UsageError
from resolver.tokenfile import NAME_RE, Role, RoleKind, Token, TokenFile, TokenFileError, Tokens, digest, load

__all__ = [
    "TOKEN_PREFIX",
    "Role",
    "RoleKind",
    "Token",
    "TokenFile",
    "TokenFileError",
    "Tokens",
    "add",
    "digest",
    "load",
    "revoke",
]

# A token is 32 random bytes (256 bits), so one SHA-256 is enough to store it: a slow password
# hash defends guessable secrets, and nobody can guess these. The prefix makes a leaked token
# recognisable in a paste or a secret scanner.
TOKEN_PREFIX = "sdns_"


def add(path: Path, role: Role, name: str | None = None) -> tuple[Token, str]:
    """Add a token with `role`; returns it and its secret, which exists nowhere else (print it once)."""
    if name is not None and not NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use lower-case letters, digits, '.', '_' and '-' (at most 63)")
    with _locked(path):
        current = load(path)
        taken = {token.name for token in current.by_hash.values()}
        if name is None:
            stem = str(role).replace(":", "-")
            name = next(f"{stem}-{n}" for n in range(1, len(taken) + 2) if f"{stem}-{n}" not in taken)
        elif name in taken:
            raise UsageError(f"a token named {name!r} exists already in {path}; revoke it first or pick another name")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = Token(name, role, digest(secret), round(time.time(), 3))
        _write(path, [*current.by_hash.values(), token])
    return token, secret


def revoke(path: Path, name: str) -> Token:
    """Remove the token called `name`; UsageError naming the known ones if there is none."""
    with _locked(path):
        current = load(path)
        kept = [token for token in current.by_hash.values() if token.name != name]
        if len(kept) == len(current.by_hash):
            known = ", ".join(token.name for token in current.tokens) or "none"
            raise UsageError(f"no token named {name!r} in {path} (known: {known})")
        _write(path, kept)
    return next(token for token in current.by_hash.values() if token.name == name)


def _write(path: Path, tokens: list[Token]) -> None:
    entries = [
        {"name": t.name, "role": str(t.role), "sha256": t.sha256, "created": t.created}
        for t in sorted(tokens, key=lambda token: token.name)
    ]
    text = "# schooldns admin API tokens: written by `schooldns token`; only hashes, never the tokens.\n"
    text += yaml.safe_dump({"tokens": entries}, sort_keys=False, allow_unicode=True)
    durable.replace_synced(path, text.encode(), mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise the commands that change the tokens file (two `token add` at once keep both)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
