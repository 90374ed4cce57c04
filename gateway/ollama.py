"""The Ollama API, translated onto the same request path as /v1.

Tools that only speak Ollama (and Continue's Ollama provider, whose autocomplete
sends `suffix` for fill-in-the-middle) point OLLAMA_HOST at the gateway.  Every
generating request becomes an OpenAI body and goes through `pipeline.run`, so
it gets the same routing, admission, context guard, logs and metrics; an
adapter turns the backend's answer into Ollama's JSON or NDJSON stream.

  /api/chat                       -> /v1/chat/completions
  /api/generate                   -> /v1/chat/completions (the model's chat template, as Ollama does)
  /api/generate raw or suffix     -> /v1/completions (suffix: the model's FIM template)
  /api/embed, /api/embeddings     -> /v1/embeddings
  /api/tags, /api/ps, /api/show, /api/version: answered from the registry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
from aiohttp import web

from .backends import Backend, Registry, State
from .config import ManagedModel
from .errors import ApiError
from .keys import ACCOUNT, CONFIG, REGISTRY
from .pipeline import CHAT, COMPLETIONS, EMBEDDINGS, parse_json_object, run

# What /api/version reports: recent enough that clients enable tools, structured
# outputs and /api/embed.
OLLAMA_VERSION = "0.9.0"
NDJSON = "application/x-ndjson"
# Models here stay loaded; /api/ps says so with an expiry that never comes.
_NEVER = "9999-12-31T23:59:59Z"
_STARTED = datetime.now(timezone.utc)

# Ollama option -> OpenAI/vLLM sampling field. Options not listed (num_ctx, num_gpu,
# num_thread, mirostat, ...) steer llama.cpp itself and are ignored.
_OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
# The reverse, to show a preset's defaults as Ollama parameters.
_PARAMETER_NAMES = {v: k for k, v in _OPTION_FIELDS.items()} | {"max_tokens": "num_predict"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# --- errors --------------------------------------------------------------------------


def ollama_error(response: web.StreamResponse) -> web.StreamResponse:
    """An error response (ours or a backend's, OpenAI-shaped) as Ollama's {"error": "message"}."""
    if not isinstance(response, web.Response) or response.prepared:
        return response
    raw = response.body if isinstance(response.body, bytes) else b""
    message = raw.decode(errors="replace").strip() or response.reason or f"HTTP {response.status}"
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        elif isinstance(err, str):
            message = err
        elif isinstance(body.get("message"), str):  # older vLLM: {"object": "error", "message": ...}
            message = body["message"]
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
    return web.Response(status=response.status, body=orjson.dumps({"error": message}),
                        content_type="application/json", headers=headers)


# --- what we know about a model --------------------------------------------------------


def _hf_snapshot(repo_id: str, env: dict[str, str]) -> Path | None:
    """The newest local snapshot of a hub model, in the cache vLLM would use."""
    cache = env.get("HF_HUB_CACHE") or os.environ.get("HF_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
        cache = os.path.join(home, "hub")
    snapshots = Path(cache) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    try:
        found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return found[-1] if found else None


def _human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


@functools.lru_cache(maxsize=64)
def _weights_facts(folder: str) -> dict:
    """Architecture, parameter count, size and dtype read from a model folder (config + safetensors headers)."""
    facts: dict = {}
    root = Path(folder)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if isinstance(config.get("model_type"), str):
        facts["family"] = config["model_type"]
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and isinstance(quant.get("quant_method"), str):
        facts["quantization_level"] = quant["quant_method"]
    params = size = 0
    dtypes: set[str] = set()
    for path in root.glob("*.safetensors"):
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    continue
                header = json.loads(f.read(length))
            size += path.stat().st_size
        except (OSError, ValueError, struct.error):
            continue
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            count = 1
            for dim in tensor.get("shape", []):
                count *= dim
            params += count
            dtypes.add(str(tensor.get("dtype", "")))
    if params:
        facts["parameter_count"] = params
        facts["size"] = size
        if "quantization_level" not in facts and len(dtypes) == 1:
            facts["quantization_level"] = dtypes.pop()  # F32, BF16, F16 ... as Ollama names them
    try:
        facts["modified_at"] = datetime.fromtimestamp((root / "config.json").stat().st_mtime, timezone.utc)
    except OSError:
        pass
    return facts


def _facts(backend: Backend, cfg) -> dict:
    model = backend.model
    if not isinstance(model, ManagedModel):
        return {}
    folder = Path(model.model)
    if not folder.is_dir():
        folder = _hf_snapshot(model.model, {**cfg.vllm.env, **model.env}) or folder
    return _weights_facts(str(folder)) if folder.is_dir() else {}


def _details(backend: Backend, facts: dict, parent: str = "") -> dict:
    family = facts.get("family", "unknown")
    return {
        "parent_model": parent,
        "format": "safetensors" if facts.get("parameter_count") else "unknown",
        "family": family,
        "families": [family],
        "parameter_size": _human_count(facts["parameter_count"]) if facts.get("parameter_count") else "unknown",
        "quantization_level": facts.get("quantization_level") or "unknown",
    }


def _entry(name: str, backend: Backend, facts: dict, parent: str = "") -> dict:
    modified = facts.get("modified_at", _STARTED)
    served = backend.served_model_hint or backend.url
    return {
        "name": name,
        "model": name,
        "modified_at": modified.isoformat().replace("+00:00", "Z"),
        "size": facts.get("size", 0),
        # Not a blob digest (there are no blobs): a stable id for this name and what serves it.
        "digest": hashlib.sha256(f"{name}\0{served}".encode()).hexdigest(),
        "details": _details(backend, facts, parent),
    }


def _capabilities(backend: Backend) -> list[str]:
    model = backend.model
    if model.task == "embed":
        return ["embedding"]
    caps = ["completion"]
    if (model.tool_call_parser if isinstance(model, ManagedModel) else model.tools):
        caps.append("tools")
    if model.fim_template:
        caps.append("insert")
    return caps


def _go_template(backend: Backend) -> str:
    """What the gateway does with a prompt, in the Go template words Ollama clients look for.

    Continue enables fill-in-the-middle when the template mentions .Suffix."""
    chat = "{{/* chat and generate: the model's own chat template, applied by vLLM */}}{{ .Prompt }}"
    fim = backend.model.fim_template
    if not fim:
        return chat
    middle = fim.replace("{prefix}", "{{ .Prompt }}").replace("{suffix}", "{{ .Suffix }}")
    return "{{- if .Suffix }}" + middle + "{{- else }}" + chat + "{{- end }}"


def _parameters(backend: Backend, defaults: dict) -> str:
    lines = []
    if backend.max_model_len:
        lines.append(f"num_ctx {backend.max_model_len}")
    for key, value in defaults.items():
        name = _PARAMETER_NAMES.get(key, key)
        values = value if isinstance(value, list) else [value]
        for v in values:
            lines.append(f"{name} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


# --- listing handlers -------------------------------------------------------------------


async def tags(request: web.Request) -> web.Response:
    registry: Registry = request.app[REGISTRY]
    cfg = request.app[CONFIG]
    models = [_entry(name, b, _facts(b, cfg)) for name, b in registry.backends.items()]
    for name, route in registry.presets():
        models.append(_entry(name, route.backend, _facts(route.backend, cfg), parent=route.backend.name))
    return _json({"models": models})


async def ps(request: web.Request) -> web.Response:
    registry: Registry = request.app[REGISTRY]
    cfg = request.app[CONFIG]
    models = []
    for name, b in registry.backends.items():
        if b.state is not State.READY:
            continue
        entry = _entry(name, b, _facts(b, cfg))
        entry.pop("modified_at")
        entry.update(expires_at=_NEVER, size_vram=0, context_length=b.max_model_len)
        models.append(entry)
    return _json({"models": models})


async def show(request: web.Request) -> web.Response:
    body = await _read_body(request)
    registry: Registry = request.app[REGISTRY]
    name = body.get("model") or body.get("name")  # older clients (Continue) send "name"
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'model' is required.", code="invalid_request", param="model")
    name = _known_name(registry, name)
    route = registry.resolve(name)
    b = route.backend
    facts = _facts(b, request.app[CONFIG])
    arch = facts.get("family", "unknown")
    info: dict = {"general.architecture": arch, "general.basename": b.name}
    if facts.get("parameter_count"):
        info["general.parameter_count"] = facts["parameter_count"]
    if b.max_model_len:
        info[f"{arch}.context_length"] = b.max_model_len
    is_preset = name in {n for n, _ in registry.presets()}
    served = b.served_model_hint or b.served_id
    return _json({
        "modelfile": f"# Served by localai: model '{b.name}' ({served}) on vLLM.\nFROM {served}\n",
        "parameters": _parameters(b, route.defaults),
        "template": _go_template(b),
        "details": _details(b, facts, parent=b.name if is_preset else ""),
        "model_info": info,
        "capabilities": _capabilities(b),
        "modified_at": facts.get("modified_at", _STARTED).isoformat().replace("+00:00", "Z"),
    })


async def version(request: web.Request) -> web.Response:
    return _json({"version": OLLAMA_VERSION})


async def not_here(request: web.Request) -> web.Response:
    raise ApiError(501, f"{request.path} is not available: models are managed in the localai config "
                        "(models: in localai.yaml), not pulled or created through the API.",
                   code="not_supported", type="invalid_request_error")


# --- request translation ------------------------------------------------------------------


async def _read_body(request: web.Request) -> dict:
    """Ollama accepts a JSON body whatever the Content-Type (curl -d sends form-encoded)."""
    raw = await request.read()
    return parse_json_object(raw) if raw.strip() else {}


def _known_name(registry: Registry, name: object) -> object:
    """Ollama clients add ':latest' to bare names; accept that spelling of ours."""
    if isinstance(name, str) and name.endswith(":latest"):
        try:
            registry.resolve(name)
        except ApiError:
            return name[: -len(":latest")]
    return name


def _echo(registry: Registry, requested: object) -> str:
    """The model name answers carry: the one asked for, as Ollama does."""
    return requested if isinstance(requested, str) and requested else registry.default.name


def _sampling(body: dict) -> dict:
    """Ollama `options` and `format` as OpenAI fields."""
    out: dict = {}
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object.", code="invalid_type", param="options")
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in _OPTION_FIELDS:
            out[_OPTION_FIELDS[key]] = value
        elif key == "num_predict":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(400, "'options.num_predict' must be an integer.", code="invalid_type",
                               param="options.num_predict")
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
    if stream is None:
        return True  # Ollama streams unless told otherwise
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", code="invalid_type", param="stream")
    return stream


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
        ids.append((call_id, fn.get("name")))
    return out


def _messages(messages: list) -> list[dict]:
    """Ollama chat messages as OpenAI ones: tool calls get ids, tool results point back at them."""
    out: list[dict] = []
    open_calls: list[tuple[str, str]] = []  # (id, function name) not yet answered
    for m in messages:
        if not isinstance(m, dict):
            raise ApiError(400, "Each message must be an object with 'role' and 'content'.",
                           code="invalid_type", param="messages")
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


async def _loaded(request: web.Request, body: dict, kind: str) -> web.Response:
    """A request with nothing to generate: Ollama's way to load a model (or unload it, keep_alive 0)."""
    registry: Registry = request.app[REGISTRY]
    route = registry.resolve(_known_name(registry, body.get("model")))
    acct = request[ACCOUNT]
    acct.model, acct.backend = route.backend.name, route.backend.url
    registry.check_serving(route.backend)
    unload = body.get("keep_alive") in (0, "0", "0s")
    out: dict = {"model": _echo(registry, body.get("model")), "created_at": _now()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason="unload" if unload else "load")
    return _json(out)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await _read_body(request)
    registry: Registry = request.app[REGISTRY]
    model = _known_name(registry, body.get("model"))
    stream = _stream(body)
    messages = body.get("messages")
    if messages is None or messages == []:
        return await _loaded(request, body, "chat")
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' must be a list.", code="invalid_type", param="messages")
    out = {"model": model, "messages": _messages(messages), "stream": stream, **_sampling(body)}
    if body.get("tools"):
        out["tools"] = body["tools"]
    if isinstance(body.get("think"), bool) and _managed(registry, model):
        out["chat_template_kwargs"] = {"enable_thinking": body["think"]}
    if stream:
        out["stream_options"] = {"include_usage": True}  # for eval_count on the final line
    name = _echo(registry, body.get("model"))
    return await run(request, CHAT, out, adapter=Reshape(name, "chat"))


async def generate(request: web.Request) -> web.StreamResponse:
    body = await _read_body(request)
    registry: Registry = request.app[REGISTRY]
    model = _known_name(registry, body.get("model"))
    stream = _stream(body)
    _no_images(body.get("images"), "images")
    prompt, suffix, system = body.get("prompt") or "", body.get("suffix"), body.get("system")
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string.", code="invalid_type", param="prompt")
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
        if isinstance(body.get("think"), bool) and _managed(registry, model):
            out["chat_template_kwargs"] = {"enable_thinking": body["think"]}
        endpoint = CHAT
    if stream:
        out["stream_options"] = {"include_usage": True}
    name = _echo(registry, body.get("model"))
    return await run(request, endpoint, out, adapter=Reshape(name, "generate"))


async def embed(request: web.Request) -> web.StreamResponse:
    body = await _read_body(request)
    registry: Registry = request.app[REGISTRY]
    model = _known_name(registry, body.get("model"))
    legacy = request.path.rstrip("/") == "/api/embeddings"
    out: dict = {"model": model, "input": body.get("prompt") if legacy else body.get("input")}
    if isinstance(body.get("dimensions"), int):
        out["dimensions"] = body["dimensions"]
    # Ollama truncates over-long input unless told not to; vLLM errors unless asked to truncate.
    if body.get("truncate") is not False and _managed(registry, model):
        out["truncate_prompt_tokens"] = -1
    name = _echo(registry, body.get("model"))
    return await run(request, EMBEDDINGS, out, adapter=Embeddings(name, legacy))


# --- answer translation ----------------------------------------------------------------------


def _done_reason(finish: str | None) -> str:
    if finish in (None, "stop", "tool_calls"):
        return "stop"
    return finish


def _tool_calls_to_ollama(calls: list[dict]) -> list[dict]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = {"arguments": args}  # the model wrote something that is not JSON; keep it visible
        out.append({"function": {"name": fn.get("name"), "arguments": args if isinstance(args, dict) else {}}})
    return out


class Reshape:
    """OpenAI chat/completion answers as Ollama /api/chat or /api/generate ones."""

    stream_content_type = NDJSON

    def __init__(self, model: str, kind: str):
        self.model = model
        self.kind = kind  # "chat" or "generate"
        self.started = time.monotonic_ns()
        self.first: int | None = None
        self.finish: str | None = None
        self.usage: dict = {}
        self.tools: dict[int, dict] = {}
        self.finished = False

    def _line(self, text: str = "", thinking: str | None = None, tool_calls: list | None = None,
              **extra) -> bytes:
        out: dict = {"model": self.model, "created_at": _now()}
        if self.kind == "chat":
            message: dict = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        out.update(extra)
        return orjson.dumps(out) + b"\n"

    def _counts(self) -> dict:
        counts = {}
        if isinstance(self.usage.get("prompt_tokens"), int):
            counts["prompt_eval_count"] = self.usage["prompt_tokens"]
        if isinstance(self.usage.get("completion_tokens"), int):
            counts["eval_count"] = self.usage["completion_tokens"]
        return counts

    def _final(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b""
        if self.tools:
            calls = [self.tools[i] for i in sorted(self.tools)]
            out += self._line(tool_calls=_tool_calls_to_ollama(calls))
        end = time.monotonic_ns()
        first = self.first or end
        return out + self._line(
            done=True, done_reason=_done_reason(self.finish), total_duration=end - self.started,
            load_duration=0, prompt_eval_duration=first - self.started, eval_duration=end - first,
            **self._counts())

    def events(self, data: bytes) -> bytes:
        out = []
        for event in data.split(b"\n\n"):
            payload = event.strip()
            if not payload.startswith(b"data:"):
                continue
            payload = payload[5:].strip()
            if payload == b"[DONE]":
                out.append(self._final())
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):  # the backend failed mid-stream: Ollama clients raise on this line
                err = obj["error"]
                message = err.get("message") if isinstance(err, dict) else str(err)
                out.append(orjson.dumps({"error": message or "the model failed mid-stream"}) + b"\n")
                self.finished = True
                continue
            if isinstance(obj.get("usage"), dict):
                self.usage = obj["usage"]
            for choice in obj.get("choices") or []:
                out.append(self._choice(choice))
        return b"".join(out)

    def _choice(self, choice: dict) -> bytes:
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        if "delta" in choice:  # chat
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            for call in delta.get("tool_calls") or []:
                slot = self.tools.setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
        else:
            text, thinking = choice.get("text") or "", None
        if not text and not thinking:
            return b""
        if self.first is None:
            self.first = time.monotonic_ns()
        return self._line(text, thinking)

    def end(self) -> bytes:
        return self._final()

    def error(self, message: str) -> bytes:
        """A failure after the stream began, as the line Ollama clients raise on."""
        self.finished = True
        return orjson.dumps({"error": message}) + b"\n"

    def body(self, data: bytes) -> bytes:
        obj = orjson.loads(data)
        choice = (obj.get("choices") or [{}])[0]
        self.usage = obj.get("usage") or {}
        text, thinking, calls = "", None, None
        if "message" in choice:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if message.get("tool_calls"):
                calls = _tool_calls_to_ollama(message["tool_calls"])
        else:
            text = choice.get("text") or ""
        line = orjson.loads(self._line(text, thinking, calls))
        line.update(done=True, done_reason=_done_reason(choice.get("finish_reason")),
                    total_duration=time.monotonic_ns() - self.started, load_duration=0, **self._counts())
        return orjson.dumps(line)


class Embeddings:
    """OpenAI /v1/embeddings answers as Ollama /api/embed (or legacy /api/embeddings) ones."""

    stream_content_type = "application/json"

    def __init__(self, model: str, legacy: bool):
        self.model = model
        self.legacy = legacy
        self.started = time.monotonic_ns()

    def events(self, data: bytes) -> bytes:  # embeddings never stream
        return data

    def end(self) -> bytes:
        return b""

    def body(self, data: bytes) -> bytes:
        obj = orjson.loads(data)
        vectors = [d.get("embedding") for d in sorted(obj.get("data") or [], key=lambda d: d.get("index", 0))]
        if self.legacy:
            return orjson.dumps({"embedding": vectors[0] if vectors else []})
        out = {"model": self.model, "embeddings": vectors,
               "total_duration": time.monotonic_ns() - self.started, "load_duration": 0}
        usage = obj.get("usage") or {}
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        return orjson.dumps(out)


def add_ollama_routes(app: web.Application) -> None:
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embed)
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"):
        app.router.add_route("*", path, not_here)
