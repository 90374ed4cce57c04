"""Ollama's model listing and description: /api/tags, /api/ps, /api/show, /api/version."""

from __future__ import annotations

import hashlib
import json

from aiohttp import web

from gateway.base.errors import ApiError
from gateway.config.schema import ManagedModel
from gateway.http.appkeys import CONFIG, REGISTRY
from gateway.http.middleware import free_of_key_limits
from gateway.http.modelfacts import human_count, model_facts
from gateway.http.pipeline import allowed, json_response, resolve
from gateway.lifecycle.manager import residence_fields
from gateway.routing.backends import Backend, Registry
from gateway.routing.states import State

from .common import NEVER, OLLAMA_VERSION, PARAMETER_NAMES, STARTED, known_name, read_body


def _details(backend: Backend, facts: dict, parent: str = "") -> dict:
    family = facts.get("family", "unknown")
    return {
        "parent_model": parent,
        "format": "safetensors" if facts.get("parameter_count") else "unknown",
        "family": family,
        "families": [family],
        "parameter_size": human_count(facts["parameter_count"]) if facts.get("parameter_count") else "unknown",
        "quantization_level": facts.get("quantization_level") or "unknown",
    }


def _entry(name: str, backend: Backend, facts: dict, parent: str = "") -> dict:
    modified = facts.get("modified_at", STARTED)
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
        name = PARAMETER_NAMES.get(key, key)
        values = value if isinstance(value, list) else [value]
        for v in values:
            lines.append(f"{name} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


@free_of_key_limits
async def tags(request: web.Request) -> web.Response:
    registry: Registry = request.app[REGISTRY]
    cfg = request.app[CONFIG]
    models = [_entry(name, b, model_facts(b, cfg)) for name, b in registry.backends.items() if allowed(request, b)]
    for name, route in registry.presets():
        if allowed(request, route.backend):
            models.append(_entry(name, route.backend, model_facts(route.backend, cfg), parent=route.backend.name))
    return json_response({"models": models})


@free_of_key_limits
async def ps(request: web.Request) -> web.Response:
    registry: Registry = request.app[REGISTRY]
    cfg = request.app[CONFIG]
    models = []
    for name, b in registry.backends.items():
        if not allowed(request, b):
            continue
        coming = b.residence is not None and b.state in (State.WAKING, State.LOADING)
        if b.state is not State.READY and not coming:
            continue
        entry = _entry(name, b, model_facts(b, cfg))
        entry.pop("modified_at")
        card = residence_fields(b)
        # Beyond Ollama's fields: the state (a model on its way in is listed too), since when it is
        # resident, and its share of its card (size_vram stays 0: the bytes are vLLM's business).
        entry.update(expires_at=card.get("expires_at") or NEVER, size_vram=0, context_length=b.max_model_len,
                     state=b.state.value, resident_since=card.get("resident_since"),
                     vram_share=card.get("vram_share"))
        models.append(entry)
    return json_response({"models": models})


@free_of_key_limits
async def show(request: web.Request) -> web.Response:
    body = await read_body(request)
    registry: Registry = request.app[REGISTRY]
    name = body.get("model") or body.get("name")  # older clients (Continue) send "name"
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'model' is required.", code="invalid_request", param="model")
    name = known_name(registry, name)
    route = resolve(request, name)
    b = route.backend
    facts = model_facts(b, request.app[CONFIG])
    arch = facts.get("family", "unknown")
    info: dict = {"general.architecture": arch, "general.basename": b.name}
    if facts.get("parameter_count"):
        info["general.parameter_count"] = facts["parameter_count"]
    if b.max_model_len:
        info[f"{arch}.context_length"] = b.max_model_len
    is_preset = name in {n for n, _ in registry.presets()}
    served = b.served_model_hint or b.served_id
    return json_response({
        "modelfile": f"# Served by localai: model '{b.name}' ({served}) on vLLM.\nFROM {served}\n",
        "parameters": _parameters(b, route.defaults),
        "template": _go_template(b),
        "details": _details(b, facts, parent=b.name if is_preset else ""),
        "model_info": info,
        "capabilities": _capabilities(b),
        "modified_at": facts.get("modified_at", STARTED).isoformat().replace("+00:00", "Z"),
    })


@free_of_key_limits
async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_VERSION})


_PAST = {"push": "pushed", "create": "created", "copy": "copied", "delete": "deleted"}


async def not_here(request: web.Request) -> web.Response:
    """/api/push, /create, /copy, /delete: a client error that says where models come from.

    Those that act on a model we have (push, copy, delete) say 404 for one we don't, as Ollama does."""
    body = await read_body(request)
    registry: Registry = request.app[REGISTRY]
    action = request.path.rstrip("/").rsplit("/", 1)[-1]
    if action in ("push", "copy", "delete"):
        field = "source" if action == "copy" else "model"
        name = body.get(field) or body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"'{field}' is required.", code="invalid_type", param=field)
        resolve(request, known_name(registry, name))
    raise ApiError(400, f"Models cannot be {_PAST[action]} through this API: they are managed in the localai "
                        "config (models: in localai.yaml).", code="not_supported")
