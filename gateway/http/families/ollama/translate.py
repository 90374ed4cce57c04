"""Ollama requests as OpenAI ones on the shared request path: /api/chat, /api/generate, /api/embed."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.base.errors import ApiError
from gateway.config.schema import parse_duration
from gateway.http import validation
from gateway.http.appkeys import ACCOUNT, KEEP_ALIVE, LIFECYCLE, REGISTRY
from gateway.http.pipeline import CHAT, COMPLETIONS, EMBEDDINGS, json_response, resolve, run
from gateway.routing.backends import Registry

from .answers import Embeddings, Reshape
from .common import OPTION_FIELDS, echo_name, known_name, now, read_body

CLAMPED = "X-LocalAI-Keep-Alive-Clamped"


def _sampling(body: dict) -> dict:
    """Ollama `options` and `format` as OpenAI fields."""
    out: dict = {}
    for key, value in (body.get("options") or {}).items():  # typed by validation.OLLAMA_*
        if value is None:
            continue
        if key in OPTION_FIELDS:
            out[OPTION_FIELDS[key]] = value
        elif key == "num_predict":
            if value > 0:  # -1 (until done) and -2 (fill the context) are vLLM's default anyway
                out["max_tokens"] = value
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise ApiError(400, "'format' must be \"json\" or a JSON schema object.", code="invalid_type",
                       param="format")
    return out


def _stream(body: dict) -> bool:
    stream = body.get("stream")
    return True if stream is None else stream  # Ollama streams unless told otherwise


def _no_images(images: object, where: str) -> None:
    if images:
        raise ApiError(400, f"Images ({where}) are not supported on this gateway's Ollama API; send them "
                            "as image_url parts to /v1/chat/completions of a vision model instead.",
                       code="images_not_supported", param=where)


def _tool_calls_to_openai(calls: object, ids: list[tuple[str, str]]) -> list[dict]:
    out = []
    for i, call in enumerate(calls if isinstance(calls, list) else []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise ApiError(400, "Each tool call needs a 'function' with 'name' and 'arguments'.",
                           code="invalid_type", param="messages")
        call_id = call.get("id") or f"call_{len(ids)}_{i}"
        args = fn.get("arguments", {})
        out.append({"id": call_id, "type": "function",
                    "function": {"name": fn.get("name"),
                                 "arguments": args if isinstance(args, str) else json.dumps(args)}})
        ids.append((call_id, str(fn.get("name") or "")))
    return out


def _messages(messages: list) -> list[dict]:
    """Ollama chat messages as OpenAI ones: tool calls get ids, tool results point back at them."""
    out: list[dict] = []
    open_calls: list[tuple[str, str]] = []  # (id, function name) not yet answered
    for m in messages:
        _no_images(m.get("images"), "messages[].images")
        msg = {"role": m.get("role"), "content": m.get("content") or ""}
        if m.get("tool_calls"):
            open_calls = []
            msg["tool_calls"] = _tool_calls_to_openai(m["tool_calls"], open_calls)
        if m.get("role") == "tool":
            wanted = m.get("tool_name") or m.get("name")
            match = next((c for c in open_calls if c[1] == wanted), open_calls[0] if open_calls else None)
            if match:
                open_calls.remove(match)
                msg["tool_call_id"] = match[0]
            else:
                msg["tool_call_id"] = m.get("tool_call_id") or "call_unknown"
        out.append(msg)
    return out


def _managed(registry: Registry, model: object) -> bool:
    try:
        return registry.resolve(model).backend.managed
    except ApiError:
        return False


def _keep_alive(request: web.Request, body: dict, said: dict[str, str]) -> float | None:
    """Ollama's per-request keep_alive (`5m`, seconds, 0 = unload after, negative = never), held to
    gateway.max_keep_alive and kept on the request for the model lifecycle; a clamp is said in `said`
    (the answer's headers) and on the request's log line."""
    if body.get("keep_alive") is None:
        return None
    try:
        asked = parse_duration(body["keep_alive"])
    except ValueError as exc:
        raise ApiError(400, f"'keep_alive' {exc}.", code="invalid_type", param="keep_alive") from None
    seconds = request.app[LIFECYCLE].clamp_keep_alive(asked)
    if seconds != asked:
        said[CLAMPED] = f"{seconds:g}"
        request[ACCOUNT].keep_alive_clamped = seconds
    request[KEEP_ALIVE] = seconds
    return seconds


async def _loaded(request: web.Request, body: dict, kind: str) -> web.Response:
    """A request with nothing to generate: Ollama's way to load a model (or unload it, keep_alive 0)."""
    registry: Registry = request.app[REGISTRY]
    route = resolve(request, known_name(registry, body.get("model")))
    acct = request[ACCOUNT]
    acct.model, acct.backend = route.backend.name, route.backend.url
    said: dict[str, str] = {}
    keep_alive = _keep_alive(request, body, said)
    unload = keep_alive == 0
    lifecycle = request.app[LIFECYCLE]
    if not lifecycle.manages(route.backend.name):
        registry.check_serving(route.backend)  # always loaded: nothing to load or unload
    elif unload:
        await lifecycle.unload(route.backend)
    else:
        async with lifecycle.hold(route.backend, keep_alive):
            pass
    out: dict = {"model": echo_name(registry, body.get("model")), "created_at": now()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason="unload" if unload else "load")
    response = json_response(out)
    response.headers.update(said)
    return response


async def _answer(request: web.Request, body: dict, endpoint: str, out: dict, kind: str) -> web.StreamResponse:
    """Run the translated request; the answer comes back in Ollama's shape for /api/chat or /api/generate."""
    registry: Registry = request.app[REGISTRY]
    said: dict[str, str] = {}
    _keep_alive(request, body, said)
    if endpoint == CHAT and isinstance(body.get("think"), bool) and _managed(registry, out["model"]):
        out["chat_template_kwargs"] = {"enable_thinking": body["think"]}
    if out["stream"]:
        out["stream_options"] = {"include_usage": True}  # for eval_count on the final line
    return await run(request, endpoint, out, adapter=Reshape(echo_name(registry, body.get("model")), kind),
                     headers=said)


async def _generating_request(request: web.Request, rules: validation.Rules) -> tuple[dict, object, bool]:
    """The checked body of /api/chat or /api/generate, the model it names (our spelling) and whether to stream."""
    body = await read_body(request)
    validation.check(body, rules)
    return body, known_name(request.app[REGISTRY], body.get("model")), _stream(body)


async def chat(request: web.Request) -> web.StreamResponse:
    body, model, stream = await _generating_request(request, validation.OLLAMA_CHAT)
    messages = body.get("messages")
    if not messages:
        return await _loaded(request, body, "chat")
    out = {"model": model, "messages": _messages(messages), "stream": stream, **_sampling(body)}
    if body.get("tools"):
        out["tools"] = body["tools"]
    return await _answer(request, body, CHAT, out, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    body, model, stream = await _generating_request(request, validation.OLLAMA_GENERATE)
    registry: Registry = request.app[REGISTRY]
    _no_images(body.get("images"), "images")
    prompt, suffix, system = body.get("prompt") or "", body.get("suffix"), body.get("system")
    if body.get("template"):
        raise ApiError(400, "Custom 'template' is not supported: the model's own chat template is used; "
                            "send raw: true with a fully formatted prompt instead.",
                       code="template_not_supported", param="template")
    if not prompt and not suffix and not system:
        return await _loaded(request, body, "generate")
    sampling = _sampling(body)
    if isinstance(suffix, str) and suffix == "":
        # An empty suffix (cursor at the end of the file) is still fill-in-the-middle
        # for a model that has it; for one that does not it is no suffix at all.
        try:
            has_fim = registry.resolve(model).backend.model.fim_template is not None
        except ApiError:
            has_fim = False
        if not has_fim:
            suffix = None
    if suffix is not None or body.get("raw"):
        # Raw prompt, or fill-in-the-middle through the model's FIM template (pipeline).
        out = {"model": model, "prompt": prompt, "stream": stream, **sampling}
        if suffix is not None:
            out["suffix"] = suffix
        endpoint = COMPLETIONS
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + \
                   ([{"role": "user", "content": prompt}] if prompt else [])
        out = {"model": model, "messages": messages, "stream": stream, **sampling}
        endpoint = CHAT
    return await _answer(request, body, endpoint, out, "generate")


async def embed(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    registry: Registry = request.app[REGISTRY]
    model = known_name(registry, body.get("model"))
    legacy = request.path.rstrip("/") == "/api/embeddings"
    if legacy:
        validation.check(body, validation.OLLAMA_EMBEDDINGS, "prompt")
    else:
        validation.check(body, validation.OLLAMA_EMBED, "input")
    out: dict = {"model": model, "input": body.get("prompt") if legacy else body.get("input")}
    if isinstance(body.get("dimensions"), int):
        out["dimensions"] = body["dimensions"]
    # Ollama truncates over-long input unless told not to; vLLM errors unless asked to truncate.
    if body.get("truncate") is not False and _managed(registry, model):
        out["truncate_prompt_tokens"] = -1
    name = echo_name(registry, body.get("model"))
    return await run(request, EMBEDDINGS, out, adapter=Embeddings(name, legacy))
