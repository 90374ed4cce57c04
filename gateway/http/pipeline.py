"""The request path, top to bottom: parse -> route -> prepare -> guard -> admit -> proxy.

Auth, the key's limits and accounting wrap it as middlewares (http/middleware.py): a key over
its limits is turned away before its handler reads the body. Every API family
(gateway/http/families/) comes through `run()`, so they all share routing,
admission, the context guard, logs and metrics.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from gateway.base.errors import ApiError
from gateway.config.schema import ManagedModel
from gateway.http import validation
from gateway.http.appkeys import (
    ACCESS,
    ACCOUNT,
    BATCH_LANE,
    CONFIG,
    KEY_NAME,
    LIFECYCLE,
    METRICS,
    MONITOR,
    REGISTRY,
    SESSION,
    UNREAD_BODY,
)
from gateway.http.context import MESSAGES, Guarded, guard
from gateway.http.proxy import Adapter, StreamError, forward
from gateway.http.waiting import serve_on_demand
from gateway.routing.backends import Backend, Registry, Route
from gateway.routing.balancer import affinity_key

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
# vLLM's own endpoints, served as vLLM spells them (its /v1/ spellings are aliases).
RERANK = "/rerank"
SCORE = "/score"
TOKENIZE = "/tokenize"
DETOKENIZE = "/detokenize"
# The model tasks that serve each endpoint; generating models serve the rest.
# vLLM scores with a cross-encoder (task score) or by embedding similarity (task embed).
_ENDPOINT_TASKS = {
    EMBEDDINGS: ("embed",),
    RERANK: ("embed", "score"),
    SCORE: ("embed", "score"),
    TOKENIZE: ("generate", "embed", "score"),
    DETOKENIZE: ("generate", "embed", "score"),
}
# Endpoints that generate, and so take a preset's sampling defaults.
_GENERATING = (CHAT, COMPLETIONS, RESPONSES, MESSAGES)
COUNT_TOKENS = MESSAGES + "/count_tokens"
# The error code of a batch line stopped for interactive requests (gateway.batch_yield idle): the
# runner sends it again, not counted as a try (batch.py).
BATCH_STOPPED = "batch_preempted"
# Paths whose prompts the default context guard holds to the window.
_GUARDED = (CHAT, COMPLETIONS, MESSAGES)
_FIM_SLOTS = re.compile(r"(\{prefix\}|\{suffix\})")


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def require_json(request: web.Request) -> None:
    """A 415 unless the body is declared JSON. That is also what keeps web pages out: a browser
    sends a page's cross-site POST unasked only as text/plain, a form or an untyped blob, and
    asks first (a CORS preflight, which the gateway never grants) before it sends JSON."""
    if request.content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, not '{request.content_type}'.",
                       code="unsupported_media_type")


async def read_json_body(request: web.Request) -> dict:
    require_json(request)
    return parse_json_object(await read_in_time(request))


async def read_in_time(request: web.Request) -> bytes:
    """The whole body (413 past gateway.max_body_bytes), within gateway.body_timeout of its head:
    a body that trickles in would otherwise hold its connection, and the key's slot, for good."""
    return await BodyClock(request).read(request.read())


T = TypeVar("T")


class BodyClock:
    """The deadline of a request body's reads, gateway.body_timeout from the first; each byte read
    moves it on by 1/min_rate s (an upload, which may take long as a whole). Past it: 408, and the
    connection is closed after the answer (the rest of the body may still be on its way)."""

    def __init__(self, request: web.Request, min_rate: float = math.inf):
        self.request = request
        self.seconds = request.app[CONFIG].gateway.body_timeout
        self.until = time.monotonic() + self.seconds
        self.min_rate = min_rate

    async def read(self, step: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.until - time.monotonic()):
                got = await step
        except TimeoutError:
            self.request[UNREAD_BODY] = True
            raise ApiError(408, f"The request body did not arrive within {self.seconds:g} s "
                                "(gateway.body_timeout).", code="body_timeout") from None
        if isinstance(got, bytes):
            self.until += len(got) / self.min_rate
        return got


def parse_json_object(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


_RULES = {CHAT: validation.CHAT, COMPLETIONS: validation.COMPLETIONS, EMBEDDINGS: validation.EMBEDDINGS,
          MESSAGES: validation.ANTHROPIC_MESSAGES, COUNT_TOKENS: validation.ANTHROPIC_COUNT_TOKENS}
_REQUIRED = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input", MESSAGES: "messages",
             COUNT_TOKENS: "messages"}


def allowed(request: web.Request, backend: Backend) -> bool:
    """Whether the request's key may use this model (its `models` in gateway.key_limits); a
    preset or alias is the model it names."""
    return request.app[ACCESS].limiter.allows(request.get(KEY_NAME, ""), backend.name)


def resolve(request: web.Request, model: object) -> Route:
    """Registry.resolve, for this request's key: a model outside the key's `models` answers as
    one that does not exist (404 model_not_found), and the names offered are the key's."""
    registry: Registry = request.app[REGISTRY]
    try:
        route = registry.resolve(model)
    except ApiError as exc:
        if exc.code != "model_not_found":
            raise
        route = None
    if route is None or not allowed(request, route.backend):
        known = ", ".join(sorted(b.name for b in registry.backends.values() if allowed(request, b)))
        raise ApiError(404, f"The model '{model}' does not exist. Available models: {known or 'none'}.",
                       code="model_not_found", param="model")
    return route


def _fill_in_the_middle(backend: Backend, body: dict) -> dict:
    """vLLM rejects `suffix`; turn prompt + suffix into the model's own FIM prompt."""
    template = backend.model.fim_template
    if template is None:
        raise ApiError(400, f"Model '{backend.name}' does not support fill-in-the-middle ('suffix'); "
                            "set 'fim' for it in the config, or use a code model that has it.",
                       code="fim_not_supported", param="suffix")
    prefix = body.get("prompt")
    suffix = body.pop("suffix")
    if not isinstance(prefix, str) or not isinstance(suffix, str):
        raise ApiError(400, "With 'suffix', 'prompt' and 'suffix' must be strings.", code="invalid_type",
                       param="suffix")
    # Split on the placeholders rather than str.format: code is full of braces.
    parts = _FIM_SLOTS.split(template)
    values = {"{prefix}": prefix, "{suffix}": suffix}
    body["prompt"] = "".join(values.get(part, part) for part in parts)
    return body


def check_task(backend: Backend, endpoint: str) -> None:
    """A request only reaches a model whose task serves its endpoint."""
    task = backend.model.task
    if task in _ENDPOINT_TASKS.get(endpoint, ("generate",)):
        return
    if endpoint == EMBEDDINGS:
        raise ApiError(400, f"Model '{backend.name}' is not an embedding model.",
                       code="model_not_embedding", param="model")
    if endpoint in (RERANK, SCORE):
        raise ApiError(400, f"Model '{backend.name}' does not score or rerank; that takes a model with "
                            "task 'score' (a cross-encoder) or 'embed'.", code="model_not_scoring", param="model")
    if task == "embed":
        raise ApiError(400, f"Model '{backend.name}' is an embedding model; use /v1/embeddings.",
                       code="model_is_embedding", param="model")
    raise ApiError(400, f"Model '{backend.name}' is a scoring model; use /v1/rerank or /v1/score.",
                   code="model_is_scoring", param="model")


def prepare(route: Route, endpoint: str, body: dict) -> dict:
    """Make the body what this backend accepts, or say plainly why it can't."""
    backend = route.backend
    model = backend.model
    check_task(backend, endpoint)
    if endpoint in _GENERATING:
        for key, value in route.defaults.items():
            if key == "max_tokens" and endpoint == RESPONSES:
                key = "max_output_tokens"  # the Responses API's name for it
            elif key == "stop" and endpoint == MESSAGES:
                key = "stop_sequences"  # the Messages API's name for it
            body.setdefault(key, value)
    body["model"] = backend.served_id
    if endpoint == COMPLETIONS and body.get("suffix") is not None:
        body = _fill_in_the_middle(backend, body)
    if endpoint in (CHAT, MESSAGES) and body.get("tools") and not _tools_off(body.get("tool_choice")):
        tools_ok = model.tool_call_parser if isinstance(model, ManagedModel) else model.tools
        if not tools_ok:
            raise ApiError(400, f"Model '{backend.name}' has no tool calling configured; set "
                                "'tool_call_parser' for it in the config (e.g. hermes for Qwen2.5).",
                           code="tools_not_supported", param="tools")
    return body


def scheduled_by_priority(backend: Backend) -> bool:
    """Whether the model's vLLM runs with `--scheduling-policy priority` (its extra_args say so):
    only then does it take a request's `priority` (another policy refuses the field)."""
    model = backend.model
    if not isinstance(model, ManagedModel):
        return False
    args = model.extra_args
    return "--scheduling-policy=priority" in args or any(
        a == "--scheduling-policy" and b == "priority" for a, b in zip(args, args[1:], strict=False))


Guard = Callable[[aiohttp.ClientSession, Backend, dict], Awaitable[Guarded]]


def _tools_off(tool_choice: object) -> bool:
    """tool_choice 'none', in OpenAI's spelling or Anthropic's ({"type": "none"})."""
    return tool_choice == "none" or (isinstance(tool_choice, dict) and tool_choice.get("type") == "none")


class admitted:  # lowercase: used like a function, as contextlib's suppress and closing are
    """Hold one of the model's slots for the duration of the upstream request (the key's own
    limits were taken at the door: middleware.py limits_middleware).

    A class, not an @asynccontextmanager: that one costs a generator and its wrapper per
    request (1.35 against 0.29 µs)."""

    __slots__ = ("request", "backend", "key", "low", "in_flight", "held_from", "stop")

    def __init__(self, request: web.Request, backend: Backend):
        self.request = request
        self.backend = backend
        self.key: str = request.get(KEY_NAME, "")
        self.low = request.get(BATCH_LANE, False)  # a batch line: the low lane (docs/batch.md)

    async def __aenter__(self) -> asyncio.Future[None] | None:
        """A batch line's stop signal (admission.py acquire_low), None for an interactive request."""
        request, backend, key = self.request, self.backend, self.key
        metrics = request.app[METRICS]
        waited_from = time.monotonic()
        self.stop = None
        try:
            if self.low:
                self.stop = await backend.slots.acquire_low(key)
            else:
                await backend.slots.acquire(key)
        except ApiError as exc:
            metrics.rejections.labels(backend.name, exc.code).inc()
            raise
        acct = request[ACCOUNT]
        acct.queue_wait = time.monotonic() - waited_from
        metrics.child(metrics.queue_wait, backend.name).observe(acct.queue_wait)
        self.in_flight = metrics.child(metrics.in_flight, backend.name)
        self.in_flight.inc()
        self.held_from = time.monotonic()
        return self.stop

    async def __aexit__(self, *exc_info: object) -> None:
        self.in_flight.dec()
        if self.stop is not None:
            self.backend.slots.release_low(self.key, self.stop)
        else:
            self.backend.slots.release(self.key)
        # The key's GPU time (docs/usage.md): how long it held one of the model's slots.
        self.request[ACCOUNT].slot_seconds += time.monotonic() - self.held_from


async def _unless_stopped(request: web.Request, backend: Backend, call: Coroutine[Any, Any, web.StreamResponse],
                          stop: asyncio.Future[None]) -> web.StreamResponse:
    """A batch line's forward, called off when an interactive request wants its model (stop is set:
    gateway.batch_yield idle). Cancelling it closes the upstream connection, which is how vLLM learns
    to abort the request, streamed or not (its OpenAI routes are wrapped in `with_cancellation`). A
    batch line never streams: its answer is whole before it is written, so nothing reached the
    runner. The runner sends the line again later (batch.py); the work thrown away is no usage row."""
    task = asyncio.create_task(call)
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if not task.cancelled():
        return task.result()
    request[ACCOUNT].discarded = True
    raise ApiError(503, f"Model '{backend.name}' has interactive requests: this batch line runs again later.",
                   code=BATCH_STOPPED, type="server_error")


async def run(request: web.Request, endpoint: str, body: dict, adapter: Adapter | None = None, *,
              guard_with: Guard | None = None, stream_error: StreamError | None = None,
              headers: dict[str, str] | None = None) -> web.StreamResponse:
    """guard_with: the context guard for this API's bodies (chat, completions and messages have the
    default); stream_error: the family's last event for a stream its backend breaks off; headers:
    the family's own for the answer (Ollama's clamped keep_alive)."""
    validation.check(body, _RULES.get(endpoint, {}), _REQUIRED.get(endpoint))
    app = request.app
    registry, metrics = app[REGISTRY], app[METRICS]
    route = resolve(request, body.get("model"))
    backend = route.backend
    acct = request[ACCOUNT]
    acct.model, acct.backend = backend.name, backend.url
    on_demand = app[LIFECYCLE].manages(backend.name)
    try:
        if not on_demand:
            registry.check_serving(backend)
        body = prepare(route, endpoint, body)
        if request.get(BATCH_LANE) and scheduled_by_priority(backend):
            body["priority"] = app[CONFIG].gateway.batch_priority
    except ApiError as exc:
        metrics.rejections.labels(backend.name, exc.code).inc()
        raise

    async def serve(prepared: web.StreamResponse | None) -> web.StreamResponse:
        return await _guarded_forward(request, backend, endpoint, body, adapter, prepared, guard_with,
                                      stream_error, headers or {})

    if on_demand:
        return await serve_on_demand(request, backend, body.get("stream") is True, adapter, serve)
    return await serve(None)


async def _guarded_forward(request: web.Request, backend: Backend, endpoint: str, body: dict,
                           adapter: Adapter | None, prepared: web.StreamResponse | None,
                           guard_with: Guard | None, stream_error: StreamError | None,
                           headers: dict[str, str]) -> web.StreamResponse:
    """Guard -> admit -> proxy, once the model serves."""
    app = request.app
    metrics, acct = app[METRICS], request[ACCOUNT]
    try:
        # After the model is in: an on_demand model's max_model_len may be learnt only then.
        if guard_with is not None:
            guarded = await guard_with(app[SESSION], backend, body)
        elif endpoint in _GUARDED:
            guarded = await guard(app[SESSION], backend, body, endpoint)
        else:  # no prompt to hold to the window: embeddings, scores, tokenize, count_tokens
            guarded = Guarded(body)
    except ApiError as exc:
        metrics.rejections.labels(backend.name, exc.code).inc()
        raise
    headers = dict(headers)
    if guarded.dropped:
        headers["X-LocalAI-Truncated-Messages"] = str(guarded.dropped)
        metrics.truncations.labels(backend.name).inc()
        metrics.dropped_messages.labels(backend.name).inc(guarded.dropped)
    if guarded.max_tokens_capped is not None:
        acct.max_tokens_capped = guarded.max_tokens_capped
        headers["X-LocalAI-Max-Tokens-Capped"] = str(guarded.max_tokens_capped)
    # Only a model with replicas to choose between pays for naming the conversation.
    affinity = affinity_key(guarded.body) if backend.balancer.affine else None
    async with admitted(request, backend) as stop:
        try:
            call = forward(request, backend, endpoint, guarded.body, adapter=adapter, headers=headers,
                           prepared=prepared, stream_error=stream_error, affinity=affinity)
            return await (call if stop is None else _unless_stopped(request, backend, call, stop))
        except ApiError as exc:
            if exc.code == "backend_unreachable":
                app[MONITOR].poke(backend.name)
            raise
