"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/embeddings and the model list.

Errors keep OpenAI's shape (the default in errors.py); bodies go to the backend
as they are, after the pipeline's routing, preparation and context guard.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.http.appkeys import REGISTRY
from gateway.http.middleware import free_of_key_limits
from gateway.http.pipeline import allowed, json_response, read_json_body, resolve, run
from gateway.lifecycle.manager import residence_fields
from gateway.plan.placement import max_concurrency
from gateway.routing.backends import Backend, Route

from . import anthropic

# Clients differ on the trailing slash; both spellings work.
GENERATING_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def model_card(b: Backend, default: bool) -> dict:
    window = b.max_model_len
    return {
        "id": b.name,
        "object": "model",
        "created": 0,
        "owned_by": "localai",
        "aliases": b.aliases,
        "default": default,
        "task": b.model.task,
        "max_model_len": window,
        # Prompt tokens the gateway lets through (before max_tokens); clients can budget with it.
        "context_limit": int(window * b.model.context_limit) if window else None,
        "state": b.state.value,
        "state_reason": b.reason,
        # Requests it takes at once now: the sum of its ready replicas' (each card says its own).
        "max_concurrency": b.slots.limit,
        "replicas": replica_cards(b),
        **residence_fields(b),
    }


def replica_cards(b: Backend) -> list[dict]:
    """Each server of the model: where (host:port; the list is for key holders, like /health's
    reasons), its state and the requests it serves now. A lone replica is the model itself, so it
    shows the model's state (which the model lifecycle may set); the balancer takes a replica
    whose breaker is open out, so it shows as `unreachable`. `draining`: an operator drained it
    (`localai drain`): its state stays its server's, and it takes no new request (no slots)."""
    if len(b.replicas) == 1:
        r = b.replicas[0]
        return [{"host": r.host, "address": r.address, "state": b.state.value, "state_reason": b.reason,
                 "in_flight": r.in_flight, "max_concurrency": b.slots.limit, "draining": False}]
    per_replica = max_concurrency(b.model)
    now = time.monotonic()
    cards = []
    for r in b.replicas:
        out = r.ready and r.breaker(now) == "open"
        cards.append({"host": r.host, "address": r.address, "state": "unreachable" if out else r.state,
                      "state_reason": f"{r.failures} requests in a row could not reach it" if out else r.reason,
                      "in_flight": r.in_flight, "max_concurrency": per_replica if r.serving else 0,
                      "draining": r.draining})
    return cards


def preset_card(name: str, route: Route) -> dict:
    # Presets are shown like models, saying which model they use and with what defaults.
    return {**model_card(route.backend, False), "id": name, "aliases": [],
            "preset_of": route.backend.name, "defaults": route.defaults}


@free_of_key_limits
async def list_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    if anthropic.asks_anthropic(request):
        return json_response(anthropic.model_list(registry, lambda b: allowed(request, b)))
    # A key with `models` sees those alone (and their presets): the WebUI's picker reads this list.
    data = [model_card(b, b is registry.default) for b in registry.backends.values() if allowed(request, b)]
    data += [preset_card(name, route) for name, route in registry.presets() if allowed(request, route.backend)]
    return json_response({"object": "list", "data": data})


@free_of_key_limits
async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one card, by name, alias or preset (404 model_not_found otherwise)."""
    registry = request.app[REGISTRY]
    name = request.match_info["model"]
    route = resolve(request, name)
    if anthropic.asks_anthropic(request):
        return json_response(anthropic.model_entry(name if name in route.backend.model.presets
                                                   else route.backend.name))
    if name in route.backend.model.presets:
        return json_response(preset_card(name, route))
    return json_response(model_card(route.backend, route.backend is registry.default))


async def generate(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings (with or without a trailing slash)."""
    endpoint = request.path.rstrip("/")
    return await run(request, endpoint, await read_json_body(request))


def add_routes(app: web.Application) -> None:
    for path in GENERATING_PATHS:
        app.router.add_post(path, generate)
        app.router.add_post(path + "/", generate)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)  # ids may hold slashes (Qwen/...)
