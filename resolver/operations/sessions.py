"""Sign-in sessions of the /ui/ pages: a token given once becomes an HMAC-signed cookie bound to it, never the token.

The cookie holds the token's name, when the session ends and an HMAC-SHA256 over both and the
token's hash, under a key made at the process's start and kept in memory only. So a session
ends when it expires, when the token is revoked or replaced (its hash in the tokens file is no
longer the one signed), and when the server restarts; it cannot be forged without the key, and it
is no token: a stolen cookie is worth at most the rest of its session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from resolver.operations import tokens

COOKIE = "schooldns_session"
SESSION_SECONDS = 8 * 3600  # a working day


class Sessions:
    """Issues and checks session cookie values."""

    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time):
        self._key = key or secrets.token_bytes(32)
        self.clock = clock

    def issue(self, name: str, token_sha256: str) -> str:
        """A cookie value for the token called `name`, whose secret hashes to `token_sha256`."""
        ends = int(self.clock()) + SESSION_SECONDS
        return f"{name}.{ends}.{self._mac(name, ends, token_sha256)}"

    def check(self, value: str | None, known: tokens.Tokens) -> tokens.Token | None:
        """The token a cookie value's session belongs to; None if it is not one, has ended or its token is gone."""
        if not value or value.count(".") < 2:
            return None
        name, ends_text, mac = value.rsplit(".", 2)  # a token's name may hold dots
        if not ends_text.isdigit() or int(ends_text) <= self.clock():
            return None
        token = next((token for token in known.by_hash.values() if token.name == name), None)
        if token is None or not hmac.compare_digest(mac, self._mac(name, int(ends_text), token.sha256)):
            return None
        return token

    def _mac(self, name: str, ends: int, token_sha256: str) -> str:
        return hmac.new(self._key, f"{name}\n{ends}\n{token_sha256}".encode(), hashlib.sha256).hexdigest()
