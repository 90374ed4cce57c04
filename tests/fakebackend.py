"""A fake OpenAI-compatible backend for fast tests of gateway logic.

It answers like vLLM (/health, /v1/models, /tokenize, /metrics, chat and
completions, Anthropic's /v1/messages and its count_tokens, JSON or SSE) with settable time to first token, inter-token
delay and length, and records what it received and what was cancelled.
It is never the only proof of a feature: the real tier runs real vLLM.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class FakeBackend:
    model_id: str = "fake"
    max_model_len: int = 4096
    health_status: int = 200
    ttft: float = 0.0
    itl: float = 0.0
    chunks: int = 5
    # When set, the stream waits for this event before sending each chunk after the first.
    gate: asyncio.Event | None = None
    received: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    active: int = 0
    peak_active: int = 0
    cancelled: int = 0
    tokenize_calls: int = 0
    last_count: int | None = None  # what /tokenize or count_tokens answered last
    # Drop the connection after this many streamed chunks, like a crashing server.
    break_after: int | None = None
    completed: int = 0
    changed: asyncio.Condition | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/messages", self._generate)
        app.router.add_post("/v1/messages/count_tokens", self._count_messages)
        return app

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        """Wait until predicate(self) holds; state changes notify, no polling."""
        if self.changed is None:
            self.changed = asyncio.Condition()
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), timeout)

    async def _notify(self) -> None:
        if self.changed is None:
            self.changed = asyncio.Condition()
        async with self.changed:
            self.changed.notify_all()

    async def _health(self, request):
        return web.Response(status=self.health_status)

    async def _models(self, request):
        if self.health_status != 200:  # a loading or broken server answers nothing useful
            return web.Response(status=self.health_status)
        return web.json_response({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "max_model_len": self.max_model_len}]})

    async def _tokenize(self, request):
        self.tokenize_calls += 1
        body = await request.json()
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt or body.get("messages"))
        tokens = list(range(len(text.split())))
        self.last_count = len(tokens)
        return web.json_response({"count": len(tokens), "max_model_len": self.max_model_len,
                                  "tokens": tokens})

    async def _count_messages(self, request):
        """Anthropic's count_tokens: one token per word of the system, messages and tools."""
        self.tokenize_calls += 1
        body = await request.json()
        self.received.append(body)
        text = json.dumps([body.get("system"), body.get("messages"), body.get("tools")])
        self.last_count = len(text.split())
        return web.json_response({"input_tokens": self.last_count})

    async def _metrics(self, request):
        return web.Response(text=f"fake_active {self.active}\nfake_cancelled {self.cancelled}\n")

    def _chunk(self, i: int, chat: bool) -> dict:
        if chat:
            choice = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": f"tok{i} ", "finish_reason": None}
        return {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_id, "choices": [choice]}

    async def _pace(self, i: int, request: web.Request) -> bool:
        """Wait before streamed chunk i (gate, inter-token delay); False when the server 'crashes' here."""
        if i == self.break_after:
            request.transport.close()
            return False
        if i:
            if self.gate is not None:
                await self.gate.wait()
                self.gate.clear()
            await asyncio.sleep(self.itl)
        return True

    async def _generate(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        self.headers.append(CIMultiDict(request.headers))
        chat = request.path.endswith("chat/completions")
        anthropic = request.path == "/v1/messages"
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        await self._notify()
        try:
            if body.get("model") != self.model_id:
                return web.json_response({"error": {"message": f"model {body.get('model')} not found",
                                                    "type": "NotFoundError", "code": 404}}, status=404)
            await asyncio.sleep(self.ttft)
            if anthropic:
                return await self._anthropic(request, body)
            usage = {"prompt_tokens": 7, "completion_tokens": self.chunks, "total_tokens": 7 + self.chunks}
            if not body.get("stream"):
                for _ in range(self.chunks):
                    await asyncio.sleep(self.itl)
                text = "".join(f"tok{i} " for i in range(self.chunks))
                msg = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                return web.json_response({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                          "model": self.model_id,
                                          "choices": [{"index": 0, **msg, "finish_reason": "length"}],
                                          "usage": usage})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(self.chunks):
                if not await self._pace(i, request):
                    return resp
                await resp.write(b"data: " + json.dumps(self._chunk(i, chat)).encode() + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                final = {"id": "x", "object": "chat.completion.chunk", "model": self.model_id,
                         "choices": [], "usage": usage}
                await resp.write(b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.completed += 1
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            await self._notify()

    # --- Anthropic Messages, as vLLM's /v1/messages answers -------------------------------

    async def _anthropic(self, request: web.Request, body: dict) -> web.StreamResponse:
        text = [f"tok{i} " for i in range(self.chunks)]
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": self.model_id,
                   "stop_reason": None, "stop_sequence": None, "content": []}
        if not body.get("stream"):
            for _ in range(self.chunks):
                await asyncio.sleep(self.itl)
            return web.json_response({**message, "content": [{"type": "text", "text": "".join(text)}],
                                      "stop_reason": "max_tokens",
                                      # vLLM with prompt-tokens details: 7 prompt tokens, 3 of them cached.
                                      "usage": {"input_tokens": 4, "cache_read_input_tokens": 3,
                                                "output_tokens": self.chunks}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(name: str, data: dict) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        await event("message_start", {"type": "message_start",
                                      "message": {**message, "usage": {"input_tokens": 7, "output_tokens": 0}}})
        await event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})
        for i, piece in enumerate(text):
            if not await self._pace(i, request):
                return resp
            await event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": piece}})
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                      # vLLM with prompt-tokens details: 7 prompt tokens, 3 of them cached.
                                      "usage": {"input_tokens": 4, "cache_read_input_tokens": 3,
                                                "output_tokens": self.chunks}})
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        self.completed += 1
        return resp

class EmbedFake(FakeBackend):
    """An embedding server: /v1/embeddings only, like vLLM's pooling runner."""

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/embeddings", self._embed)
        return app

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        # Answer in reverse order: the gateway must sort by index.
        data = [{"index": i, "object": "embedding",
                 "embedding": [float(i), float(len(t) if isinstance(t, (str, list)) else 1), 0.5]}
                for i, t in reversed(list(enumerate(texts)))]
        return web.json_response({"object": "list", "model": self.model_id, "data": data,
                                  "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}})
