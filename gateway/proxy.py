"""Forwarding one admitted request to its backend, streaming or not.

Streams pass through event by event as they arrive: nothing is buffered
beyond the current incomplete SSE event.  The only per-chunk work is a
timestamp and a byte search for the usage event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from aiohttp import web

from .backends import Backend
from .errors import ApiError
from .observability import Metrics

# Headers of the backend's response that mean something to the client.
_PASS_HEADERS = ("Content-Type",)
_USAGE_MARK = b'"usage":{'
# Where an OpenAI stream takes `stream_options` to ask for its usage event; others (the
# Responses API) report usage without being asked.
_STREAM_OPTIONS_PATHS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Account:
    """What one request cost; filled along the path, logged and counted at the end."""

    started: float
    model: str | None = None
    backend: str | None = None
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_wait: float | None = None
    error: str | None = None  # what went wrong after a stream had begun (its status was sent as 200)

    def add_usage(self, usage: object) -> None:
        """Take the counts of an OpenAI usage object, or a Responses one (input/output_tokens)."""
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", usage.get("input_tokens", self.prompt_tokens))
            self.completion_tokens = usage.get("completion_tokens",
                                               usage.get("output_tokens", self.completion_tokens))


class Adapter(Protocol):
    """Reshapes a backend's OpenAI answer for another API (the Ollama one)."""

    stream_content_type: str

    def events(self, data: bytes) -> bytes:
        """Complete SSE events in, the bytes to send out."""

    def end(self) -> bytes:
        """Bytes to send after the backend's stream ended."""

    def body(self, data: bytes) -> bytes:
        """A successful non-streamed JSON answer, reshaped."""

    def error(self, message: str) -> bytes:
        """The last bytes of a stream the backend broke off."""


def event_data(event: bytes) -> dict | None:
    """The JSON object of one SSE event's data line (which may follow an `event:` line)."""
    start = event.find(b"data:")
    if start < 0:
        return None
    try:
        obj = orjson.loads(event[start + 5:])
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _usage_event_is_only_usage(event: bytes) -> tuple[dict | None, bool]:
    """Parse an SSE event carrying usage; say whether it is the usage-only final chunk.

    The usage is the event's own (OpenAI chunks) or its response's (the Responses API's
    `event: response.completed`).
    """
    obj = event_data(event)
    if obj is None:
        return None, False
    usage = obj.get("usage")
    if usage is None and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")
    return usage, "choices" in obj and not obj["choices"]


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    backend: Backend,
    path: str,
    body: dict,
    acct: Account,
    metrics: Metrics,
    timeout: aiohttp.ClientTimeout,
    request_id: str,
    *,
    adapter: Adapter | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> web.StreamResponse:
    """Send body to the backend (as JSON; not at all for a GET, whose body only says whether
    to relay a stream) and answer the client with what comes back."""
    stream = body.get("stream") is True
    strip_usage = False
    if stream and path in _STREAM_OPTIONS_PATHS:
        # Ask for the usage event so tokens can be counted; drop it again
        # if the client did not ask for it itself.
        opts = body.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage")):
            strip_usage = True
            body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    up_headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if backend.api_key:
        up_headers["Authorization"] = f"Bearer {backend.api_key}"
    try:
        upstream = await session.request(method, backend.url + path, headers=up_headers, timeout=timeout,
                                         data=orjson.dumps(body) if method != "GET" else None)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise ApiError(502, f"Model '{backend.name}' did not answer ({type(exc).__name__}); retry shortly.",
                       code="backend_unreachable", type="server_error",
                       headers={"Retry-After": "5"}) from None
    try:
        ctype = upstream.headers.get("Content-Type", "")
        if not (stream and upstream.status == 200 and ctype.startswith("text/event-stream")):
            data = await upstream.read()
            out_headers = {h: upstream.headers[h] for h in _PASS_HEADERS if h in upstream.headers}
            if upstream.status == 200 and data[:1] == b"{":
                try:
                    acct.add_usage(orjson.loads(data).get("usage"))
                except orjson.JSONDecodeError:
                    pass
                if adapter is not None:
                    data = adapter.body(data)
            return web.Response(body=data, status=upstream.status, headers={**out_headers, **(headers or {})})
        return await _relay_stream(request, upstream, acct, metrics, strip_usage, adapter, headers or {})
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as exc:
        raise ApiError(502, f"Model '{backend.name}' broke off the response ({type(exc).__name__}).",
                       code="backend_error", type="server_error") from None
    finally:
        # On success the body was read; on cancellation (client gone) or error this
        # closes the upstream connection, which is how vLLM learns to stop generating.
        if upstream.content.is_eof():
            upstream.release()
        else:
            upstream.close()


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse, acct: Account,
                        metrics: Metrics, strip_usage: bool, adapter: Adapter | None,
                        headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={
        "Content-Type": adapter.stream_content_type if adapter else "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # tell reverse proxies in front of us not to buffer either
        **headers,
    })
    await resp.prepare(request)
    try:
        await _pump_events(resp, upstream, acct, metrics, strip_usage, adapter)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as exc:
        # The status line is gone already: end the stream with an error event the
        # client can show, instead of leaving it waiting for more.
        acct.error = f"Model '{acct.model}' broke off the response ({type(exc).__name__})."
        if adapter is not None:
            await resp.write(adapter.error(acct.error))
        else:
            await resp.write(b"data: " + orjson.dumps({"error": {
                "message": acct.error, "type": "server_error", "param": None, "code": "backend_error"}}) + b"\n\n")
        await resp.write_eof()
    return resp


async def _pump_events(resp: web.StreamResponse, upstream: aiohttp.ClientResponse, acct: Account,
                       metrics: Metrics, strip_usage: bool, adapter: Adapter | None) -> None:
    itl = metrics.child(metrics.itl, acct.model)
    last = None
    carry = b""
    async for chunk in upstream.content.iter_any():
        now = time.monotonic()
        if last is None:
            acct.ttft = now - acct.started
        else:
            itl.observe(now - last)
        last = now
        data = carry + chunk if carry else chunk
        end = data.rfind(b"\n\n")
        if end < 0:  # no complete event yet
            carry = data
            continue
        carry = data[end + 2:]
        out = data[:end + 2]
        if _USAGE_MARK in out:
            out = _take_usage(out, acct, strip_usage)
        if adapter is not None:
            out = adapter.events(out)
        if out:
            await resp.write(out)
    if carry and adapter is None:
        await resp.write(carry)
    if adapter is not None:
        await resp.write(adapter.end())
    await resp.write_eof()


def _take_usage(events: bytes, acct: Account, strip: bool) -> bytes:
    kept = []
    for event in events.split(b"\n\n"):
        if _USAGE_MARK in event:
            usage, usage_only = _usage_event_is_only_usage(event)
            acct.add_usage(usage)
            if strip and usage_only:
                continue
        kept.append(event)
    return b"\n\n".join(kept)
