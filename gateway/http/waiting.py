"""A request for a load: on_demand model: held while the model comes in, then served.

A streamed request whose model must first be woken or started gets its response
headers at once and an SSE comment every few seconds (`: waiting for coder to load`),
so IDEs and proxies with idle timeouts don't give up during a start that takes a
minute. Anything that goes wrong after that point (no room, a failed start, the
backend's error) reaches the client as an error event, since the status line is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.base.errors import ApiError, error_event
from gateway.http.appkeys import ACCOUNT, KEEP_ALIVE, LIFECYCLE
from gateway.http.proxy import Adapter
from gateway.routing.backends import Backend

HEARTBEAT_S = 5.0
_SSE = "text/event-stream"

Serve = Callable[[web.StreamResponse | None], Awaitable[web.StreamResponse]]


async def serve_on_demand(request: web.Request, backend: Backend, stream: bool, adapter: Adapter | None,
                          serve: Serve) -> web.StreamResponse:
    """Hold the model resident for this request and serve it; `serve` gets the stream opened
    for heartbeats, if one was."""
    lifecycle = request.app[LIFECYCLE]
    keep_alive = request.get(KEEP_ALIVE)
    sse = stream and (adapter is None or adapter.stream_content_type == _SSE)
    if lifecycle.ready(backend) or not sse:
        async with lifecycle.hold(backend, keep_alive):
            return await serve(None)
    early = web.StreamResponse(status=200, headers={
        "Content-Type": _SSE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await early.prepare(request)
    beat = asyncio.create_task(_heartbeats(early, backend.name))
    try:
        async with lifecycle.hold(backend, keep_alive):
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            return await serve(early)
    except ApiError as exc:
        request[ACCOUNT].error = exc.message
        await early.write(adapter.error(exc.message) if adapter is not None else
                          error_event(exc.message, code=exc.code, type=exc.type, param=exc.param))
        await early.write_eof()
        return early
    finally:
        beat.cancel()


async def _heartbeats(response: web.StreamResponse, name: str) -> None:
    line = f": waiting for {name} to load\n\n".encode()
    while True:
        await response.write(line)
        await asyncio.sleep(HEARTBEAT_S)
