"""Hundreds of malformed requests against the real app, over bare sockets (issue 10).

Methods on every path, broken bodies on every endpoint, every field the gateway reads with
values of the wrong kind, odd headers and broken framing. Whatever comes, the gateway
answers without a 5xx, in JSON of the API's shape, without a traceback or a file path,
writes at most one log line per request and never the key, and serves on afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator

from gateway.http import validation
from tests.fakebackend import EmbedFake, FakeBackend
from tests.rawhttp import RawResponse, exchange
from tests.routes import router_routes
from tests.unit.test_hardening import KEY, MALFORMED

HI = [{"role": "user", "content": "hi"}]

PATHS = ["/v1/chat/completions", "/v1/chat/completions/", "/v1/completions", "/v1/embeddings", "/v1/models",
         "/v1/models/m", "/v1/models/Qwen/x:latest", "/health", "/ready", "/metrics", "/api/chat",
         "/api/generate", "/api/embed", "/api/embeddings", "/api/tags", "/api/ps", "/api/show", "/api/version",
         "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/", "/v1", "/api", "/v1/probe",
         "/api/probe", "//v1/models", "/v1/models/../../etc/passwd", "/v1/models/%2e%2e%2fx", "/v1/%ZZ",
         "/v1/models?x=%00", "/api/tags?" + "a=1&" * 500, "/v1/models/" + "x" * 4000, "/v1/mod\u00e9ls",
         "/v1/messages", "/v1/messages?beta=true", "/v1/messages/count_tokens", "/v1/messages/x"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
POST_ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate",
                  "/api/embed", "/api/embeddings", "/api/show", "/api/pull", "/api/copy", "/api/delete",
                  "/v1/messages", "/v1/messages/count_tokens"]
BODIES = [b"", b"{", b"[]", b"null", b"1", b'"x"', b"{}", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"[" * 5000,
          b'{"a":' * 3000, b'{"model": "m", "model": 1}', b'{"messages": NaN}', b'{"x": "\xff"}',
          b"x" * 70_000]
# Per endpoint: a body that works, and the fields the gateway reads (wrong values go in each).
FAMILIES = [
    ("/v1/chat/completions", {"model": "m", "messages": HI, "max_tokens": 2}, validation.CHAT),
    ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2}, validation.COMPLETIONS),
    ("/v1/embeddings", {"model": "emb", "input": "hi"}, validation.EMBEDDINGS),
    ("/api/chat", {"model": "m", "messages": HI, "stream": False}, validation.OLLAMA_CHAT),
    ("/api/generate", {"model": "m", "prompt": "hi", "stream": False}, validation.OLLAMA_GENERATE),
    ("/api/embed", {"model": "emb", "input": "hi"}, validation.OLLAMA_EMBED),
    ("/api/embeddings", {"model": "emb", "prompt": "hi"}, validation.OLLAMA_EMBEDDINGS),
    ("/v1/messages", {"model": "m", "messages": HI, "max_tokens": 2}, validation.ANTHROPIC_MESSAGES),
    ("/v1/messages/count_tokens", {"model": "m", "messages": HI}, validation.ANTHROPIC_COUNT_TOKENS),
]
ALSO_READ = ["model", "name", "format", "images", "template", "suffix", "context", "tool_choice", "truncate"]
MESSAGE_FIELDS = ["role", "content", "tool_calls", "name", "images", "tool_call_id", "tool_name"]
OPTIONS = ["temperature", "top_p", "top_k", "min_p", "seed", "stop", "num_predict", "num_ctx", "presence_penalty",
           "frequency_penalty", "repeat_penalty", "mirostat"]
WRONG = ["hot", -1, True, [None], {}]  # a value of each wrong kind; ranges are test_validation.py's
HEADERS = [
    {"Authorization": "Bearer"}, {"Authorization": f"Bearer   {KEY}   "}, {"Authorization": f"bearer {KEY}"},
    {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}, {"Authorization": "Bearer " + "k" * 10_000},
    {"Authorization": "Bearer k\u00ebj"}, {"x-api-key": "wrong"}, {"X-Request-ID": "r" * 200},
    {"X-Request-ID": "\u00e9t\u00e9"}, {"X-Request-ID": ""}, {"X-Request-ID": "a b\tc"},
    {"Content-Type": "application/json; charset=latin-1"}, {"Content-Type": ""}, {"Content-Type": "*/*"},
    {"Content-Type": "text/plain"}, {"Content-Type": "multipart/form-data; boundary=x"}, {"Accept": "text/html"},
    {"Content-Encoding": "gzip"}, {"Content-Encoding": "deflate"}, {"Content-Encoding": "br"},
    {"Content-Encoding": "zstd"}, {"Content-Encoding": "nope"}, {"Expect": "bogus"}, {"Expect": "100-continue"},
    {"Connection": "close, Upgrade", "Upgrade": "websocket"}, {"Connection": "close, Upgrade", "Upgrade": "h2c"},
    {"Range": "bytes=0-1"}, {"X-Forwarded-For": "\u00ff" * 50}, {"Cookie": "a=" + "b" * 4000},
]
RAW = [m[1:3] for m in MALFORMED] + [(head, b"") for head in [
    b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /health HTTP/1.1\nHost: x\n\n", b"GET /\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    b"GET /v1/mo\rdels HTTP/1.1\r\nHost: x\r\n\r\n", b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nx\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n{",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /he\x00lth HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.0\r\n\r\n", b"\x00" * 64, b"GET /health HTTP/1.1\r\nHost: x\r\n:\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\xff: y\r\n\r\n", b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GETGETGETGETGETGETGETGETGETGETGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
]]
HALF_CLOSED = [  # the client stops sending before the body it announced is complete
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
]


def request(method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            key: bool = True) -> bytes:
    fields = {"Host": "gateway", "Connection": "close"}
    if key:
        fields["Authorization"] = f"Bearer {KEY}"
    if body is not None:
        fields.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    fields.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + (body or b"")


def cases(app) -> Iterator[tuple[str, bytes, bytes, bool]]:
    """(path, head, rest, half_close) for every request of the run: the paths above, and every
    route of the app's router (a route added tomorrow is fuzzed without editing this list)."""
    routes = router_routes(app)
    for path in dict.fromkeys([*PATHS, *(path for _, path, _ in routes)]):
        for method in METHODS:
            yield path, request(method, path, b"{}" if method not in ("GET", "HEAD") else None), b"", False
        for method in ("GET", "POST"):
            yield path, request(method, path, b"{}", key=False), b"", False
    for path in dict.fromkeys([*POST_ENDPOINTS, *(path for method, path, _ in routes if method == "POST")]):
        for body in BODIES:
            yield path, request("POST", path, body), b"", False
    for path, base, rules in FAMILIES:
        messages = "messages" in base
        for field in [*rules, *ALSO_READ]:
            for value in WRONG:
                yield path, request("POST", path, json.dumps({**base, field: value}).encode()), b"", False
        for field in MESSAGE_FIELDS if messages else []:
            for value in WRONG:
                body = {**base, "messages": [{**HI[0], field: value}]}
                yield path, request("POST", path, json.dumps(body).encode()), b"", False
        for option in OPTIONS if path.startswith("/api/") else []:
            for value in WRONG:
                body = {**base, "options": {option: value}}
                yield path, request("POST", path, json.dumps(body).encode()), b"", False
    for headers in HEADERS:
        for path in ("/v1/chat/completions", "/api/chat"):
            body = json.dumps({"messages": HI, "stream": False}).encode()
            yield path, request("POST", path, body, headers), b"{}", False
    for head, rest in RAW:
        yield "", head, rest, False
    for head in HALF_CLOSED:
        yield "", head, b"", True


def check_answer(path: str, head: bytes, r: RawResponse) -> None:
    assert r.status < 500, (head[:300], r)
    for leak in (KEY.encode(), b"Traceback", b'File "', b".py", b"/work/", b"site-packages"):
        assert leak not in r.body, (head[:300], leak, r)
    if r.status < 400 or head.startswith(b"HEAD "):  # an answer to HEAD has no body
        return
    assert r.headers.get("content-type") == "application/json", (head[:300], r)
    answer = json.loads(r.body)
    error = answer["error"]
    if isinstance(error, str):  # Ollama's shape, only on its own paths
        assert path.startswith("/api/") and error, (head[:300], r)
    elif path.startswith("/v1/messages"):  # Anthropic's
        assert answer["type"] == "error" and set(error) == {"type", "message"} and error["message"], (head[:300], r)
    else:
        assert set(error) == {"message", "type", "param", "code"} and error["message"], (head[:300], r)


async def test_fuzz_never_5xx_always_shaped_quiet_and_alive(stack):
    s = await stack({"m": FakeBackend(chunks=2), "emb": (EmbedFake("e"), {"task": "embed"})}, api_keys=[KEY],
                    max_body_bytes=64_000)
    sent = 0
    for path, head, rest, half_close in cases(s.app):
        before = len(s.log_text())
        r = await exchange(s.port, head, rest, half_close=half_close)
        if r is None:  # the client stopped sending mid-body: nobody is left to answer
            assert half_close, head[:300]
        else:
            check_answer(path, head, r)
        new = s.log_text()[before:].splitlines()
        assert len(new) <= 1, (head[:300], new)
        sent += 1
    assert sent >= 300
    log = s.log_text()
    assert KEY not in log and "Traceback" not in log
    assert not [line for line in s.log_lines() if line["level"] in ("ERROR", "CRITICAL")]
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": HI},
                           headers={"Authorization": f"Bearer {KEY}"}) as ok:
        assert ok.status == 200 and (await ok.json())["choices"]
    async with s.http.get(s.url + "/health") as ok:
        assert ok.status == 200
