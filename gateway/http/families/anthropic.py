"""The Anthropic Messages API: POST /v1/messages and /v1/messages/count_tokens.

Claude Code and the anthropic SDKs speak it.  vLLM serves both paths itself, so
the gateway checks the body, routes it by `model` and carries it through the
same pipeline as /v1/chat/completions (admission, context guard, logs, metrics,
cancel-on-disconnect).  Streams are Anthropic's named SSE events, passed through
as they come; their usage (message_start, message_delta) is what gets counted.
Every error on these paths, and on GET /v1/models asked with `anthropic-version`,
leaves in Anthropic's shape, so the SDKs raise their typed exceptions.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web

from gateway.base.errors import ApiError, error_message, register_error_shape, reshaped_headers
from gateway.http.context import MESSAGES
from gateway.http.pipeline import COUNT_TOKENS, read_json_body, run
from gateway.routing.backends import Backend, Registry

# Anthropic's error types, by the status they come with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",  # a model loading or down: the SDKs retry it, after Retry-After
    529: "overloaded_error",
}
# Anthropic's models list has dates; the gateway's models have none to tell.
_EPOCH = "1970-01-01T00:00:00Z"


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def asks_anthropic(request: web.Request) -> bool:
    """An Anthropic client: its SDKs and Claude Code send anthropic-version on every request."""
    return "anthropic-version" in request.headers


def anthropic_error(response: web.Response) -> web.Response:
    """An error response (ours, aiohttp's or a backend's) in Anthropic's shape."""
    body = {"type": "error", "error": {"type": error_type(response.status), "message": error_message(response)}}
    return web.Response(status=response.status, body=orjson.dumps(body), content_type="application/json",
                        headers=reshaped_headers(response))


def stream_error(message: str) -> bytes:
    """The last event of a stream its backend broke off: Anthropic's `error` event."""
    data = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    return b"event: error\ndata: " + data + b"\n\n"


# --- bad input: caught before anything is forwarded -------------------------------------
# Field types are checked by the pipeline (validation.ANTHROPIC_*); here what Anthropic's API
# requires besides them: a model always (no default model, unlike OpenAI's clients), max_tokens.


def _require(body: dict, *names: str) -> None:
    for name in names:
        if body.get(name) in (None, ""):
            raise ApiError(400, f"'{name}' is required.", code="invalid_type", param=name)


# --- handlers ------------------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages (Claude Code adds ?beta=true; the query changes nothing here)."""
    body = await read_json_body(request)
    _require(body, "model", "max_tokens")
    return await run(request, MESSAGES, body, stream_error=stream_error)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages/count_tokens: counted by the model's own server."""
    body = await read_json_body(request)
    _require(body, "model")
    if "stream" in body:
        raise ApiError(400, "count_tokens does not stream; leave 'stream' out.", code="invalid_value",
                       param="stream")
    return await run(request, COUNT_TOKENS, body)


def model_list(registry: Registry, allowed: Callable[[Backend], bool]) -> dict:
    """GET /v1/models for Anthropic clients: every model and preset served that the key may use, one page."""
    names = [*(name for name, b in registry.backends.items() if allowed(b)),
             *(name for name, route in registry.presets() if allowed(route.backend))]
    data = [model_entry(name) for name in names]
    return {"data": data, "has_more": False,
            "first_id": names[0] if names else None, "last_id": names[-1] if names else None}


def model_entry(name: str) -> dict:
    return {"type": "model", "id": name, "display_name": name, "created_at": _EPOCH}


def add_routes(app: web.Application) -> None:
    register_error_shape(app, MESSAGES, anthropic_error)
    # The models list is the OpenAI family's route; it answers Anthropic clients in their shape.
    register_error_shape(app, "/v1/models", anthropic_error, when=asks_anthropic)
    for path, handler in ((MESSAGES, messages), (COUNT_TOKENS, count_tokens)):
        app.router.add_post(path, handler)
        app.router.add_post(path + "/", handler)
