"""Forwarding one admitted request to its backend, streaming or not.

Streams pass through event by event as they arrive: nothing is buffered
beyond the current incomplete SSE event, and that up to
gateway.max_upstream_event_bytes.  The only per-chunk work is a
timestamp and a search for the event that carries usage.  Backends that
frame events with CRLF (sse-starlette's default) are read the same way.
A non-streamed answer is read up to gateway.max_upstream_body_bytes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import orjson
from aiohttp import web

from gateway.base.bounded import TooLarge, read_at_most
from gateway.base.errors import ApiError, error_event, message_of
from gateway.http.accounting import Account
from gateway.http.appkeys import (
    ACCOUNT,
    CONFIG,
    METRICS,
    MONITOR,
    PINNED_REPLICA,
    REQUEST_ID,
    SESSION,
    UPSTREAM_TIMEOUT,
)
from gateway.routing.backends import Backend
from gateway.routing.balancer import Balancer, Replica

log = logging.getLogger("localai.proxy")

# Headers of the backend's response that mean something to the client.
_PASS_HEADERS = ("Content-Type", "Retry-After")
# The usage object of OpenAI's final chunk, Anthropic's message_start/message_delta and
# the Responses API's response.completed, however the backend spaces its JSON.
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
# The event that ends a stream, in each API: the client has its whole answer once it is sent.
_FINAL_EVENT = re.compile(
    rb"^(?:data: ?\[DONE\]|event: ?(?:message_stop|response\.(?:completed|failed|incomplete)))\s*$", re.M)
# Paths whose streams report usage only when asked to (stream_options.include_usage).
_USAGE_ON_REQUEST = ("/v1/chat/completions", "/v1/completions")


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


# The last event of a stream its backend broke off, in the client's API's shape.
StreamError = Callable[[str], bytes]


def _openai_stream_error(message: str) -> bytes:
    return error_event(message, code="backend_error")


def event_json(event: bytes) -> object:
    """The JSON of an SSE event's data lines (None if there is none)."""
    data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _usage_of(obj: dict) -> object:
    """Usage where each API puts it: top level, or in Anthropic's message / the Responses API's response."""
    if isinstance(obj.get("usage"), dict):
        return obj["usage"]
    for holder in ("message", "response"):
        inner = obj.get(holder)
        if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
            return inner["usage"]
    return None


def _ask_for_usage(path: str, body: dict) -> bool:
    """Ask an OpenAI stream for its usage event so tokens can be counted; True if the client
    did not ask for it itself (the event is then dropped again on the way out)."""
    if path not in _USAGE_ON_REQUEST:
        return False
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage"):
        return False
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return True


def _unreachable(backend: Backend, exc: BaseException) -> ApiError:
    if isinstance(exc, TimeoutError):
        what = str(exc) if isinstance(exc, DeadlineMissed) else f"{type(exc).__name__}; gateway.read_timeout"
        return ApiError(504, f"Model '{backend.name}' did not answer in time ({what}); retry shortly.",
                        code="upstream_timeout", type="server_error", headers={"Retry-After": "5"})
    return ApiError(502, f"Model '{backend.name}' did not answer ({type(exc).__name__}); retry shortly.",
                    code="backend_unreachable", type="server_error", headers={"Retry-After": "5"})


class DeadlineMissed(TimeoutError):
    """A streamed request's backend sent no headers, or no first chunk, in time: says which."""


class Released(Exception):
    """The request's replica was marked failed while the request waited on it (Replica.release)."""


def _openai_error(data: bytes) -> bool:
    """Whether an error body is OpenAI's shape (vLLM's own), which passes on as it is (the client's
    family reshapes it: errors.py)."""
    if data[:1] != b"{":
        return False
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str)


def _shaped_error(backend: Backend, upstream: aiohttp.ClientResponse, data: bytes) -> ApiError:
    """An upstream's error in a body of another shape: its web framework's `text/plain` "Internal
    Server Error" on an unhandled exception, a proxy's HTML page, FastAPI's {"detail": ...}. Its
    status and a short reason leave in the client's API shape; of the body only a message found in
    JSON, never its text or HTML, which may be anything (a page, a traceback)."""
    found = message_of(data) if data[:1] == b"{" else None
    reason = f"HTTP {upstream.status} {upstream.reason or ''}".rstrip()
    message = f"Model '{backend.name}' answered {reason}" + (f": {found[:500]}" if found else ".")
    headers = {"Retry-After": upstream.headers["Retry-After"]} if "Retry-After" in upstream.headers else None
    return ApiError(upstream.status, message, code="backend_error",
                    type="server_error" if upstream.status >= 500 else "invalid_request_error", headers=headers)


# Failures that leave no doubt the replica sent nothing the client has seen: it refused or dropped
# the connection or closed it before its response began, missed a deadline (a hung server), broke
# off a stream before its first chunk, or was marked failed meanwhile. The request is tried on
# another replica.
_NOTHING_SENT = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ConnectionTimeoutError,
                 aiohttp.ClientPayloadError, TimeoutError, Released)


# Answers that say the replica, not the request, is at fault: tried on another replica if there is one.
_SERVER_FAULTS = frozenset({500, 502, 503, 504})


def _replica_failed(app: web.Application, backend: Backend, replica: Replica, error: str) -> None:
    """Count a failure of a replica that sent nothing the client has seen (its breaker may open)."""
    app[METRICS].child(app[METRICS].replica_failures, backend.name, replica.address).inc()
    if replica.failed(time.monotonic()):
        log.warning("replica %s of model %s taken out after %d failures in a row", replica.address,
                    backend.name, replica.failures, extra={"model": backend.name, "replica": replica.address,
                                                           "error": error})
    app[MONITOR].poke(backend.name)


def _leave(app: web.Application, backend: Backend, balancer: Balancer, replica: Replica) -> None:
    """The request no longer occupies the replica: its answer ended, or the try failed."""
    replica.in_flight -= 1
    replica.changed.set()
    if balancer.only is None:  # a model with replicas counts each one's
        metrics = app[METRICS]
        metrics.child(metrics.replica_in_flight, backend.name, replica.address).dec()


async def _send(app: web.Application, url: str, method: str, headers: dict[str, str], payload: bytes | None,
                stream: bool) -> tuple[aiohttp.ClientResponse, bytes]:
    """One try: the upstream response (status line and headers in) and, for a stream, the first
    chunk of its answer. Until that chunk nothing is committed to the client, so a try that fails
    or misses a deadline can be made again elsewhere. vLLM sends a stream's headers before it
    generates: the headers alone say nothing of whether an answer will come.

    A non-streamed answer's headers come with the whole answer: only read_timeout (the
    session's sock_read) bounds it, as it bounds the silence between a stream's chunks."""
    session, timeout = app[SESSION], app[UPSTREAM_TIMEOUT]
    if not stream:
        return await session.request(method, url, headers=headers, data=payload, timeout=timeout), b""
    gw = app[CONFIG].gateway
    start = asyncio.get_running_loop().time()
    headers_in = False
    try:
        async with asyncio.timeout(gw.response_headers_timeout) as deadline:
            upstream = await session.request(method, url, headers=headers, data=payload, timeout=timeout)
            if upstream.status != 200 or not upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
                return upstream, b""
            headers_in = True
            deadline.reschedule(start + gw.first_token_timeout)
            try:
                first = await upstream.content.readany()
            except BaseException:
                upstream.close()
                raise
            if not first:
                upstream.close()
                raise aiohttp.ServerDisconnectedError("the stream ended before its first chunk")
            return upstream, first
    except TimeoutError as exc:
        if isinstance(exc, aiohttp.ClientError):  # read_timeout (sock_read) came first
            raise
        missed = f"no first chunk within {gw.first_token_timeout:g} s: gateway.first_token_timeout" if headers_in \
            else f"no response headers within {gw.response_headers_timeout:g} s: gateway.response_headers_timeout"
        raise DeadlineMissed(missed) from None


async def _connect(request: web.Request, backend: Backend, balancer: Balancer, method: str, path: str,
                   headers: dict[str, str], payload: bytes | None, affinity: int | None,
                   stream: bool) -> tuple[aiohttp.ClientResponse, Replica, bytes]:
    """The upstream response (its status line and headers in, and a stream's first chunk: `_send`),
    and the replica it came from (one more request in flight on it)."""
    app = request.app
    replica = balancer.only
    if replica is not None:
        try:
            upstream, first = await _send(app, replica.url + path, method, headers, payload, stream)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _unreachable(backend, exc) from None
        replica.in_flight += 1
        return upstream, replica, first
    metrics = app[METRICS]
    tried: list[Replica] = []
    error: BaseException | None = None
    pinned = request.get(PINNED_REPLICA)
    if pinned is not None:
        # Only that replica holds what the request reads: no other is tried.
        tried = [r for r in balancer.replicas if r.url != pinned]
        if len(tried) == len(balancer.replicas):  # gone from the plan since: any replica answers the 404
            tried = []
    task = asyncio.current_task()
    assert task is not None  # a request's handler runs in a task
    while True:
        picked = balancer.pick(affinity, time.monotonic(), tried)
        if picked is None and error is not None:  # every usable replica was tried
            raise _unreachable(backend, error)
        if picked is None:  # the ready ones all have their breakers open, or drain
            draining = sum(r.draining for r in balancer.replicas)
            raise ApiError(503, f"Model '{backend.name}' has no replica that answers now"
                                + (f" ({draining} draining)" if draining else "") + "; retry shortly.",
                           code="model_unavailable", type="server_error", headers={"Retry-After": "5"})
        replica = picked
        label = (backend.name, replica.address)
        replica.in_flight += 1
        metrics.child(metrics.replica_in_flight, *label).inc()
        replica.waiting.add(task)  # released to the others should the replica be marked failed
        try:
            try:
                upstream, first = await _send(app, replica.url + path, method, headers, payload, stream)
            except asyncio.CancelledError:
                if not replica.was_released(task):
                    raise
                raise Released(f"replica {replica.address} was marked failed") from None
            finally:
                replica.waiting.discard(task)
        except BaseException as exc:  # a client that hangs up cancels the try: not the replica's failure
            _leave(app, backend, balancer, replica)
            if not isinstance(exc, (TimeoutError, aiohttp.ClientError, Released)):
                raise
            if not isinstance(exc, _NOTHING_SENT):
                metrics.child(metrics.replica_failures, *label).inc()
                raise _unreachable(backend, exc) from None
            _replica_failed(app, backend, replica, str(exc) or type(exc).__name__)
            tried.append(replica)
            error = exc
            continue
        if upstream.status in _SERVER_FAULTS and balancer.spare(time.monotonic(), [*tried, replica]):
            # vLLM answers 500 once its engine is gone (a server shutting down or crashed) and 503
            # while it starts; nothing has reached the client yet, and another replica can answer.
            upstream.close()
            _leave(app, backend, balancer, replica)
            _replica_failed(app, backend, replica, f"HTTP {upstream.status}")
            tried.append(replica)
            continue
        replica.succeeded()
        metrics.child(metrics.replica_requests, *label).inc()
        request[ACCOUNT].backend = replica.url
        return upstream, replica, first


async def forward(request: web.Request, backend: Backend, path: str, body: dict, *,
                  adapter: Adapter | None = None, headers: dict[str, str] | None = None,
                  prepared: web.StreamResponse | None = None, method: str = "POST",
                  stream_error: StreamError | None = None, affinity: int | None = None) -> web.StreamResponse:
    """`prepared`: a stream already opened for this request (while its model was loading);
    the answer continues it, and an error becomes its last event (raised as ApiError).
    A GET (`method`) sends no body: its `body` only says whether to relay a stream.
    `stream_error`: the family's last event for a stream its backend breaks off.
    `affinity`: the request's conversation (balancer.affinity_key), for a model with replicas."""
    acct = request[ACCOUNT]
    stream = body.get("stream") is True
    strip_usage = stream and _ask_for_usage(path, body)
    up_headers = {"Content-Type": "application/json", "X-Request-Id": request[REQUEST_ID]}
    if backend.api_key:
        up_headers["Authorization"] = f"Bearer {backend.api_key}"
    balancer = backend.balancer  # a reload may replace it while this request runs
    upstream, replica, first = await _connect(request, backend, balancer, method, path, up_headers,
                                              orjson.dumps(body) if method != "GET" else None, affinity, stream)
    try:
        ctype = upstream.headers.get("Content-Type", "")
        if not (stream and upstream.status == 200 and ctype.startswith("text/event-stream")):
            try:
                data = await read_at_most(upstream, request.app[CONFIG].gateway.max_upstream_body_bytes)
            except TooLarge as exc:
                raise ApiError(502, f"Model '{backend.name}' sent an answer {exc} "
                                    "(gateway.max_upstream_body_bytes).",
                               code="upstream_too_large", type="server_error") from None
            if prepared is not None:
                status = upstream.status if upstream.status >= 400 else 502
                message = message_of(data) or f"the model server answered HTTP {upstream.status}"
                raise ApiError(status, message, code="backend_error", type="server_error")
            if upstream.status >= 400 and not _openai_error(data):
                raise _shaped_error(backend, upstream, data)
            out_headers = {h: upstream.headers[h] for h in _PASS_HEADERS if h in upstream.headers}
            if upstream.status == 200 and data[:1] == b"{":
                try:
                    answer = orjson.loads(data)
                except orjson.JSONDecodeError:
                    answer = None
                if isinstance(answer, dict):
                    acct.add_usage(answer.get("usage"))
                if adapter is not None:
                    data = adapter.body(data)
            return web.Response(body=data, status=upstream.status, headers={**out_headers, **(headers or {})})
        last_words = adapter.error if adapter is not None else stream_error or _openai_stream_error
        return await _relay_stream(request, upstream, first, strip_usage, adapter, headers or {}, prepared,
                                   last_words)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise ApiError(502, f"Model '{backend.name}' broke off the response ({type(exc).__name__}).",
                       code="backend_error", type="server_error") from None
    finally:
        _leave(request.app, backend, balancer, replica)
        # On success the body was read; on cancellation (client gone) or error this
        # closes the upstream connection, which is how vLLM learns to stop generating.
        if upstream.content.is_eof():
            upstream.release()
        else:
            upstream.close()


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse, first: bytes, strip_usage: bool,
                        adapter: Adapter | None, headers: dict[str, str],
                        prepared: web.StreamResponse | None, last_words: StreamError) -> web.StreamResponse:
    acct = request[ACCOUNT]
    if prepared is not None:
        resp = prepared
    else:
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": adapter.stream_content_type if adapter else "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # tell reverse proxies in front of us not to buffer either
            **headers,
        })
        await resp.prepare(request)
    try:
        await _pump_events(request, resp, upstream, first, acct, strip_usage, adapter)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TooLarge) as exc:
        # The status line is gone already: end the stream with an error event the
        # client can show, instead of leaving it waiting for more.
        acct.error = f"Model '{acct.model}' broke off the response ({type(exc).__name__})." \
            if not isinstance(exc, TooLarge) else \
            f"Model '{acct.model}' sent an event {exc} (gateway.max_upstream_event_bytes); its stream was cut off."
        await resp.write(last_words(acct.error))
        await resp.write_eof()
    return resp


async def _pump_events(request: web.Request, resp: web.StreamResponse, upstream: aiohttp.ClientResponse,
                       first: bytes, acct: Account, strip_usage: bool, adapter: Adapter | None) -> None:
    """`first`: the stream's first chunk, read before the client's response was committed (`_send`)."""
    metrics = request.app[METRICS]
    itl = metrics.child(metrics.itl, acct.model or "")
    limit = request.app[CONFIG].gateway.max_upstream_event_bytes
    last = None
    carry = b""
    crlf: bool | None = None  # decided by the first line ending the backend sends
    content = upstream.content
    while True:
        if first:
            chunk, first = first, b""
        else:
            chunk = await content.readany()
            if not chunk:
                break
        now = time.monotonic()
        if last is None:
            acct.ttft = now - acct.started
        else:
            itl.observe(now - last)
        last = now
        if crlf is None and b"\n" in chunk:
            crlf = b"\r\n" in chunk
        data = carry + chunk if carry else chunk
        if crlf:
            # One framing downstream: LF, as vLLM and OpenAI send it. A CR split from its LF
            # at a chunk's end stays in `carry` and is joined to it here.
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:  # no complete event yet
            carry = data
            if len(carry) > limit:
                raise TooLarge(limit)
            continue
        carry = data[end + 2:]
        if len(carry) > limit:
            raise TooLarge(limit)
        out = data[:end + 2]
        if _USAGE.search(out):
            out = _take_usage(out, acct, strip_usage)
        final = _FINAL_EVENT.search(out) is not None
        if adapter is not None:
            out = adapter.events(out)
        if out:
            await resp.write(out)
        if final:
            # A client may hang up once it has the final event (Codex does), before the backend
            # closes the stream: the request was still answered.
            acct.answered = True
    if carry and adapter is None:
        await resp.write(carry.replace(b"\r\n", b"\n") if crlf else carry)
    if adapter is not None:
        await resp.write(adapter.end())
    await resp.write_eof()


def _take_usage(events: bytes, acct: Account, strip: bool) -> bytes:
    kept = []
    for event in events.split(b"\n\n"):
        if _USAGE.search(event):
            obj = event_json(event)
            if isinstance(obj, dict):
                acct.add_usage(_usage_of(obj))
                if strip and "choices" in obj and not obj["choices"]:
                    continue  # the usage-only chunk the client did not ask for
        kept.append(event)
    return b"\n\n".join(kept)
