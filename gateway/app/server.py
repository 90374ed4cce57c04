"""Running the app: one place that sets how aiohttp serves it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import socket
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from gateway.app.tls import SplitSite, load_context
from gateway.base import sdnotify
from gateway.base.errors import error_response
from gateway.http.appkeys import CONFIG, MONITOR

log = logging.getLogger("localai.gateway")

# The longest request line (method, path, version) and the longest header line aiohttp's
# parser takes. Two different numbers, so that a LineTooLong tells which one was too long.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELD = 16384

# Why the parser refused a request, as far as the client may be told: llhttp's own (fixed)
# reason, which its errors quote before the offending bytes ("Missing expected LF after
# header value:\n\n  b'Authorization: Bearer sk-...\r'"), or one of aiohttp's fixed
# sentences. Nothing else of the error is repeated: the bytes may hold a key.
_LLHTTP_REASON = re.compile(r"([A-Z][\w `'-]{2,80}):\n\n  ")
_AIOHTTP_REASON = re.compile(r"(Missing 'Host' header in request|Duplicate '[A-Za-z-]{1,40}' header found)\.")


def _refusal(exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp's parser refused, quoting none of it."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_REQUEST_LINE,):
            return 414, "request_line_too_long", f"The request line is longer than {MAX_REQUEST_LINE} bytes."
        return 431, "header_too_large", f"A request header is longer than {MAX_HEADER_FIELD} bytes."
    text = exc.message if isinstance(exc, HttpProcessingError) else ""
    if text == "Too many headers received":
        return 431, "header_too_large", "The request has too many headers."
    found = _AIOHTTP_REASON.fullmatch(text) or _LLHTTP_REASON.search(text)
    reason = found.group(1) if found else "the HTTP parser refused it"
    return 400, "malformed_request", f"Malformed HTTP request: {reason}."


class _GatewayProtocol(RequestHandler):
    """aiohttp's connection handler, but a request it cannot parse gets an OpenAI-shaped
    JSON error and one log line that quotes none of it (the raw bytes may hold a key).

    aiohttp answers those itself, outside the app and its middlewares, in text/plain and
    with an ERROR line carrying the traceback and the raw request."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # a handler raised past every middleware: a bug of ours, logged in full
            log.error("unhandled error answering %s %s", request.method, request.path, exc_info=exc)
            response = error_response(status, "Internal error in the gateway.", code="internal_error",
                                      type="server_error")
        else:
            status, code, text = _refusal(exc)
            # Scanners and TLS clients on the plain port send a bad method first: not worth a line.
            quiet = self._request_count == 1 and isinstance(exc, BadHttpMethod)
            log.log(logging.DEBUG if quiet else logging.INFO, "refused: %s", text,
                    extra={"status": status, "error": code, "remote": request.remote})
            response = error_response(status, text, code=code)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun; no error can follow it")
        response.force_close()
        return response

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            # Raised before the app's middlewares could shape it: an Expect other than 100-continue.
            resp = error_response(resp.status, f"{resp.reason}.", code="http_error")
        return await super().finish_response(request, resp, start_time)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        request = self._current_request
        if request is not None and self._messages and isinstance(self._messages[-1][0], _ErrInfo):
            # The parser refused what came after a head it had accepted (a bad chunk size, say):
            # aiohttp queues that as a request of its own, and the handler reading this body
            # would wait for the rest of it as long as the client keeps the connection open.
            request.content.set_exception(RequestPayloadError("the request body is malformed"))

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # A body broken off mid-way (bad chunk, bad gzip) raises again when aiohttp drains
        # it after the handler answered 400: that request has had its line already.
        if isinstance(kw.get("exc_info"), (HttpProcessingError, RequestPayloadError)):
            self.logger.debug(*args, **kw)
        else:
            super().log_exception(*args, **kw)


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _GatewayProtocol(self, loop=self._loop, **self._kwargs)


class _GatewayRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server itself from the app; only the connection handler it makes differs.
        server.__class__ = _GatewayServer
        return server


def _bound(host: str, port: int) -> socket.socket:
    """A listening socket of our own on host:port (what TCPSite would make)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str, port: int):
    # handler_cancellation: a client that disconnects cancels its handler, which
    # closes the upstream request, which makes vLLM stop generating (aiohttp's
    # default since 3.9 is to let the handler run on).
    runner = _GatewayRunner(app, handler_cancellation=True, access_log=None,
                            max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_HEADER_FIELD)
    await runner.setup()
    # Connections that waited in systemd's socket during a restart are served as soon as we
    # listen: know which models are ready first (a few ms; bounded for a hung backend).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3.0):
            await app[MONITOR].first_round()
    inherited = sdnotify.listen_socket()
    tls = app[CONFIG].gateway.tls
    site: web.BaseSite
    if tls is not None:  # HTTPS, and plain HTTP for this machine's clients, on one socket (tls.py)
        context = load_context(tls)
        sock = inherited or _bound(host, port)
        site = SplitSite(runner, sock, context)
        host, port = sock.getsockname()[:2]
    elif inherited is not None:
        site = web.SockSite(runner, inherited)
        host, port = inherited.getsockname()[:2]
    else:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    # What exists now (modules, config, app, metrics: ~50,000 objects) lives as long as the
    # process: freeze it out of the cyclic collector's walks, which took 17% of the CPU at
    # 1,000 requests/s. Requests allocate containers by the thousand per second, so the
    # young generation is collected every 20,000 allocations rather than every 700.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    log.info("gateway listening on %s://%s:%d%s%s", "https" if tls else "http", host, port,
             " (plain HTTP for clients on this host)" if tls else "", " (socket from systemd)" if inherited else "",
             extra={"host": host, "port": port, "socket_activated": inherited is not None, "tls": tls is not None})
    sdnotify.notify("READY=1\nSTATUS=serving")
    watchdog = asyncio.create_task(sdnotify.watchdog())
    try:
        yield runner
    finally:
        sdnotify.notify("STOPPING=1")
        watchdog.cancel()
        await runner.cleanup()
