"""How a request proves it has an API key, and which key (by name) it is."""

from __future__ import annotations

from aiohttp import web

from gateway.base.errors import ApiError
from gateway.keys.keyring import Keyring


def presented_key(request: web.Request) -> bytes | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip().encode()
    api_key = request.headers.get("x-api-key")
    return api_key.strip().encode() if api_key else None


def check_key(keyring: Keyring, request: web.Request) -> str:
    """The name of the key the request carries; a 401 unless it is one of the keyring's."""
    given = presented_key(request)
    if given is None:
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       code="invalid_api_key", type="authentication_error")
    name = keyring.name_of(given)
    if name is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key",
                       type="authentication_error")
    return name
