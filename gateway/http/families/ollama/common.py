"""What every part of the Ollama API shares: its constants, its error shape, reading a body, model names."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import web

from gateway.base.errors import ApiError, error_message, reshaped_headers
from gateway.http.pipeline import parse_json_object, read_in_time, require_json
from gateway.routing.backends import Registry

# What /api/version reports: recent enough that clients enable tools, structured
# outputs and /api/embed.
OLLAMA_VERSION = "0.9.0"
NDJSON = "application/x-ndjson"
# Models here stay loaded; /api/ps says so with an expiry that never comes.
NEVER = "9999-12-31T23:59:59Z"
STARTED = datetime.now(UTC)

# Ollama option -> OpenAI/vLLM sampling field. Options not listed (num_ctx, num_gpu,
# num_thread, mirostat, ...) steer llama.cpp itself and are ignored.
OPTION_FIELDS = {
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
PARAMETER_NAMES = {v: k for k, v in OPTION_FIELDS.items()} | {"max_tokens": "num_predict"}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ollama_error(response: web.Response) -> web.Response:
    """An error response (ours or a backend's, OpenAI-shaped) as Ollama's {"error": "message"}."""
    message = error_message(response)
    headers = reshaped_headers(response)
    return web.Response(status=response.status, body=orjson.dumps({"error": message}),
                        content_type="application/json", headers=headers)


async def read_body(request: web.Request) -> dict:
    """Ollama accepts a JSON body whatever the Content-Type (curl -d sends form-encoded), from
    clients that are not browsers. A request with an Origin comes from a web page, maybe another
    site's: it must be JSON, as on /v1 (a 415, in Ollama's shape). The Ollama clients send JSON."""
    if "Origin" in request.headers:
        require_json(request)
    raw = await read_in_time(request)
    return parse_json_object(raw) if raw.strip() else {}


def known_name(registry: Registry, name: object) -> object:
    """Ollama clients add ':latest' to bare names; accept that spelling of ours."""
    if isinstance(name, str) and name.endswith(":latest"):
        try:
            registry.resolve(name)
        except ApiError:
            return name[: -len(":latest")]
    return name


def echo_name(registry: Registry, requested: object) -> str:
    """The model name answers carry: the one asked for, as Ollama does."""
    return requested if isinstance(requested, str) and requested else registry.default.name
