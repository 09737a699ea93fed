"""The admin API client of `schooldns status` and `reload`: one request with a token, any failure in one line."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from resolver.control import config
from resolver.errors import ResolverError, UsageError

TOKEN_ENV = "SCHOOLDNS_TOKEN"
TIMEOUT_SECONDS = 30.0  # a reload may compile lists first
MAX_ANSWER_BYTES = 1 << 20


class ApiError(ResolverError):
    """The server could not be reached, refused the token, or answered with an error."""


def token_from(token_file: str | None) -> str:
    """The token from --token-file, else from $SCHOOLDNS_TOKEN; UsageError saying how to give one."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file: cannot read {token_file}: {exc}") from None
        if not text:
            raise UsageError(f"--token-file: {token_file} is empty")
        return text
    text = os.environ.get(TOKEN_ENV, "").strip()
    if not text:
        raise UsageError(
            f"no token: pass --token-file FILE or set {TOKEN_ENV} "
            "(make one with `schooldns token add --config C --role province`)"
        )
    return text


def base_url(cfg: config.Config) -> str:
    """http://host:port of the admin API that the config's `admin.listen` names."""
    address = cfg.admin.listen
    if address is None:
        raise UsageError(f"{cfg.file} has no admin.listen: the server has no admin API to ask")
    host = address.host
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"


def call(cfg: config.Config, method: str, path: str, token: str) -> dict[str, Any]:
    """The JSON object the API answers to `method path`; ApiError (one line) on any failure."""
    url = base_url(cfg) + path
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            body = answer.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        message = _message(exc.read(MAX_ANSWER_BYTES)) or exc.reason
        if exc.code == 401:
            message = f"the token was refused ({message})"
        raise ApiError(f"{url}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"no admin API answers at {url} (admin.listen in {cfg.file}): {reason}") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(f"{url}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(f"{url}: the answer is not a JSON object")
    return data


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return str(data.get("message", "")) if isinstance(data, dict) else ""
