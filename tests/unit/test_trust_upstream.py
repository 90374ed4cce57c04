"""What an upstream may send (issue 18, defect 7): an SSE event without a line ending is cut at
gateway.max_upstream_event_bytes with an error event in the client's API's shape, a
non-streamed answer at max_upstream_body_bytes with a 502, a malformed model list does not
stop the model's health checks, and a name learned from an upstream never takes a
configured one, also after a reload."""

from __future__ import annotations

import json

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from tests.fakebackend import FakeBackend, model_list
from tests.harness import free_port, serving, wait_until

HI = [{"role": "user", "content": "hi"}]
MiB = 1024 * 1024


class Hostile:
    """An OpenAI-compatible server that answers every generation with more than anyone should read."""

    def __init__(self, model_id: str = "h", send_at_most: int = 48 * MiB):
        self.model_id = model_id
        self.models_status = 200
        self.models_body = orjson.dumps(model_list(model_id, 4096))
        self.send_at_most = send_at_most
        self.sent = 0  # bytes of the last answer that went out

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{path:.*}", self._answer)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        if self.models_status != 200:
            return web.Response(status=self.models_status)
        return web.Response(body=self.models_body, content_type="application/json")

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = body.get("stream", request.path.startswith("/api/")) is True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if stream else "application/json"})
        await resp.prepare(request)
        # An event (or a JSON answer) that never ends: no line ending, no closing brace.
        await resp.write(b'data: {"choices": [{"delta": {"content": "' if stream else
                         b'{"choices": [{"message": {"content": "')
        self.sent = 0
        piece = b"a" * 65536
        try:
            while self.sent < self.send_at_most:
                await resp.write(piece)
                self.sent += len(piece)
        except ConnectionError:  # the gateway stopped reading and closed: what it should do
            return resp
        await resp.write_eof()
        return resp


async def hostile_stack(stack, aiohttp_server, hostile: Hostile, **gateway):
    server = await aiohttp_server(hostile.app())
    s = await stack({"h": {"url": str(server.make_url("/")).rstrip("/"), "served_model": hostile.model_id}},
                    wait=False, **gateway)
    await s.ready("h")
    return s


# (family, path, body, headers)
FAMILIES = [
    ("openai", "/v1/chat/completions", {"model": "h", "stream": True, "messages": HI}, {}),
    ("ollama", "/api/chat", {"model": "h", "messages": HI}, {}),
    ("anthropic", "/v1/messages", {"model": "h", "stream": True, "max_tokens": 5, "messages": HI},
     {"anthropic-version": "2023-06-01"}),
]


def last_error(family: str, text: str) -> str:
    """The message of the stream's last event, which must be an error in the family's shape."""
    if family == "ollama":
        last = json.loads(text.rstrip("\n").rsplit("\n", 1)[-1])
        assert set(last) == {"error"} and isinstance(last["error"], str), last
        return last["error"]
    event = text.rstrip("\n").rsplit("\n\n", 1)[-1]
    data = json.loads(next(line[5:] for line in event.split("\n") if line.startswith("data:")))
    if family == "anthropic":
        assert event.startswith("event: error") and data["type"] == "error", event[:200]
    return data["error"]["message"]


@pytest.mark.parametrize(("family", "path", "body", "headers"), FAMILIES, ids=[f[0] for f in FAMILIES])
async def test_an_sse_event_that_never_ends_is_cut_off_with_an_error_event(stack, aiohttp_server, family, path,
                                                                          body, headers):
    hostile = Hostile()
    s = await hostile_stack(stack, aiohttp_server, hostile, max_upstream_event_bytes=MiB)
    async with s.http.post(s.url + path, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=20)) as r:
        assert r.status == 200
        text = await r.text()
    assert len(text) < 64 * 1024, "the endless event (or part of it) reached the client"
    assert "larger than 1048576 bytes" in last_error(family, text)
    assert hostile.sent < 24 * MiB, f"the gateway read {hostile.sent} bytes of one event"
    async with s.http.get(s.url + "/health") as health:
        assert (await health.json())["models"]["h"]["state"] == "ready"


@pytest.mark.parametrize(("family", "path"), [("openai", "/v1/chat/completions"), ("ollama", "/api/chat")])
async def test_a_non_streamed_answer_larger_than_the_cap_is_a_502(stack, aiohttp_server, family, path):
    hostile = Hostile()
    s = await hostile_stack(stack, aiohttp_server, hostile, max_upstream_body_bytes=MiB)
    async with s.http.post(s.url + path, json={"model": "h", "stream": False, "messages": HI},
                           timeout=aiohttp.ClientTimeout(total=20)) as r:
        assert r.status == 502
        answer = await r.json()
    message = answer["error"] if family == "ollama" else answer["error"]["message"]
    assert "larger than 1048576 bytes" in message
    assert hostile.sent < 24 * MiB, f"the gateway read {hostile.sent} bytes of one answer"


MALFORMED_LISTS = [b'{"data": ["x"]}', b"[]", b'{"data": "abc"}', b'{"data": {"id": "h"}}', b'"h"',
                   b'{"data": [{"id": "h", "max_model_len": "big"}, null, 5]}']


@pytest.mark.parametrize("listing", MALFORMED_LISTS)
async def test_a_malformed_model_list_does_not_stop_the_models_health_checks(stack, aiohttp_server, listing):
    hostile = Hostile()
    hostile.models_body = listing
    server = await aiohttp_server(hostile.app())
    s = await stack({"h": {"url": str(server.make_url("/")).rstrip("/"), "served_model": "h"}}, wait=False)

    async def state() -> str:
        async with s.http.get(s.url + "/health") as r:
            return (await r.json())["models"]["h"]["state"]

    async def becomes(expected: str) -> None:
        await wait_until(lambda: _equals(state(), expected), timeout=5, what=f"model h {expected}")

    await becomes("ready")  # its server answers: it serves, whatever its list says
    hostile.models_status = 503
    await becomes("failed")  # the checks go on: the state follows the server
    hostile.models_status = 200
    await becomes("ready")


async def _equals(value, expected) -> bool:
    return await value == expected


async def test_a_name_an_upstream_reports_never_takes_a_configured_name(aiohttp_server, tmp_path):
    """An external model without served_model, listed first, whose server says its model is `coder`:
    requests for the configured `coder` still go to `coder`, before and after a reload."""
    from gateway.app.reload import RELOADER
    from gateway.plan.validate import load_config

    impostor, coder = FakeBackend("coder"), FakeBackend("coder-real")
    urls = [str((await aiohttp_server(f.app())).make_url("/")).rstrip("/") for f in (impostor, coder)]
    config = tmp_path / "localai.yaml"
    port = free_port()
    config.write_text(yaml.safe_dump({
        "gateway": {"port": port, "webui": False, "health_interval": 0.05},
        "models": [{"name": "ext", "url": urls[0], "default": True},
                   {"name": "coder", "url": urls[1], "served_model": "coder-real"}]}))
    async with serving(load_config(config), api_keys=[]) as app, aiohttp.ClientSession() as http:
        async def chat(model: str) -> int:
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 json={"model": model, "messages": HI}) as r:
                return r.status

        # ext answers once its server's own id is learned (its server knows no model `ext`).
        await wait_until(lambda: _equals(chat("ext"), 200), what="ext served under its learned id")
        for reloaded in (False, True):
            if reloaded:
                assert app[RELOADER].reload()
            before = len(coder.received), len(impostor.received)
            assert await chat("coder") == 200
            assert (len(coder.received), len(impostor.received)) == (before[0] + 1, before[1]), \
                f"`coder` went to the impostor{' after a reload' if reloaded else ''}"
            assert coder.received[-1]["model"] == "coder-real"
            assert await chat("ext") == 200 and impostor.received[-1]["model"] == "coder"
