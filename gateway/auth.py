"""API keys: where they come from and how a request proves it has one."""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path

from aiohttp import web

from .errors import ApiError

log = logging.getLogger("localai.auth")

KEY_ENV = "LOCALAI_API_KEY"


def load_api_keys(key_file: Path | None) -> list[bytes]:
    """Keys from the key file (one per line, '#' comments) and $LOCALAI_API_KEY."""
    keys: list[str] = []
    if key_file is not None:
        mode = key_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("API key file is readable by others; run: chmod 600 %s", key_file)
        for line in key_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    if os.environ.get(KEY_ENV):
        keys.append(os.environ[KEY_ENV].strip())
    return [k.encode() for k in keys]


def presented_key(request: web.Request) -> bytes | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip().encode()
    api_key = request.headers.get("x-api-key")
    return api_key.strip().encode() if api_key else None


def check_key(keys: list[bytes], request: web.Request) -> None:
    """Raise a 401 unless the request carries one of the keys (constant-time per key)."""
    given = presented_key(request)
    if given is None:
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       code="invalid_api_key", type="authentication_error")
    # Compare against every key, no early exit, so timing does not tell which matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(key, given)
    if not ok:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key",
                       type="authentication_error")
