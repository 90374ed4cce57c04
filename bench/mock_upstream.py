"""A mock OpenAI upstream for the gateway benchmark, as cheap as a Python server can be.

One process, uvloop, a raw asyncio protocol per connection (no framework), one
port per profile:

  port+0  profile A  instant JSON chat completion (pure gateway overhead)
  port+1  profile B  SSE stream: time to first token, inter-token delay, length settable
  port+2  profile C  JSON after a fixed delay (1.5 s): many held requests
  port+3… replicas   (--replicas) one port per replica of one model: `SECONDSxSLOTS` is a server
                     that answers JSON after SECONDS, SLOTS requests at a time, queueing the rest
                     (a GPU's batch, crudely: unequal speeds make unequal capacities); `closing`
                     passes its health checks but closes every POST's connection unanswered.
                     POST /_hang on a replica's port makes it answer nothing more, health checks
                     included, as a SIGSTOPped server (after POST /_unhang it answers new
                     connections' requests again); its /_stats counts the requests it took per
                     conversation ("Conversation N" in the body: which replica each one's turns reached)

Every port also answers GET /v1/models (the gateway's health check for an
external model), GET /health, GET /_stats (counters as JSON) and POST /_reset.

Stream events are sent on an absolute schedule (start + ttft + i * itl), so
a late timer does not push the rest of the stream back; how late the mock
itself was is counted (`lag_*` in /_stats) so a report can tell when the mock,
not the gateway, was the bottleneck.  Each content event carries the
CLOCK_MONOTONIC time it was written (`"t":`), so the client can measure the
delay of every event from the mock to itself, direct or through the gateway.

Run: python -m bench.mock_upstream --port 18510 [--ttft 0.1 --itl 0.02 --chunks 128 --delay 1.5]
     [--replicas 0.01x4,0.03x4,closing]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import os
import re
import signal
import time

import orjson

from tests.fakebackend import chunk, completion, error_body, model_list, usage

MODEL = "mock"
_now = time.monotonic

# The payloads are the fake backend's (tests/fakebackend.py), serialized once here: this
# server's work per request is writing bytes, so the benchmark measures the gateway.
_CHAT = orjson.dumps(completion(MODEL, "Hello! How can I help you today?", "stop", usage(12, 9),
                                cid="chatcmpl-bench", created=1700000000))
_MODELS = orjson.dumps(model_list(MODEL, 4096))
# vLLM-shaped chunk; the send time goes in "t" (the gateway treats events as opaque bytes).
_EVENT_HEAD = b"data: " + orjson.dumps(chunk(MODEL, {"content": " tok"}, cid="chatcmpl-bench",
                                             created=1700000000))[:-1] + b',"t":'
_DONE = b"data: [DONE]\n\n"
_CONVERSATION = re.compile(rb"Conversation (\d+)")


@functools.cache
def _usage_event(completion_tokens: int) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                                     "created": 1700000000, "model": MODEL, "choices": [],
                                     "usage": usage(12, completion_tokens)}) + b"\n\n"


def _response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found"}.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, reason, ctype, len(body)) + body)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_RESP_CHAT = _response(200, _CHAT)
_RESP_MODELS = _response(200, _MODELS)
_RESP_HEALTH = _response(200, b"")
_RESP_404 = _response(404, orjson.dumps(error_body("no such path", 404)))
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
_SSE_END = _chunk(_DONE) + b"0\r\n\r\n"


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_aborted = 0
        self.events_sent = 0        # content events
        self.usage_events_sent = 0
        self.held_completed = 0
        self.held_aborted = 0
        self.lag_n = 0              # timer callbacks, and how late they ran
        self.lag_sum = 0.0
        self.lag_max = 0.0
        self.lag_over_1ms = 0
        self.lag_over_5ms = 0
        self.open_connections = getattr(self, "open_connections", 0)
        self.since = _now()

    def lag(self, late: float) -> None:
        self.lag_n += 1
        self.lag_sum += late
        if late > self.lag_max:
            self.lag_max = late
        if late > 0.001:
            self.lag_over_1ms += 1
            if late > 0.005:
                self.lag_over_5ms += 1

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items()}
        d["lag_mean"] = self.lag_sum / self.lag_n if self.lag_n else 0.0
        d["pid"] = os.getpid()
        return d


STATS = Stats()


class Settings:
    ttft = 0.1
    itl = 0.02
    chunks = 128
    delay = 1.5


class Station:
    """A replica's server: `slots` requests served at once, `service` seconds each, the rest wait."""

    def __init__(self, spec: str):
        self.closing = spec == "closing"
        service, _, slots = ("0x1" if self.closing else spec).partition("x")
        self.service, self.slots = float(service), int(slots or 1)
        self.busy = 0
        self.queue: collections.deque[Upstream] = collections.deque()
        self.served = 0
        self.closed = 0
        self.hung = False
        self.conversations: collections.Counter[str] = collections.Counter()

    def submit(self, conn: Upstream) -> None:
        if self.busy < self.slots:
            self.busy += 1
            conn.timer = asyncio.get_running_loop().call_later(self.service, self.done, conn)
        else:
            self.queue.append(conn)

    def done(self, conn: Upstream) -> None:
        conn.timer = None
        self.busy -= 1
        self.served += 1
        if conn.transport is not None:
            conn.busy = False
            conn.transport.write(_RESP_CHAT)
            if conn.buf:
                conn.data_received(b"")
        while self.queue:
            nxt = self.queue.popleft()
            if nxt.transport is not None:  # a client that hung up while waiting is skipped
                self.submit(nxt)
                break


class Upstream(asyncio.Protocol):
    """One client connection; HTTP/1.1 keep-alive, one request at a time."""

    __slots__ = ("profile", "station", "transport", "buf", "timer", "busy", "stream_i", "stream_t0", "usage")

    def __init__(self, profile: str, station: Station | None = None):
        self.profile = profile
        self.station = station
        self.transport = None
        self.buf = b""
        self.timer = None
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        STATS.open_connections += 1

    def connection_lost(self, exc) -> None:
        STATS.open_connections -= 1
        # A replica's server finishes what it started (its slot frees then); the others stop.
        if self.timer is not None and self.station is None:
            self.timer.cancel()
            self.timer = None
            if self.profile == "B":
                STATS.streams_aborted += 1
            else:
                STATS.held_aborted += 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while not self.busy:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            n = 0
            cl = head.find(b"ontent-Length:")
            if cl < 0:
                cl = head.find(b"ontent-length:")
            if cl >= 0:
                eol = head.find(b"\r\n", cl)
                n = int(head[cl + 14:eol if eol >= 0 else None])
            if len(buf) < end + 4 + n:
                break
            body = buf[end + 4:end + 4 + n]
            buf = buf[end + 4 + n:]
            self.handle(head, body)
        self.buf = buf

    def handle(self, head: bytes, body: bytes) -> None:
        line = head[:head.find(b"\r\n")]
        method, path, _ = line.split(b" ", 2)
        t = self.transport
        station = self.station
        if station is not None and path in (b"/_hang", b"/_unhang"):
            station.hung = path == b"/_hang"
            t.write(_response(200, b"{}"))
            return
        if station is not None and station.hung:  # stopped: reads nothing more, answers nothing
            self.busy = True
            return
        if station is not None and method == b"POST":
            found = _CONVERSATION.search(body)
            if found:
                station.conversations[found.group(1).decode()] += 1
        if method == b"POST" and path.endswith(b"/completions"):
            STATS.requests += 1
            if self.station is not None:
                if self.station.closing:
                    self.station.closed += 1
                    t.close()
                    return
                self.busy = True
                self.station.submit(self)
            elif self.profile == "A":
                t.write(_RESP_CHAT)
            elif self.profile == "C":
                self.busy = True
                self.timer = asyncio.get_running_loop().call_later(Settings.delay, self._held, _now() + Settings.delay)
            else:
                stream = b'"stream":true' in body or b'"stream": true' in body
                if not stream:
                    t.write(_RESP_CHAT)
                    return
                self.busy = True
                self.usage = b'"include_usage":true' in body or b'"include_usage": true' in body
                STATS.streams_started += 1
                t.write(_SSE_HEAD)
                self.stream_i = 0
                self.stream_t0 = t0 = _now()
                due = t0 + Settings.ttft
                self.timer = asyncio.get_running_loop().call_later(Settings.ttft, self._event, due)
        elif path == b"/v1/models":
            t.write(_RESP_MODELS)
        elif path == b"/health":
            t.write(_RESP_HEALTH)
        elif path == b"/_stats":
            stats = STATS.as_dict()
            if self.station is not None:
                stats.update(served=self.station.served, closed=self.station.closed,
                             conversations=dict(self.station.conversations))
            t.write(_response(200, orjson.dumps(stats)))
        elif path == b"/_reset":
            STATS.reset()
            t.write(_response(200, b"{}"))
        else:
            t.write(_RESP_404)

    def _held(self, due: float) -> None:
        self.timer = None
        STATS.lag(_now() - due)
        STATS.held_completed += 1
        self.busy = False
        self.transport.write(_RESP_CHAT)
        if self.buf:  # a pipelined request waited
            self.data_received(b"")

    def _event(self, due: float) -> None:
        now = _now()
        STATS.lag(now - due)
        self.transport.write(_chunk(_EVENT_HEAD + b"%.6f}\n\n" % now))
        STATS.events_sent += 1
        self.stream_i += 1
        if self.stream_i < Settings.chunks:
            due = self.stream_t0 + Settings.ttft + self.stream_i * Settings.itl
            self.timer = asyncio.get_running_loop().call_later(max(0.0, due - _now()), self._event, due)
            return
        self.timer = None
        if self.usage:
            n = Settings.chunks
            self.transport.write(_chunk(_usage_event(n)))
            STATS.usage_events_sent += 1
        self.transport.write(_SSE_END)
        STATS.streams_completed += 1
        self.busy = False
        if self.buf:
            self.data_received(b"")


async def serve(host: str, port: int, ready_fd: int | None = None, replicas: tuple[str, ...] = ()) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for i, profile in enumerate("ABC"):
        servers.append(await loop.create_server(lambda p=profile: Upstream(p), host, port + i,
                                                backlog=4096, reuse_address=True))
    for i, spec in enumerate(replicas):
        station = Station(spec)
        servers.append(await loop.create_server(lambda st=station: Upstream("R", st), host, port + 3 + i,
                                                backlog=4096, reuse_address=True))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18510, help="profile A; B is port+1, C port+2")
    p.add_argument("--ttft", type=float, default=0.1, help="profile B: seconds to the first event")
    p.add_argument("--itl", type=float, default=0.02, help="profile B: seconds between events")
    p.add_argument("--chunks", type=int, default=128, help="profile B: content events per stream")
    p.add_argument("--delay", type=float, default=1.5, help="profile C: seconds before the answer")
    p.add_argument("--replicas", default="", help="ports port+3…: SECONDSxSLOTS or closing, comma separated")
    p.add_argument("--ready-fd", type=int, help="write 'ready' to this fd once listening")
    args = p.parse_args(argv)
    Settings.ttft, Settings.itl, Settings.chunks, Settings.delay = args.ttft, args.itl, args.chunks, args.delay
    gc.freeze()  # nothing here makes cycles; keep the collector off the timing path
    import uvloop
    uvloop.run(serve(args.host, args.port, args.ready_fd, tuple(x for x in args.replicas.split(",") if x)))


if __name__ == "__main__":
    main()
