"""The gateway's own endpoints: liveness with each model's state (/health), readiness
(/ready), and the Prometheus metrics (/metrics)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.base.errors import ApiError
from gateway.http.appkeys import ACCESS, METRICS, REGISTRY
from gateway.http.middleware import free_of_key_limits
from gateway.http.pipeline import json_response
from gateway.keys.auth import check_key
from gateway.routing.states import State


def _holds_key(request: web.Request) -> bool:
    keyring = request.app[ACCESS].keyring
    if not keyring:
        return True  # an open gateway shows everything to everyone
    try:
        check_key(keyring, request)
    except ApiError:
        return False
    return True


async def health(request: web.Request) -> web.Response:
    """Liveness and each model's state, for probes that carry no key. Why a model is down
    (backend URLs, exception text) only for a caller that could read /v1/models anyway."""
    registry = request.app[REGISTRY]
    if _holds_key(request):
        models = {name: b.describe() for name, b in registry.backends.items()}
    else:
        models = {name: {"state": b.state.value} for name, b in registry.backends.items()}
    return json_response({"status": "ok", "models": models})


async def ready(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    ready_models = [n for n, b in registry.backends.items() if b.state is State.READY]
    # load: on_demand models off the card serve too: a request brings them in.
    on_demand = [n for n, b in registry.backends.items() if b.state in (State.SLEEPING, State.STOPPED)]
    serving = ready_models or on_demand
    return json_response({"status": "ready" if serving else "not ready", "ready": ready_models,
                          "on_demand": on_demand}, status=200 if serving else 503)


@free_of_key_limits
async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
