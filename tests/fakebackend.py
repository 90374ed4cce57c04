"""The one fake OpenAI-compatible backend, for fast tests of gateway logic and WebUI behaviour.

It answers like vLLM (/health, /v1/models, /tokenize, /metrics, chat and
completions, JSON or SSE) with settable time to first token, inter-token
delay and length, and records what it received and what was cancelled.
Scripted controls, for tests that need precise answers: a canned reply
(text, or a function of the request), errors answered next (status, code,
Retry-After), the usage's prompt tokens, a gate per chunk, a broken stream.

It is never the only proof of a feature: the real tier runs real vLLM. The
payload shapes below (model list, completion, stream chunk) are also what the
benchmark's raw-asyncio mock (bench/mock_upstream.py) sends.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

# --- payload shapes (vLLM's) -------------------------------------------------------


def model_list(model_id: str, max_model_len: int) -> dict:
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": 0, "owned_by": "fake", "max_model_len": max_model_len}]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def completion(model_id: str, text: str, finish_reason: str | None, used: dict | None, *, chat: bool = True,
               cid: str = "x", created: int = 0) -> dict:
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat else
              {"index": 0, "text": text})
    return {"id": cid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model_id, "choices": [{**choice, "logprobs": None, "finish_reason": finish_reason}],
            "usage": used}


def chunk(model_id: str, delta: dict, finish_reason: str | None = None, *, chat: bool = True, cid: str = "x",
          created: int = 0) -> dict:
    """One stream event: *delta* is a chat delta ({"content": ...}); completions get its content as text."""
    choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": delta.get("content", "")}
    return {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model_id, "choices": [{**choice, "logprobs": None, "finish_reason": finish_reason}]}


def error_body(message: str, code: str | int, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def pieces(text: str) -> list[str]:
    """A text as the tokens a stream sends: each word with the whitespace before it."""
    return re.findall(r"\s*\S+|\s+", text)


@dataclass
class ScriptedError:
    status: int
    code: str
    retry_after: float | None = None


@dataclass
class FakeBackend:
    model_id: str = "fake"
    max_model_len: int = 4096
    health_status: int = 200
    ttft: float = 0.0
    itl: float = 0.0
    chunks: int = 5
    # A canned answer instead of `chunks` x "tok{i} ": a text, or a function of the request body.
    # It streams like vLLM's chat (a role event, one event per word, a finish event), and stops
    # at max_tokens words with finish_reason "length".
    reply: str | Callable[[dict], str] | None = None
    # Answered next, one per request, before anything else (shareable between fakes).
    errors: deque[ScriptedError] = field(default_factory=deque)
    prompt_tokens: int = 7  # the usage's prompt_tokens
    # When set, the stream waits for this event before sending each chunk after the first.
    gate: asyncio.Event | None = None
    received: list[dict] = field(default_factory=list)  # request bodies (shareable between fakes)
    headers: list[dict] = field(default_factory=list)
    active: int = 0
    peak_active: int = 0
    cancelled: int = 0
    generated: int = 0  # tokens sent
    tokenize_calls: int = 0
    probes: int = 0  # health checks answered (/health, /v1/models)
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

    def reset(self) -> None:
        """Scripted controls and counters back to their defaults; shared lists are cleared in place."""
        self.health_status, self.ttft, self.itl, self.reply, self.prompt_tokens = 200, 0.0, 0.0, None, 7
        self.errors.clear()
        self.received.clear()
        self.headers.clear()
        self.cancelled = self.generated = self.completed = self.tokenize_calls = self.peak_active = 0

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
        status = self.health_status
        await self._probed()
        return web.Response(status=status)

    async def _models(self, request):
        status = self.health_status
        await self._probed()
        if status != 200:  # a loading or broken server answers nothing useful
            return web.Response(status=status)
        return web.json_response(model_list(self.model_id, self.max_model_len))

    async def _probed(self) -> None:
        self.probes += 1
        await self._notify()

    async def _tokenize(self, request):
        self.tokenize_calls += 1
        body = await request.json()
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt or body.get("messages"))
        tokens = list(range(len(text.split())))
        return web.json_response({"count": len(tokens), "max_model_len": self.max_model_len,
                                  "tokens": tokens})

    async def _metrics(self, request):
        label = f'{{model_name="{self.model_id}"}}'
        return web.Response(text=f"vllm:num_requests_running{label} {self.active}\n"
                                 f"vllm:num_requests_waiting{label} 0\n"
                                 f"vllm:generation_tokens_total{label} {self.generated}\n")

    def _answer(self, body: dict) -> tuple[list[str], str | None]:
        """The tokens to send and the finish reason."""
        if self.reply is None:
            return [f"tok{i} " for i in range(self.chunks)], "length"
        text = self.reply(body) if callable(self.reply) else self.reply
        tokens = pieces(text)
        limit = body.get("max_tokens")
        if isinstance(limit, int) and len(tokens) > limit:
            return tokens[:limit], "length"
        return tokens, "stop"

    async def _generate(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        self.headers.append(CIMultiDict(request.headers))
        chat = request.path.endswith("chat/completions")
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        await self._notify()
        try:
            if self.errors:
                err = self.errors.popleft()
                headers = {"Retry-After": f"{err.retry_after:g}"} if err.retry_after is not None else None
                return web.json_response(error_body(f"scripted {err.code}", err.code), status=err.status,
                                         headers=headers)
            if body.get("model") != self.model_id:
                return web.json_response(error_body(f"model {body.get('model')} not found", 404, "NotFoundError"),
                                         status=404)
            await asyncio.sleep(self.ttft)
            tokens, finish = self._answer(body)
            used = usage(self.prompt_tokens, len(tokens))
            if not body.get("stream"):
                for _ in tokens:
                    await asyncio.sleep(self.itl)
                self.generated += len(tokens)
                return web.json_response(completion(self.model_id, "".join(tokens), finish, used, chat=chat))
            return await self._stream(request, body, tokens, finish, used, chat)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            await self._notify()

    async def _stream(self, request: web.Request, body: dict, tokens: list[str], finish: str | None,
                      used: dict, chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        created = int(time.time())

        async def send(event: dict) -> None:
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")

        canned = self.reply is not None  # vLLM's framing: a role event first, a finish event last
        if canned and chat:
            await send(chunk(self.model_id, {"role": "assistant", "content": ""}, created=created))
        for i, token in enumerate(tokens):
            if i == self.break_after:
                request.transport.close()
                return resp
            if i or canned:
                if i and self.gate is not None:
                    await self.gate.wait()
                    self.gate.clear()
                await asyncio.sleep(self.itl)
            await send(chunk(self.model_id, {"content": token}, chat=chat, created=created))
            self.generated += 1
        if canned:
            await send(chunk(self.model_id, {}, finish, chat=chat, created=created))
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {"id": "x", "object": "chat.completion.chunk", "model": self.model_id,
                     "choices": [], "usage": used}
            await resp.write(b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
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
