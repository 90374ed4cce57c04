"""The benchmark's HTTP/1.1 load generator: raw asyncio protocols on uvloop.

No HTTP client library: a request is one pre-built bytes object written to a
keep-alive connection, a response is parsed just enough to know its status,
where it ends and (for SSE) where each event ends.  That keeps the client's
cost per request to a few microseconds, so it can drive the gateway at
thousands of requests per second from the one core it shares with the mock
upstream.

Three ways to load a target:

- `sequential`: one connection, the next request as soon as the last answered.
- `open_loop`: requests at a fixed arrival rate whatever the server does (a
  slow server does not slow the arrivals).  The generator measures its own
  lag (actual send time - scheduled time) and how many connections it had
  to open; a report flags a run where the generator, not the server, fell
  behind.  Latency is timed from the actual send; `sched_latency` from the
  scheduled time (what a user arriving on schedule would have seen).
- `closed_loop`: N users, each with its own connection, issuing requests back
  to back (streams for profile B and real vLLM, held requests for profile C).

Times are time.monotonic() (CLOCK_MONOTONIC, ns resolution; uvloop's
loop.time() only has milliseconds).  Stream events carrying the mock's send
time ("t":) also give the delay of each event from the mock to the client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

_now = time.monotonic


def build_request(host: str, port: int, path: str, body: bytes, api_key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\n{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Result:
    t_sched: float
    t_send: float = 0.0
    t_done: float = 0.0
    status: int = 0
    error: str | None = None
    # streams only
    events: list[float] = field(default_factory=list)   # arrival time of each content event
    transit: list[float] = field(default_factory=list)  # mock send -> client arrival, per event
    done_marker: bool = False
    reads: int = 0                                      # reads that carried at least one event

    @property
    def latency(self) -> float:
        return self.t_done - self.t_send


class Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time, minimal response parsing."""

    def __init__(self, on_free=None):
        self.transport = None
        self.connected: asyncio.Future = asyncio.get_running_loop().create_future()
        self.result: Result | None = None
        self.waiter: asyncio.Future | None = None
        self.on_free = on_free
        self.closed = False
        self._reset_parse()

    def _reset_parse(self) -> None:
        self.buf = b""
        self.head_done = False
        self.chunked = False
        self.remaining = 0
        self.sse = False
        self.sse_buf = b""

    # -- asyncio protocol --
    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed"))
        if self.result is not None:
            self._finish(_now(), "connection_lost" if exc is None else type(exc).__name__)

    def send(self, data: bytes, result: Result, waiter: asyncio.Future | None = None) -> None:
        self.result, self.waiter = result, waiter
        self._reset_parse()
        result.t_send = _now()
        self.transport.write(data)

    def _finish(self, now: float, error: str | None = None) -> None:
        r, w = self.result, self.waiter
        self.result = self.waiter = None
        r.t_done = now
        if error is not None and r.error is None:
            r.error = error
        if error is not None and not error.startswith("http_") and self.transport is not None:
            self.transport.close()
            self.closed = True
        if w is not None and not w.done():
            w.set_result(r)
        if self.on_free is not None:
            self.on_free(self)

    def data_received(self, data: bytes) -> None:
        now = _now()
        r = self.result
        if r is None:
            return  # bytes after a finished response: ignore
        buf = self.buf + data if self.buf else data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            r.status = int(head[9:12])
            self.head_done = True
            self.sse = b"text/event-stream" in head
            if b"transfer-encoding: chunked" in head:
                self.chunked = True
                self.remaining = -1  # waiting for a chunk size line
            else:
                i = head.find(b"content-length:")
                self.remaining = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) \
                    if i >= 0 else 0
            buf = buf[end + 4:]
        if not self.chunked:
            self.remaining -= len(buf)
            self.buf = b""
            if self.sse and buf:
                self._sse(buf, now)
            if self.remaining <= 0:
                self._finish(now, None if r.status == 200 else f"http_{r.status}")
            return
        # chunked transfer encoding
        payload = []
        pos, n = 0, len(buf)
        while pos < n:
            if self.remaining == -1:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    if self.sse and payload:
                        self._sse(b"".join(payload), now)
                    self.buf = b""
                    self._finish(now, None if r.status == 200 else f"http_{r.status}")
                    return
                self.remaining = size + 2  # data + CRLF
            take = min(self.remaining, n - pos)
            part = buf[pos:pos + take]
            self.remaining -= take
            pos += take
            if self.remaining == 0:
                part = part[:-2]
                self.remaining = -1
            elif self.remaining == 1:  # the CR of the CRLF arrived, the LF not yet
                part = part[:-1]
            payload.append(part)
        self.buf = buf[pos:]
        if payload and self.sse:
            self._sse(b"".join(payload), now)

    def _sse(self, data: bytes, now: float) -> None:
        r = self.result
        buf = self.sse_buf + data if self.sse_buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.sse_buf = buf
            return
        self.sse_buf = buf[end + 2:]
        got = False
        for ev in buf[:end].split(b"\n\n"):
            if not ev.startswith(b"data:"):
                continue  # comments, keep-alives
            if ev.startswith(b"data: [DONE]"):
                r.done_marker = True
                continue
            if b'"choices":[]' in ev:
                continue  # usage-only chunk
            r.events.append(now)
            got = True
            i = ev.rfind(b'"t":')
            if i >= 0:
                r.transit.append(now - float(ev[i + 4:ev.index(b"}", i)]))
        if got:
            r.reads += 1


async def connect(host: str, port: int, on_free=None) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: Conn(on_free), host, port)
    return proto


async def sequential(host: str, port: int, request: bytes | list[bytes], duration: float,
                     max_requests: int = 10**9) -> list[Result]:
    """`request`: the one request, or several sent in turn (different conversations, say)."""
    loop = asyncio.get_running_loop()
    conn = await connect(host, port)
    results: list[Result] = []
    requests = request if isinstance(request, list) else [request]
    end = _now() + duration
    try:
        while _now() < end and len(results) < max_requests:
            if conn.closed:
                conn = await connect(host, port)
            fut = loop.create_future()
            r = Result(t_sched=_now())
            conn.send(requests[len(results) % len(requests)], r, fut)
            await fut
            results.append(r)
    finally:
        conn.transport.close()
    return results


@dataclass
class OpenLoopRun:
    results: list[Result]
    offered_rate: float
    duration: float
    t_start: float
    conns_prewarmed: int
    conns_opened: int          # extra connections opened because every one was busy
    conn_cap_hit: int          # requests not sent: connection cap reached
    timeout: float


async def open_loop(host: str, port: int, request: bytes | list[bytes], rate: float, duration: float,
                    grace: float = 2.0, prewarm: int | None = None, max_conns: int = 4000) -> OpenLoopRun:
    """Send at `rate` per second for `duration` seconds; wait up to `grace` for the last answers.
    `request`: the one request, or several sent in turn."""
    requests = request if isinstance(request, list) else [request]
    idle: list[Conn] = []
    every: list[Conn] = []

    def on_free(c: Conn) -> None:
        if not c.closed:
            idle.append(c)

    prewarm = prewarm if prewarm is not None else int(min(256, max(16, rate * 0.01)))
    for c in await asyncio.gather(*(connect(host, port, on_free) for _ in range(prewarm))):
        idle.append(c)
        every.append(c)
    opened = 0
    capped = 0
    pending_open: list[asyncio.Task] = []

    async def send_on_new(r: Result, request: bytes) -> None:
        nonlocal opened
        try:
            c = await connect(host, port, on_free)
        except OSError as exc:
            r.t_send = r.t_done = _now()
            r.error = f"connect_{type(exc).__name__}"
            return
        opened += 1
        every.append(c)
        c.send(request, r)

    n = int(rate * duration)
    interval = 1.0 / rate
    results = [Result(t_sched=0.0) for _ in range(n)]
    t0 = _now() + 0.01
    i = 0
    while i < n:
        now = _now()
        due = t0 + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            now = _now()
        # everything that is due: one timer tick (uvloop timers have 1 ms resolution)
        while i < n and t0 + i * interval <= now:
            r = results[i]
            r.t_sched = t0 + i * interval
            while idle and idle[-1].closed:
                idle.pop()
            request = requests[i % len(requests)]
            if idle:
                idle.pop().send(request, r)
            elif len(every) + len(pending_open) < max_conns:
                pending_open.append(asyncio.ensure_future(send_on_new(r, request)))
            else:
                r.t_send = r.t_done = now
                r.error = "client_conn_cap"
                capped += 1
            i += 1
    last_sched = t0 + (n - 1) * interval
    deadline = last_sched + grace
    # Polled, not awaited: an Event set by each answer would add work to the path being measured.
    while _now() < deadline and any(r.t_done == 0.0 for r in results[-200:]):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    while _now() < deadline and any(r.t_done == 0.0 for r in results):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    for r in results:
        if r.t_done == 0.0:
            r.error = r.error or "timeout"
            r.t_done = _now()
            if r.t_send == 0.0:
                r.t_send = r.t_done
        elif r.error is None and r.t_done - r.t_send > grace:
            r.error = "timeout"
    for t in pending_open:
        t.cancel()
    for c in every:
        if c.transport is not None:
            c.transport.close()
    return OpenLoopRun(results, rate, duration, t0, prewarm, opened, capped, grace)


async def closed_loop(host: str, port: int, request: bytes, users: int, duration: float,
                      stagger: float, request_timeout: float = 60.0) -> list[Result]:
    """`users` connections, each sending `request` back to back until `duration` has passed
    (at least once each); user k starts at k * stagger / users."""
    loop = asyncio.get_running_loop()
    conns = []
    # open the connections a batch at a time: a burst of 1,000 SYNs overflows nothing
    # but keeps the accept queue of a 1-core server busy for longer than it needs.
    for k in range(0, users, 100):
        conns += await asyncio.gather(*(connect(host, port) for _ in range(min(100, users - k))))
    results: list[Result] = []
    t0 = _now() + 0.05
    end = t0 + duration

    async def user(k: int) -> None:
        conn = conns[k]
        await asyncio.sleep(max(0.0, t0 + k * stagger / users - _now()))
        first = True
        while first or _now() < end:
            first = False
            if conn.closed:
                conn = conns[k] = await connect(host, port)
            fut = loop.create_future()
            r = Result(t_sched=_now())
            conn.send(request, r, fut)
            try:
                await asyncio.wait_for(fut, request_timeout)
            except TimeoutError:
                r.error, r.t_done = "timeout", _now()
                conn.transport.close()
            results.append(r)

    try:
        await asyncio.gather(*(user(k) for k in range(users)))
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    return results
