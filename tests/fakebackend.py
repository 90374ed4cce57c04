"""A fake OpenAI-compatible backend for fast tests of gateway logic.

It answers like vLLM (/health, /v1/models, /tokenize, /metrics, chat and
completions, JSON or SSE) with settable time to first token, inter-token
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
        return web.json_response({"count": len(tokens), "max_model_len": self.max_model_len,
                                  "tokens": tokens})

    async def _metrics(self, request):
        return web.Response(text=f"fake_active {self.active}\nfake_cancelled {self.cancelled}\n")

    def _chunk(self, i: int, chat: bool) -> dict:
        if chat:
            choice = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": f"tok{i} ", "finish_reason": None}
        return {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_id, "choices": [choice]}

    async def _generate(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        self.headers.append(CIMultiDict(request.headers))
        chat = request.path.endswith("chat/completions")
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        await self._notify()
        try:
            if body.get("model") != self.model_id:
                return web.json_response({"error": {"message": f"model {body.get('model')} not found",
                                                    "type": "NotFoundError", "code": 404}}, status=404)
            await asyncio.sleep(self.ttft)
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
                if i == self.break_after:
                    request.transport.close()
                    return resp
                if i:
                    if self.gate is not None:
                        await self.gate.wait()
                        self.gate.clear()
                    await asyncio.sleep(self.itl)
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
