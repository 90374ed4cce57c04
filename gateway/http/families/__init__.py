"""The API families the gateway speaks, one module each, over the one request path (pipeline.py).

Each family module has `add_routes(app)`, which adds its routes and, where its
clients expect errors in another shape than OpenAI's, registers that shape
(errors.register_error_shape). To add a family: a module here, one line in
`add_all_routes`.
"""

from __future__ import annotations

from aiohttp import web

from . import anthropic, ollama, openai, responses


def add_all_routes(app: web.Application) -> None:
    for family in (openai, ollama, anthropic, responses):
        family.add_routes(app)
