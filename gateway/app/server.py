"""Running the app: one place that sets how aiohttp serves it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from gateway.app.tls import SplitSite, load_context
from gateway.base import sdnotify
from gateway.base.errors import error_response, shape_error
from gateway.http.appkeys import CONFIG, MONITOR

log = logging.getLogger("localai.gateway")

# The longest request line (method, path, version) and the longest header line aiohttp's
# parser takes. Two different numbers, so that a LineTooLong tells which one was too long.
MAX_REQUEST_LINE = 8190
LINGER_S = 2.0
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


def client_of(peer: object) -> str | None:
    """Whom a connection counts against for max_connections_per_client: its IPv4 address, or
    its IPv6 /64 (one host picks addresses from its /64 at will); None for a Unix socket."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return peer[0]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass
class _Bounds:
    """How long a client may take over a request head, and how many connections one client
    address may hold (gateway.header_timeout, max_connections_per_client), with the count."""

    app: web.Application
    header_timeout: float
    per_client: int  # 0: no limit
    open: dict[str, int] = field(default_factory=dict)

    def opened(self, client: str) -> int:
        count = self.open[client] = self.open.get(client, 0) + 1
        return count

    def closed(self, client: str) -> None:
        count = self.open.pop(client) - 1
        if count:
            self.open[client] = count


def _timeout_answer(seconds: float) -> bytes:
    """408 for a head that did not arrive in time, written on the bare connection: no request
    exists to shape it by, so it is OpenAI's shape, like the parser's refusals."""
    body = orjson.dumps({"error": {
        "message": f"The request's line and headers did not arrive within {seconds:g} s (gateway.header_timeout).",
        "type": "invalid_request_error", "param": None, "code": "header_timeout"}})
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class _GatewayProtocol(RequestHandler):
    """aiohttp's connection handler, but a request it cannot parse gets an OpenAI-shaped
    JSON error and one log line that quotes none of it (the raw bytes may hold a key).

    aiohttp answers those itself, outside the app and its middlewares, in text/plain and
    with an ERROR line carrying the traceback and the raw request.

    It also bounds what a slow or greedy client holds: a request head must be complete within
    header_timeout of the connection's start or of its first byte (aiohttp waits as long as
    bytes trickle in, up to its keep-alive timeout, which is idle_timeout here), and past
    max_connections_per_client connections from one address a request gets 429, unread by
    the app; past twice that, the connection is closed at once."""

    __slots__ = ("_bounds", "_client", "_head_timer", "_head_begun", "_first_head")

    def __init__(self, manager: _GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounds: _Bounds = manager.bounds
        self._client: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False
        self._first_head: asyncio.Future[None] | None = None  # a stop waits on it: shutdown()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()
        bounds = self._bounds
        self._client = client_of(transport.get_extra_info("peername"))
        if self._client is None or not bounds.per_client:
            return
        count = bounds.opened(self._client)
        if count > 2 * bounds.per_client:  # a flood: not worth reading a head for
            self.force_close()
        elif count > bounds.per_client:
            self._request_handler = self._too_many_connections

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is not None and self._bounds.per_client:
            self._bounds.closed(self._client)
            self._client = None
        self._disarm_head_timer()
        self._first_head_came()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self._bounds.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_begun = False

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # Not `_force_close`: a stop sets it on every connection and then waits for a request
        # still on its way (close() below); this timer is what bounds that wait.
        if self.transport is None:
            return
        if self._head_begun:
            log.info("refused: request head not complete within %g s", self._bounds.header_timeout,
                     extra={"status": 408, "error": "header_timeout", "remote": self._peer()})
            self.transport.write(_timeout_answer(self._bounds.header_timeout))
        self.force_close()

    def _peer(self) -> str | None:
        peer = self.peername
        return peer[0] if isinstance(peer, tuple) and peer else None

    async def _too_many_connections(self, request: web.BaseRequest) -> web.StreamResponse:
        cap = self._bounds.per_client
        log.info("refused: %s holds more than %d connections", self._client, cap,
                 extra={"status": 429, "error": "too_many_connections", "remote": request.remote})
        response = error_response(
            429, f"Your address holds {cap} connections to the gateway already, its limit "
                 "(gateway.max_connections_per_client); close some or retry shortly.",
            code="too_many_connections", type="rate_limit_error", headers={"Retry-After": "1"})
        if isinstance(request, web.Request):  # as the app's runner makes them
            response = shape_error(request, response, self._bounds.app)
        response.force_close()
        return response

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
        waiting = self._waiter is not None and not self._waiter.done()  # between requests
        if data and (waiting or self._head_timer is not None):
            # The first byte of a head starts its clock (the connection's start did for the first).
            self._head_begun = True
            self._arm_head_timer()
        heads = self._request_count
        super().data_received(data)
        if self._request_count > heads:  # a head is complete (or refused): the handler takes over
            self._disarm_head_timer()
            self._first_head_came()
        request = self._current_request
        if request is not None and self._messages and isinstance(self._messages[-1][0], _ErrInfo):
            # The parser refused what came after a head it had accepted (a bad chunk size, say):
            # aiohttp queues that as a request of its own, and the handler reading this body
            # would wait for the rest of it as long as the client keeps the connection open.
            request.content.set_exception(RequestPayloadError("the request body is malformed"))

    def close(self) -> None:
        # The gateway is stopping (a restart): aiohttp closes every connection between requests,
        # but one accepted just before, whose first request is still on its way, would lose it
        # (its client sent it to a socket that was listening). That request is served, then the
        # connection closed: aiohttp's shutdown waits for its handler, and the head timer
        # (header_timeout) bounds how long the request may take to come.
        if self._request_count == 0 and self.transport is not None:
            self._keepalive = False
            return
        super().close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        # aiohttp's shutdown marks the connection closing and from then on drops what arrives
        # unread: the request still on its way (close() above) would be lost after all. Its head
        # is waited for first; the head timer bounds the wait (it closes the connection).
        if self._request_count == 0 and self.transport is not None:
            self._first_head = self._loop.create_future()
            await self._first_head
        await super().shutdown(timeout)

    def _first_head_came(self) -> None:
        if self._first_head is not None and not self._first_head.done():
            self._first_head.set_result(None)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # A body broken off mid-way (bad chunk, bad gzip) raises again when aiohttp drains
        # it after the handler answered 400: that request has had its line already.
        if isinstance(kw.get("exc_info"), (HttpProcessingError, RequestPayloadError)):
            self.logger.debug(*args, **kw)
        else:
            super().log_exception(*args, **kw)


class _GatewayServer(web.Server):
    bounds: _Bounds

    def __call__(self) -> RequestHandler:
        return _GatewayProtocol(self, loop=self._loop, **self._kwargs)


class _GatewayRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server itself from the app; only the connection handler it makes differs.
        server.__class__ = _GatewayServer
        assert isinstance(server, _GatewayServer)
        gw = self.app[CONFIG].gateway
        server.bounds = _Bounds(self.app, gw.header_timeout, gw.max_connections_per_client)
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
    # default since 3.9 is to let the handler run on). keepalive_timeout: aiohttp closes
    # a connection that holds no complete request head this long after its last answer.
    # lingering_time: after an answer sent before its body was read (413, 401, 408 body_timeout),
    # the rest of the body is read and dropped this long at most, so the client sees the answer
    # rather than a reset; aiohttp's 10 s would let a trickling body hold its connection on.
    runner = _GatewayRunner(app, handler_cancellation=True, access_log=None, lingering_time=LINGER_S,
                            keepalive_timeout=app[CONFIG].gateway.idle_timeout,
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
        site = SplitSite(runner, sock, context, timeout=app[CONFIG].gateway.header_timeout,
                         per_client=app[CONFIG].gateway.max_connections_per_client)
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
