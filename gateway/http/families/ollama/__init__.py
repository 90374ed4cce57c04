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
  /api/pull                       a configured model's weights from the hub (pull.py)
"""

from __future__ import annotations

from aiohttp import web

from gateway.base.errors import register_error_shape

from .common import ollama_error
from .models import not_here, ps, show, tags, version
from .pull import add_pull_route
from .translate import chat, embed, generate


def add_routes(app: web.Application) -> None:
    register_error_shape(app, "/api/", ollama_error)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embed)
    add_pull_route(app)
    for action in ("push", "create", "copy"):
        app.router.add_post(f"/api/{action}", not_here)
    app.router.add_delete("/api/delete", not_here)
