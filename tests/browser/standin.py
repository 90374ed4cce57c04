"""A small stand-in for the gateway, for WebUI tests that need precise control.

It speaks the gateway's API contract (``/v1/models``, ``/health``, ``/ready``,
streaming ``/v1/chat/completions`` with OpenAI-shaped errors, ``Retry-After``,
``X-LocalAI-Truncated-Messages``, ``X-Request-ID``) with canned answers, and serves
the real WebUI bundle through :func:`gateway.webui.add_webui_routes`.

It runs in a background thread with its own event loop so that synchronous
Playwright tests can drive it. It also offers the ``real_stack`` interface
(``url``, ``api_key``, ``vllm_metrics``, ``stop_backend``, ``start_backend``,
``wait_ready``) so the main-flow tests can be developed against it.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway.webui import add_webui_routes

DIST = Path(__file__).resolve().parents[2] / "webui" / "dist"

DEFAULT_REPLY = """Here is a small example in **Python**:

```python
def fib(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
```

- It runs in `O(n)` time.
- It uses constant memory.

| n | fib(n) |
|---|--------|
| 10 | 55 |
| 20 | 6765 |
"""


@dataclass
class Model:
    id: str
    max_model_len: int = 2048
    context_limit: int = 1536
    state: str = "ready"
    reason: str | None = None
    aliases: list[str] = field(default_factory=list)
    default: bool = False


class StandIn:
    def __init__(self, port: int, api_key: str = "test-key") -> None:
        self.port = port
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.reset()

    # ------------------------------------------------------------ controls
    def reset(self) -> None:
        self.models = [
            Model("coder", aliases=["dev", "python"], default=True),
            Model("chat", max_model_len=4096, context_limit=3584, aliases=["general"]),
        ]
        self.reply: str | None = None  # None: DEFAULT_REPLY
        self.token_delay = 0.01
        self.script: deque[tuple[int, str, float | None]] = deque()  # (status, code, retry_after)
        self.truncate = 0
        self.prompt_tokens: int | None = None
        self.requests: list[dict] = []
        self.running: dict[str, int] = {}
        self.generated: dict[str, int] = {}
        self.cancelled = 0
        self.auth_required = True

    def model(self, name: str) -> Model:
        for m in self.models:
            if m.id == name or name in m.aliases:
                return m
        raise KeyError(name)

    def vllm_metrics(self, model: str) -> str:
        m = self.model(model).id
        return (
            f'vllm:num_requests_running{{model_name="{m}"}} {self.running.get(m, 0)}\n'
            f'vllm:num_requests_waiting{{model_name="{m}"}} 0\n'
            f'vllm:generation_tokens_total{{model_name="{m}"}} {self.generated.get(m, 0)}\n'
        )

    def stop_backend(self, model: str) -> None:
        m = self.model(model)
        m.state, m.reason = "failed", "backend exited (stopped by test)"

    def start_backend(self, model: str) -> None:
        m = self.model(model)
        m.state, m.reason = "loading", None

        def ready() -> None:
            m.state = "ready"

        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.call_later, 1.0, ready)

    def wait_ready(self, model: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.model(model).state != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError(model)
            time.sleep(0.05)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "StandIn":
        if self._thread is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="standin", daemon=True)
            self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop serving (the port is closed) but keep the loop for a restart."""
        if self._runner is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(5)
            self._loop.close()
            self._loop = None
            self._thread = None

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_post("/v1/chat/completions", self._chat)
        add_webui_routes(app, DIST)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    # ------------------------------------------------------------ handlers
    def _headers(self) -> dict[str, str]:
        return {"X-Request-ID": uuid.uuid4().hex[:16]}

    def _error(self, status: int, message: str, code: str, retry_after: float | None = None) -> web.Response:
        headers = self._headers()
        if retry_after is not None:
            headers["Retry-After"] = str(int(retry_after))
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        if not self.auth_required:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Invalid API key", "invalid_api_key")
        data = []
        for m in self.models:
            d = {
                "id": m.id,
                "object": "model",
                "owned_by": "localai",
                "aliases": m.aliases,
                "max_model_len": m.max_model_len,
                "context_limit": m.context_limit,
                "state": m.state,
                "state_reason": m.reason,
            }
            if m.default:
                d["default"] = True
            data.append(d)
        return web.json_response({"object": "list", "data": data}, headers=self._headers())

    async def _health(self, request: web.Request) -> web.Response:
        # Like the gateway: why a model is down only for a caller with the key.
        if self._authorized(request):
            models = {m.id: {"state": m.state, "reason": m.reason} for m in self.models}
        else:
            models = {m.id: {"state": m.state} for m in self.models}
        return web.json_response({"status": "ok", "models": models}, headers=self._headers())

    async def _ready(self, request: web.Request) -> web.Response:
        ok = any(m.state == "ready" for m in self.models)
        return web.json_response({"ready": ok}, status=200 if ok else 503, headers=self._headers())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._error(401, "Invalid API key", "invalid_api_key")
        body = await request.json()
        self.requests.append(body)
        if self.script:
            status, code, ra = self.script.popleft()
            return self._error(status, f"scripted {code}", code, ra)
        try:
            m = self.model(body.get("model", ""))
        except KeyError:
            return self._error(404, f"The model '{body.get('model')}' does not exist", "model_not_found")
        if m.state == "loading":
            return self._error(503, f"Model '{m.id}' is loading", "model_loading", 2)
        if m.state != "ready":
            return self._error(503, f"Model '{m.id}' is unavailable: {m.reason}", "model_unavailable")

        reply = self.reply if self.reply is not None else DEFAULT_REPLY
        if reply.startswith("echo:"):
            last = next((x["content"] for x in reversed(body["messages"]) if x["role"] == "user"), "")
            reply = f"{reply[5:]}{last}"
        pieces = re.findall(r"\s*\S+|\s+", reply)
        last_user = next((x["content"] for x in reversed(body["messages"]) if x["role"] == "user"), "")
        if "long essay" in last_user:  # like a real model without max_tokens: goes on and on
            pieces = pieces * 50
        finish_reason = "stop"
        if body.get("max_tokens") and len(pieces) > int(body["max_tokens"]):
            pieces = pieces[: int(body["max_tokens"])]
            finish_reason = "length"
        prompt_chars = sum(len(x.get("content", "")) for x in body["messages"])
        prompt_tokens = self.prompt_tokens if self.prompt_tokens is not None else max(1, prompt_chars // 4)

        headers = self._headers()
        if self.truncate:
            headers["X-LocalAI-Truncated-Messages"] = str(self.truncate)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "model": m.id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": finish_reason}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)},
                },
                headers=headers,
            )
        headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        async def send(obj: dict) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": m.id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        self.running[m.id] = self.running.get(m.id, 0) + 1
        try:
            await send(chunk({"role": "assistant", "content": ""}))
            for p in pieces:
                await asyncio.sleep(self.token_delay)
                await send(chunk({"content": p}))
                self.generated[m.id] = self.generated.get(m.id, 0) + 1
            await send(chunk({}, finish_reason))
            if (body.get("stream_options") or {}).get("include_usage"):
                await send(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "model": m.id,
                        "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces), "total_tokens": prompt_tokens + len(pieces)},
                    }
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self.running[m.id] -= 1
        return resp


if __name__ == "__main__":  # manual poking: python -m tests.browser.standin
    import sys

    s = StandIn(int(sys.argv[1]) if len(sys.argv) > 1 else 18399).start()
    print(f"stand-in on {s.url} (key {s.api_key})")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        s.close()
