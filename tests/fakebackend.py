"""The one fake OpenAI-compatible backend, for fast tests of gateway logic and WebUI behaviour.

It answers like vLLM (/health, /v1/models, /tokenize, /detokenize, /metrics,
chat and completions, JSON or SSE; Anthropic's /v1/messages and its
count_tokens; the Responses API with its typed events, stored ids, retrieve
and cancel; /rerank and /score) with settable time to first token,
inter-token delay and length, and records what it received and what was
cancelled. Like vLLM in sleep mode (VLLM_SERVER_DEV_MODE=1) it has
/sleep?level=N, /wake_up, /is_sleeping, /collective_rpc and
/reset_prefix_cache, and refuses to generate while asleep. Run as a program
(`main`) it stands in for a vLLM server process that `localai up` starts and
stops.
Scripted controls, for tests that need precise answers: a canned reply
(text, or a function of the request), errors answered next (status, code,
Retry-After), the usage's prompt tokens, a gate per chunk, a broken stream.

It is never the only proof of a feature: the real tier runs real vLLM. The
payload shapes below (model list, completion, stream chunk) are also what the
benchmark's raw-asyncio mock (bench/mock_upstream.py) sends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
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
    # A body of another kind instead of OpenAI's JSON: what vLLM's web framework answers on an
    # unhandled exception (text/plain "Internal Server Error"), or a proxy's HTML page.
    text: str | None = None
    content_type: str = "text/plain"


@dataclass
class FakeBackend:
    model_id: str = "fake"
    max_model_len: int = 4096
    health_status: int = 200
    ttft: float = 0.0  # before the response's headers (vLLM's non-streamed answer comes whole)
    # A stream's wait after its headers, before its first chunk: vLLM's prefill, or a server hung there.
    stall: float = 0.0
    health_delay: float = 0.0  # a health check's wait before its answer (a server hung or overloaded)
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
    last_count: int | None = None  # what /tokenize or count_tokens answered last
    probes: int = 0  # health checks answered (/health, /v1/models)
    # Drop the connection after this many streamed chunks, like a crashing server.
    break_after: int | None = None
    # Drop every generating request's connection unanswered, like a server killed mid-request.
    hang_up: bool = False
    completed: int = 0
    changed: asyncio.Condition | None = None
    # The Responses API's stored responses, by id (vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1).
    stored: dict[str, dict] = field(default_factory=dict)
    # What GET /v1/responses/{id} and POST .../cancel were asked for.
    looked_up: list[str] = field(default_factory=list)
    # Sleep mode: the level it sleeps at (0: awake), the calls it got, and how wake_up goes.
    sleeping: int = 0
    sleep_calls: list[str] = field(default_factory=list)
    wake_status: int = 200
    wake_gate: asyncio.Event | None = None  # wake_up waits for it

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/embeddings", self._embed)
        app.router.add_post("/v1/responses", self._respond)
        app.router.add_get("/v1/responses/{id}", self._retrieve)
        app.router.add_post("/v1/responses/{id}/cancel", self._cancel)
        app.router.add_post("/rerank", self._rerank)
        app.router.add_post("/score", self._score)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_post("/sleep", self._sleep)
        app.router.add_post("/wake_up", self._wake_up)
        app.router.add_get("/is_sleeping", self._is_sleeping)
        app.router.add_post("/collective_rpc", self._sleep_mode_call)
        app.router.add_post("/reset_prefix_cache", self._sleep_mode_call)
        app.router.add_post("/v1/messages", self._generate)
        app.router.add_post("/v1/messages/count_tokens", self._count_messages)
        return app

    async def _sleep(self, request):
        self.sleep_calls.append(request.path_qs)
        self.sleeping = int(request.query.get("level", "1"))
        await self._notify()
        return web.Response()

    async def _wake_up(self, request):
        self.sleep_calls.append(request.path_qs)
        await self._notify()
        if self.wake_gate is not None:
            await self.wake_gate.wait()
        if self.wake_status != 200:
            return web.json_response({"error": {"message": "CUDA out of memory", "code": self.wake_status}},
                                     status=self.wake_status)
        if request.query.get("tags") != "weights":  # level 2 wakes the weights first, the KV cache last
            self.sleeping = 0
        await self._notify()
        return web.Response()

    async def _is_sleeping(self, request):
        return web.json_response({"is_sleeping": bool(self.sleeping)})

    async def _sleep_mode_call(self, request):
        self.sleep_calls.append(request.path_qs)
        return web.json_response({})

    def reset(self) -> None:
        """Scripted controls and counters back to their defaults; shared lists are cleared in place."""
        self.health_status, self.ttft, self.itl, self.reply, self.prompt_tokens = 200, 0.0, 0.0, None, 7
        self.stall = self.health_delay = 0.0
        self.hang_up = False
        self.errors.clear()
        self.received.clear()
        self.headers.clear()
        self.cancelled = self.generated = self.completed = self.tokenize_calls = self.peak_active = 0

    # ASYNC109: a deadline of its own, so that a test waiting on a fake that never gets there fails, not hangs.
    async def wait_for(self, predicate, timeout: float = 5.0) -> None:  # noqa: ASYNC109
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

    @contextlib.asynccontextmanager
    async def _generating(self, request: web.Request, body: dict):
        """Record the request; count the generation active while it runs, cancelled if its client leaves."""
        self.received.append(body)
        self.headers.append(CIMultiDict(request.headers))
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        await self._notify()
        try:
            yield
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            await self._notify()

    def _scripted_error(self) -> web.Response:
        err = self.errors.popleft()
        headers = {"Retry-After": f"{err.retry_after:g}"} if err.retry_after is not None else None
        if err.text is not None:
            return web.Response(text=err.text, status=err.status, content_type=err.content_type, headers=headers)
        return web.json_response(error_body(f"scripted {err.code}", err.code), status=err.status, headers=headers)

    def _wrong_model(self, body: dict) -> web.Response | None:
        if body.get("model") == self.model_id:
            return None
        return web.json_response({"error": {"message": f"model {body.get('model')} not found",
                                            "type": "NotFoundError", "code": 404}}, status=404)

    async def _paced(self, i: int) -> None:
        """Wait before streaming the i-th token: the gate (if set) and the inter-token delay."""
        if i:
            gate = self.gate  # `release` may take it away while this waits on it
            if gate is not None:
                await gate.wait()
                gate.clear()
            await asyncio.sleep(self.itl)

    async def _health(self, request):
        await asyncio.sleep(self.health_delay)
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
        label = f'{{model_name="{self.model_id}"}}'
        # Its memory too, as vLLM's sleep mode changes it: all of its share awake, none asleep.
        return web.Response(text=f"vllm:num_requests_running{label} {self.active}\n"
                                 f"vllm:num_requests_waiting{label} 0\n"
                                 f"vllm:generation_tokens_total{label} {self.generated}\n"
                                 f"fake_active {self.active}\nfake_cancelled {self.cancelled}\n"
                                 f"fake_sleeping {self.sleeping}\nfake_memory_share {0 if self.sleeping else 1}\n")

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

    async def _pace(self, i: int, request: web.Request) -> bool:
        """Wait before streamed chunk i (gate, inter-token delay); False when the server 'crashes' here."""
        if i == self.break_after:
            request.transport.close()
            return False
        await self._paced(i)
        return True

    async def _generate(self, request: web.Request):
        body = await request.json()
        chat = request.path.endswith("chat/completions")
        anthropic = request.path == "/v1/messages"
        async with self._generating(request, body):
            if self.hang_up:
                request.transport.close()
                return web.Response()
            if self.sleeping:
                return web.json_response({"error": {"message": "the engine is asleep", "code": 500}}, status=500)
            if self.errors:
                return self._scripted_error()
            if (wrong := self._wrong_model(body)) is not None:
                return wrong
            await asyncio.sleep(self.ttft)
            if anthropic:
                return await self._anthropic(request, body)
            tokens, finish = self._answer(body)
            used = usage(self.prompt_tokens, len(tokens))
            if not body.get("stream"):
                for _ in tokens:
                    await asyncio.sleep(self.itl)
                self.generated += len(tokens)
                return web.json_response(completion(self.model_id, "".join(tokens), finish, used, chat=chat))
            return await self._stream(request, body, tokens, finish, used, chat)

    async def _embed(self, request: web.Request):
        """One 4-number vector per input (a string or a list of them); usage: a token per word."""
        body = await request.json()
        async with self._generating(request, body):
            if self.errors:
                return self._scripted_error()
            await asyncio.sleep(self.ttft)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            tokens = sum(len(str(i).split()) for i in inputs)
            return web.json_response({"object": "list", "model": self.model_id, "usage": usage(tokens, 0),
                                      "data": [{"object": "embedding", "index": n, "embedding": [0.5, -0.5, 0.25, n]}
                                               for n, _ in enumerate(inputs)]})

    async def _stream(self, request: web.Request, body: dict, tokens: list[str], finish: str | None,
                      used: dict, chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(self.stall)
        created = int(time.time())

        async def send(event: dict) -> None:
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")

        canned = self.reply is not None  # vLLM's framing: a role event first, a finish event last
        if canned and chat:
            await send(chunk(self.model_id, {"role": "assistant", "content": ""}, created=created))
        for i, token in enumerate(tokens):
            if not await self._pace(i, request):
                return resp
            if canned and not i:  # after the role event, the first token is paced too
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

    # --- the Responses API -------------------------------------------------------------

    @staticmethod
    def _not_found(response_id: str):
        return web.json_response({"error": {"message": f"Response with id '{response_id}' not found.",
                                            "type": "invalid_request_error", "param": "response_id",
                                            "code": 404}}, status=404)

    async def _respond(self, request: web.Request):
        body = await request.json()
        async with self._generating(request, body):
            if self.errors:
                return self._scripted_error()
            if (wrong := self._wrong_model(body)) is not None:
                return wrong
            previous = body.get("previous_response_id")
            if previous is not None and previous not in self.stored:
                return self._not_found(previous)
            response = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
                        "model": self.model_id, "status": "in_progress", "output": [], "usage": None}
            if body.get("store", True):
                self.stored[response["id"]] = response
            text = "".join(f"tok{i} " for i in range(self.chunks))
            done = {"status": "completed",
                    "output": [{"type": "message", "role": "assistant", "status": "completed",
                                "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                    "usage": {"input_tokens": 7, "output_tokens": self.chunks, "total_tokens": 7 + self.chunks}}
            await asyncio.sleep(self.ttft)
            if not body.get("stream"):
                for _ in range(self.chunks):
                    await asyncio.sleep(self.itl)
                response.update(done)
                self.completed += 1
                return web.json_response(response)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(self.stall)
            # vLLM's typed events: `event: TYPE` then the data, each with its sequence number.
            seq = 0

            async def send(kind: str, data: dict) -> None:
                nonlocal seq
                event = json.dumps({**data, "sequence_number": seq, "type": kind}, separators=(",", ":"))
                await resp.write(f"event: {kind}\ndata: {event}\n\n".encode())
                seq += 1

            await send("response.created", {"response": response})
            await send("response.in_progress", {"response": response})
            for i in range(self.chunks):
                await self._paced(i)
                await send("response.output_text.delta",
                           {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": f"tok{i} "})
            response.update(done)
            await send("response.completed", {"response": response})
            await resp.write_eof()
            self.completed += 1
            return resp

    async def _retrieve(self, request: web.Request):
        response_id = request.match_info["id"]
        self.looked_up.append(response_id)
        if response_id not in self.stored:
            return self._not_found(response_id)
        return web.json_response(self.stored[response_id])

    async def _cancel(self, request: web.Request):
        response_id = request.match_info["id"]
        self.looked_up.append(response_id)
        response = self.stored.get(response_id)
        if response is None:
            return self._not_found(response_id)
        if response["status"] not in ("queued", "in_progress"):
            return web.json_response({"error": {"message": "Cannot cancel a synchronous response.",
                                                "type": "invalid_request_error", "param": "response_id",
                                                "code": 400}}, status=400)
        response["status"] = "cancelled"
        return web.json_response(response)

    # --- scoring and tokens ----------------------------------------------------------------

    async def _rerank(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        documents = body["documents"]
        results = [{"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)}
                   for i, d in enumerate(documents)]
        return web.json_response({"id": "rerank-x", "model": self.model_id, "results": results,
                                  "usage": {"prompt_tokens": 3 * len(documents), "total_tokens": 3 * len(documents)}})

    async def _score(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        texts = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
        return web.json_response({"id": "score-x", "object": "list", "model": self.model_id,
                                  "data": [{"index": i, "object": "score", "score": 0.5} for i in range(len(texts))],
                                  "usage": {"prompt_tokens": 4 * len(texts), "total_tokens": 4 * len(texts)}})

    async def _detokenize(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        if not isinstance(body.get("tokens"), list):  # vLLM's request model refuses it: a 400
            return web.Response(body=json.dumps(error_body("Field required: tokens", 400, "BadRequestError")),
                                status=400, content_type="application/json")
        return web.json_response({"prompt": " ".join(f"t{t}" for t in body["tokens"])})

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
        await asyncio.sleep(self.stall)

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


def main(argv: list[str], knobs: list[str] | tuple[str, ...] = ()) -> None:
    """A "vLLM server" process, the one stand-in for vLLM's interpreter (tests/harness.py's
    standin_python): takes vLLM's command line (the flags it needs, the rest ignored), plus
    --fake-* knobs, set through a model's extra_args or, for every server, as *knobs*."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--fake-chunks", type=int, default=5)
    parser.add_argument("--fake-itl", type=float, default=0.0)
    parser.add_argument("--fake-fail", help="exit at once with this error, as a server that cannot load")
    parser.add_argument("--fake-exit-code", type=int, default=1, help="the code --fake-fail exits with")
    parser.add_argument("--fake-gate", help="load (not listen yet) until this file exists")
    parser.add_argument("--fake-record", help="write [argv, CUDA_VISIBLE_DEVICES] to DIR/ran-PORT (ran-worker)")
    parser.add_argument("--fake-then", choices=("serve", "exit", "hang"), default="serve",
                        help="after the above: serve, exit 0, or hang (ignoring SIGTERM, with a child, "
                             "writing 'pid child pgid sid' to DIR/pids with --fake-record), as a stuck server")
    args, _ = parser.parse_known_args([*argv, *knobs])
    if args.fake_record:
        with open(f"{args.fake_record}/ran-{args.port or 'worker'}", "w") as f:
            json.dump([argv, os.environ.get("CUDA_VISIBLE_DEVICES")], f)
    if args.fake_fail:
        print(f"ERROR {args.fake_fail}", flush=True)
        raise SystemExit(args.fake_exit_code)
    if args.fake_gate:
        from tests.harness import wait_until_sync
        wait_until_sync(lambda: os.path.exists(args.fake_gate), timeout=3600, what=f"{args.fake_gate} created")
    if args.fake_then == "exit":
        return
    if args.fake_then == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
        if args.fake_record:
            with open(f"{args.fake_record}/pids", "w") as f:
                f.write(f"{os.getpid()} {child.pid} {os.getpgid(0)} {os.getsid(0)}")
        threading.Event().wait()
    fake = FakeBackend(model_id=args.served_model_name, chunks=args.fake_chunks, itl=args.fake_itl)
    print(f"INFO fake vLLM serving {args.served_model_name} on port {args.port}", flush=True)
    web.run_app(fake.app(), host=args.host, port=args.port, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main(sys.argv[1:])
