"""Operators' routes, for the keys in gateway.admin_keys: draining a model's replica before its
server restarts (a rolling restart: the playbook's, or `localai drain` / `localai undrain`).

    POST /v1/admin/models/{model}/replicas/{n}/drain    {"wait": S, "force": false}
    POST /v1/admin/models/{model}/replicas/{n}/undrain  {"wait": S}

Drain: the replica gets no new request (Backend.drain); with `wait`, the answer comes once its
requests in flight are done, or after S seconds (then `in_flight` says how many are left).
Undrain: it takes new requests again; with `wait`, the answer comes once its health checks say it
serves, or after S seconds (then `state` says why not). Either answers the replica's card
(GET /v1/models's) with the model and its number.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiohttp import web

from gateway.base.errors import ApiError
from gateway.http.appkeys import KEY_NAME
from gateway.http.families.openai import replica_cards
from gateway.http.middleware import is_admin
from gateway.http.pipeline import json_response, read_json_body, resolve
from gateway.routing.backends import Backend
from gateway.routing.balancer import Replica

# The longest a call waits: a drain outlasts the longest answer in flight (read_timeout's default).
MAX_WAIT_S = 3600.0


def _admin_only(request: web.Request) -> None:
    if not is_admin(request):
        raise ApiError(403, f"API key '{request.get(KEY_NAME, '')}' may not drain replicas; that is for the keys in "
                            "gateway.admin_keys.", code="admin_only", type="permission_error")


async def _target(request: web.Request) -> tuple[Backend, int, dict]:
    """The model, the replica's number and the body's settings, checked. Raises ApiError."""
    _admin_only(request)
    body = await read_json_body(request)
    wait = body.get("wait", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT_S:
        raise ApiError(400, f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S:g}.",
                       code="invalid_value", param="wait")
    if not isinstance(body.get("force", False), bool):
        raise ApiError(400, "'force' must be true or false.", code="invalid_type", param="force")
    try:
        n = int(request.match_info["n"])
    except ValueError:
        raise ApiError(404, f"'{request.match_info['n']}' is not a replica number.", code="replica_not_found",
                       param="replica") from None
    return resolve(request, request.match_info["model"]).backend, n, body


async def _until(replica: Replica, done: Callable[[], bool], wait: float) -> None:
    """Until done() holds, or `wait` seconds; the answer then says which."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while not done():
                replica.changed.clear()
                await replica.changed.wait()


def _answer(backend: Backend, n: int) -> web.Response:
    cards = replica_cards(backend)  # a reload while it waited may have changed the replicas
    return json_response({"model": backend.name, "replica": n, **(cards[n] if n < len(cards) else {})})


async def drain(request: web.Request) -> web.Response:
    backend, n, body = await _target(request)
    replica = backend.drain(n, force=body.get("force", False))
    await _until(replica, lambda: replica.in_flight == 0, body.get("wait", 0))
    return _answer(backend, n)


async def undrain(request: web.Request) -> web.Response:
    backend, n, body = await _target(request)
    replica = backend.undrain(n)
    await _until(replica, lambda: replica.serving, body.get("wait", 0))
    return _answer(backend, n)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/models/{model}/replicas/{n}/drain", drain)
    app.router.add_post("/v1/admin/models/{model}/replicas/{n}/undrain", undrain)
