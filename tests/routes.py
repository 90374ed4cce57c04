"""The routes an app's router holds, as requests a test can send: the auth and fuzz tests take
their list from here, so a route added to the gateway is covered without editing them."""

from __future__ import annotations

import re

from aiohttp import web

_PARAMETER = re.compile(r"\{[^}]+\}")


def router_routes(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, path, route) for every route of the app: the path with each {parameter} filled
    in (`/v1/models/x`), the route as the router names it (`/v1/models/{model}`)."""
    found = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        found.append((route.method, _PARAMETER.sub("x", canonical), canonical))
    return found
