"""The RPZ feed's TSIG keys file: strict YAML -> keys; refused whole when malformed or readable by other users."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import stat
from pathlib import Path

from resolver import yamlfile
from resolver.errors import ResolverError

TSIG_ALGORITHMS = ("hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
_KEY_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*")


class TsigKeysError(ResolverError):
    """The TSIG keys file cannot be used: unreadable, malformed, or readable by other users."""


@dataclasses.dataclass(frozen=True, slots=True)
class TsigKey:
    """One key of the TSIG keys file."""

    name: str  # lower case, without the trailing dot
    algorithm: str  # one of TSIG_ALGORITHMS
    secret: bytes = dataclasses.field(repr=False)


def load(path: Path) -> tuple[TsigKey, ...]:
    """The keys of `path` (YAML: `keys: [{name, algorithm, secret}]`); TsigKeysError saying what is wrong."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            text = file.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TsigKeysError(f"{path}: cannot read the TSIG keys file: {exc}") from None
    if mode & 0o077:
        raise TsigKeysError(
            f"{path}: the TSIG keys file is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    doc = yamlfile.parse_yaml(text, str(path))
    top = doc.section()
    keys: list[TsigKey] = []
    for key, entry in top.items("keys"):
        if not isinstance(entry, dict):
            doc.fail(key, "expected a mapping with name, algorithm and secret")
            continue
        section = doc.section(key)
        name = section.typed("name", str, "").lower().removesuffix(".")
        algorithm = section.typed("algorithm", str, "hmac-sha256").lower()
        secret_text = section.typed("secret", str, "")
        section.done()
        if not _KEY_NAME.fullmatch(name) or name in {k.name for k in keys}:
            section.fail("name", f"expected a unique key name such as isp-one.rpz, got {name!r}")
            continue
        if algorithm not in TSIG_ALGORITHMS:
            section.fail("algorithm", f"expected one of {', '.join(TSIG_ALGORITHMS)}, got {algorithm!r}")
            continue
        try:
            secret = base64.b64decode(secret_text, validate=True)
        except binascii.Error:
            secret = b""
        if len(secret) < 16:
            section.fail("secret", "expected at least 16 bytes in base64 (e.g. the output of: openssl rand -base64 32)")
            continue
        keys.append(TsigKey(name, algorithm, secret))
    top.done()
    if not keys and not doc.problems:
        doc.fail(("keys",), "no keys: remove tsig_keys_file from the config, or add a key")
    try:
        doc.raise_if_failed()
    except yamlfile.ConfigError as exc:
        raise TsigKeysError(str(exc)) from None
    return tuple(keys)
