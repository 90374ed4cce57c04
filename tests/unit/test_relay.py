"""What a lenient or differently-framed backend sends must reach the client intact and be counted:
CRLF-framed SSE (sse-starlette's default), usage JSON spaced another way, nonsense token counts."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.harness import wait_until
from tests.unit.test_gateway import CHAT

MODEL = "odd"


def _chunk(text: str) -> dict:
    return {"id": "x", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def odd_backend(*, usage: dict, sep: bytes = b"\r\n\r\n", indent: bool = True) -> web.Application:
    """An OpenAI-compatible server that frames events with `sep` and spaces its JSON like Python's json."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "max_model_len": 4096}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        dumps = json.dumps if indent else (lambda o: json.dumps(o, separators=(",", ":")))
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "chat.completion", "model": MODEL,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                                   "finish_reason": "stop"}], "usage": usage}, dumps=dumps)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for text in ("one ", "two "):
            await resp.write(b"data: " + dumps(_chunk(text)).encode() + sep)
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage}
            await resp.write(b"data: " + dumps(final).encode() + sep)
        await resp.write(b"data: [DONE]" + sep)
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _stack_with(stack, aiohttp_server, app: web.Application):
    server = await aiohttp_server(app)
    s = await stack({"odd": {"url": str(server.make_url("/")).rstrip("/"), "served_model": MODEL}}, wait=False)
    await s.ready("odd")
    return s


def _counted(s, kind: str) -> float:
    for line in s.metrics_text().splitlines():
        if line.startswith(f'localai_{kind}_tokens_total{{model="odd"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_crlf_framed_stream_arrives_event_by_event_and_is_counted(stack, aiohttp_server):
    s = await _stack_with(stack, aiohttp_server, odd_backend(usage={"prompt_tokens": 3, "completion_tokens": 2}))
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        assert r.status == 200
        text = await r.text()
    events = [e for e in text.split("\n\n") if e]
    # Each event on its own, in one framing; the usage-only chunk the client did not ask for is gone.
    assert [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]] == ["one ", "two "]
    assert events[-1] == "data: [DONE]" and "\r" not in text
    assert _counted(s, "prompt") == 3 and _counted(s, "completion") == 2


async def test_crlf_framed_stream_reaches_ollama_clients(stack, aiohttp_server):
    s = await _stack_with(stack, aiohttp_server, odd_backend(usage={"prompt_tokens": 3, "completion_tokens": 2}))
    async with s.http.post(s.url + "/api/chat", json={"model": "odd", "messages": CHAT["messages"]}) as r:
        lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "one two "
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 2


async def test_spaced_usage_is_counted_and_not_leaked(stack, aiohttp_server):
    s = await _stack_with(stack, aiohttp_server,
                          odd_backend(usage={"prompt_tokens": 4, "completion_tokens": 5}, sep=b"\n\n"))
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        text = await r.text()
    assert '"usage"' not in text
    assert _counted(s, "prompt") == 4 and _counted(s, "completion") == 5


async def test_nonsense_token_counts_never_break_a_200(stack, aiohttp_server):
    s = await _stack_with(stack, aiohttp_server,
                          odd_backend(usage={"prompt_tokens": 3, "completion_tokens": -1}, indent=False))
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:  # max_tokens -1 is a 400 now
        assert r.status == 200
        assert (await r.json())["choices"][0]["message"]["content"] == "hi"
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        assert r.status == 200 and (await r.text()).endswith("data: [DONE]\n\n")
    assert _counted(s, "prompt") == 6 and _counted(s, "completion") == 0


async def test_client_leaving_after_the_final_event_was_answered(stack, aiohttp_server):
    """Codex hangs up as soon as it has response.completed, before the backend closes the stream."""
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "max_model_len": 4096}]})

    async def responses(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        done = {"type": "response.completed", "response": {"id": "resp_1", "usage": {
            "input_tokens": 9, "output_tokens": 1}}}
        await resp.write(b"event: response.completed\ndata: " + json.dumps(done).encode() + b"\n\n")
        await hold.wait()  # the backend keeps the stream open
        return resp

    hold = asyncio.Event()
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/responses", responses)
    s = await _stack_with(stack, aiohttp_server, app)
    async with s.http.post(s.url + "/v1/responses", json={"input": "hi", "stream": True},
                           headers={"X-Request-ID": "codex-1"}) as r:
        assert b"response.completed" in await r.content.readuntil(b"\n\n")
    # The client is gone; the gateway's line for it says the request was answered.
    await wait_until(lambda: any(line.get("request_id") == "codex-1" for line in s.log_lines()))
    line = next(line for line in s.log_lines() if line.get("request_id") == "codex-1")
    assert line["status"] == 200 and line["prompt_tokens"] == 9
