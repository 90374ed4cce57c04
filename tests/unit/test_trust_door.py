"""Issue 18, defect 11: deny by default.

Only the routes marked public (health, readiness, the WebUI's files) answer without a key;
every other route of the router, including one added tomorrow, needs one, and so does whatever
no route answers. The list of routes comes from the app's router, not from a list kept by hand."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.app.factory import create_app
from gateway.app.server import serve
from tests.fakebackend import FakeBackend
from tests.harness import make_config
from tests.routes import router_routes
from tests.unit.test_gateway import assert_openai_error

KEY = "sk-door-0123456789abcdef"
PUBLIC = {"/health", "/ready", "/", "/index.html", "/assets/{name}"}


def webui(tmp_path):
    root = tmp_path / "webui"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>ui</title>")
    (root / "assets" / "x").write_text("console.log(1)")
    return root


async def test_a_route_added_without_marking_it_public_needs_a_key(tmp_path):
    cfg = make_config([{"name": "m", "url": "http://127.0.0.1:1", "default": True}])
    app = create_app(cfg, api_keys=[KEY.encode()])

    async def tomorrows_endpoint(request: web.Request) -> web.Response:
        return web.json_response({"secret": "of the team"})

    app.router.add_get("/internal/tomorrow", tomorrows_endpoint)  # outside every prefix known today
    async with serve(app, cfg.gateway.host, cfg.gateway.port), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{cfg.gateway.port}/internal/tomorrow"
        for headers in ({}, {"Authorization": "Bearer sk-wrong-0123456789abcdef"}):
            async with http.get(url, headers=headers) as r:
                assert r.status == 401
                assert_openai_error(await r.json(), "invalid_api_key")
        async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status == 200 and await r.json() == {"secret": "of the team"}


async def test_every_route_of_the_router_needs_a_key_but_the_public_ones(stack, tmp_path):
    s = await stack({"m": FakeBackend()}, api_keys=[KEY], webui=True, webui_dir=str(webui(tmp_path)))
    routes = router_routes(s.app)
    assert len(routes) > 40 and {route for _, _, route in routes} >= PUBLIC
    public_seen = set()
    for method, path, route in routes:
        for headers in ({}, {"Authorization": "Bearer sk-wrong-0123456789abcdef"}, {"x-api-key": "wrong"}):
            async with s.http.request(method, s.url + path, headers=headers) as r:
                await r.read()
                if route in PUBLIC:
                    assert r.status == 200, (method, path, r.status)
                    public_seen.add(route)
                else:
                    assert r.status == 401, (method, path, r.status)
        async with s.http.request(method, s.url + path, headers={"Authorization": f"Bearer {KEY}"}) as r:
            await r.read()
            assert r.status != 401, (method, path)
    assert public_seen == PUBLIC


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/health"), ("GET", "/v2/nope"),
                                              ("DELETE", "/")])
async def test_what_no_route_answers_needs_a_key_too(stack, tmp_path, method, path):
    s = await stack({"m": FakeBackend()}, api_keys=[KEY], webui=True, webui_dir=str(webui(tmp_path)))
    async with s.http.request(method, s.url + path) as r:
        assert r.status == 401
    async with s.http.request(method, s.url + path, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status in (404, 405)
