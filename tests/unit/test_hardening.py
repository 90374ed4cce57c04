"""What a hostile LAN throws at the gateway (issue 10): HTTP its parser refuses, probes of
unknown paths, Ollama's model-management calls, and /health asked without a key."""

from __future__ import annotations

import json
import re

import pytest

from tests.fakebackend import FakeBackend
from tests.harness import free_port, wait_until
from tests.rawhttp import exchange

KEY = "sk-localai-hardening-5f0e1d2c"
AUTH = f"Host: gateway\r\nAuthorization: Bearer {KEY}\r\n".encode()
JSON_BODY = b"Content-Type: application/json\r\n"


def assert_openai_error(body: dict) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def new_lines(s, before: int) -> list[dict]:
    return s.log_lines()[before:]


# --- HTTP the parser refuses (points 1 and 2) ----------------------------------------------

# (what, request head, body sent after the server asked for it, status, words of the answer)
MALFORMED = [
    ("a key line ending in a stray CR (a key file with Windows line endings)",
     b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\r\n\r\n",
     b"", 400, "Missing expected LF after header value"),
    ("a 64 KB header", b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n",
     b"", 431, "header is longer"),
    ("200 headers", b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"".join(b"X-%d: y\r\n" % i for i in range(200))
     + b"\r\n", b"", 431, "too many headers"),
    ("a NUL in X-Request-ID", b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"X-Request-ID: a\x00b\r\n\r\n",
     b"", 400, "Invalid header value char"),
    ("a CR in X-Request-ID", b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"X-Request-ID: a\rb\r\n\r\n",
     b"", 400, "Malformed HTTP request"),
    ("an LF in X-Request-ID", b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"X-Request-ID: a\nb\r\n\r\n",
     b"", 400, "Malformed HTTP request"),
    ("a 100 KB path", b"GET /v1/" + b"a" * 100_000 + b" HTTP/1.1\r\n" + AUTH + b"\r\n", b"", 414,
     "request line is longer"),
    ("Content-Length and Transfer-Encoding", b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH + JSON_BODY
     + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"", 400, "Transfer-Encoding"),
    ("two Content-Lengths", b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH + JSON_BODY
     + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", b"", 400, "Duplicate Content-Length"),
    ("a bad chunk size", b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH + JSON_BODY
     + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", b"", 400, "chunk size"),
    ("a bad chunk size after the handler began reading", b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH
     + JSON_BODY + b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"2\r\n{}\r\nzz\r\n0\r\n\r\n", 400, "could not be read"),
    ("a gzip body that is not gzip", b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH + JSON_BODY
     + b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd", b"", 400, "could not be read"),
    ("a bad HTTP version", b"GET /health HTTP/9.9\r\n\r\n", b"", 400, "Invalid HTTP version"),
    ("no Host header", b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n", b"",
     400, "Missing 'Host' header"),
    ("two Host headers", b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"Host: other\r\n\r\n", b"", 400,
     "Duplicate 'Host' header"),
]


@pytest.mark.parametrize("head, rest, status, words", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_refused_http_is_json_and_one_quiet_line_without_the_key(stack, head, rest, status, words):
    fake = FakeBackend()
    s = await stack({"m": fake}, api_keys=[KEY])
    before = len(s.log_lines())
    r = await exchange(s.port, head, rest)
    assert r is not None and r.status == status and r.headers["content-type"] == "application/json"
    err = assert_openai_error(r.json())
    assert words in err["message"]
    assert KEY.encode() not in r.body and b"Traceback" not in r.body
    lines = new_lines(s, before)
    assert len(lines) == 1, lines
    assert lines[0]["level"] in ("DEBUG", "INFO", "WARNING") and "exc_info" not in lines[0]
    assert KEY not in s.log_text()
    assert fake.received == []
    async with s.http.get(s.url + "/health") as ok:  # and the gateway serves on
        assert ok.status == 200


# --- metrics series (point 2) ----------------------------------------------------------------


async def test_unknown_paths_make_no_new_metric_series(stack):
    s = await stack({"m": FakeBackend()}, api_keys=[KEY])
    for i in range(40):
        async with s.http.get(f"{s.url}/v1/probe-{i}") as r:
            assert r.status == 401
        async with s.http.post(f"{s.url}/api/probe-{i}", json={}) as r:
            assert r.status == 401
        async with s.http.get(f"{s.url}/v1/models/ghost-{i}", headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status == 404
    async with s.http.post(s.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
    text = s.metrics_text()
    assert "probe" not in text and "ghost" not in text
    series = re.findall(r"^localai_requests_total\{(.*)\} ", text, re.M)
    assert len(series) == 3, series
    assert 'endpoint="unmatched",model="",status="401"} 80.0' in text
    assert 'endpoint="/v1/models/{model}",model="",status="404"} 40.0' in text
    assert 'endpoint="/v1/chat/completions",model="m",status="200"} 1.0' in text


# --- Ollama's model management (point 5) ---------------------------------------------------------


@pytest.mark.parametrize("method, path, body, status, words", [
    ("POST", "/api/pull", {"model": "llama3"}, 404, "'llama3' does not exist"),
    ("POST", "/api/pull", {}, 400, "'model' is required"),
    ("POST", "/api/create", {"model": "mine", "from": "m"}, 400, "cannot be created"),
    ("POST", "/api/push", {"model": "m"}, 400, "cannot be pushed"),
    ("POST", "/api/push", {"model": "nope"}, 404, "'nope' does not exist"),
    ("POST", "/api/copy", {"source": "m", "destination": "m2"}, 400, "cannot be copied"),
    ("POST", "/api/copy", {"source": "nope", "destination": "m2"}, 404, "'nope' does not exist"),
    ("POST", "/api/copy", {}, 400, "'source' is required"),
    ("DELETE", "/api/delete", {"model": "m"}, 400, "cannot be deleted"),
    ("DELETE", "/api/delete", {"model": "nope:latest"}, 404, "does not exist"),
    ("DELETE", "/api/delete", {"name": "m"}, 400, "cannot be deleted"),
    ("POST", "/api/delete", {"model": "m"}, 405, "not allowed"),
    ("GET", "/api/pull", None, 405, "not allowed"),
    ("PUT", "/api/create", None, 405, "not allowed"),
])
async def test_model_management_is_a_client_error_with_the_reason(stack, method, path, body, status, words):
    s = await stack({"m": FakeBackend()})
    async with s.http.request(method, s.url + path, json=body) as r:
        assert r.status == status
        answer = await r.json()
        if status == 405:
            assert r.headers["Allow"] == ("DELETE" if path == "/api/delete" else "POST")
    assert isinstance(answer["error"], str) and words in answer["error"], answer


# --- /health without the key (point 9) -----------------------------------------------------------


async def reason(s, model: str, key: str | None = None) -> str | None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with s.http.get(s.url + "/health", headers=headers) as r:
        return (await r.json())["models"][model].get("reason")


async def test_health_shows_why_a_model_is_down_only_with_the_key(stack):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the model stays loading, the reason names the URL
    s = await stack({"m": FakeBackend(), "gone": {"url": dead}}, api_keys=[KEY])
    await wait_until(lambda: reason(s, "gone", KEY))
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        async with s.http.get(s.url + "/health", headers=headers) as r:
            assert r.status == 200
            text = await r.text()
        assert json.loads(text) == {"status": "ok", "models": {"m": {"state": "ready"}, "gone": {"state": "loading"}}}
        assert "127.0.0.1" not in text
    async with s.http.get(s.url + "/health", headers={"Authorization": f"Bearer {KEY}"}) as r:
        models = (await r.json())["models"]
    assert models["m"] == {"state": "ready", "reason": None}
    assert models["gone"]["state"] == "loading" and dead in models["gone"]["reason"]
    async with s.http.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as r:
        cards = {c["id"]: c for c in (await r.json())["data"]}
    assert dead in cards["gone"]["state_reason"]


async def test_open_gateway_health_shows_everything(stack):
    """Without keys /v1/models tells anyone why a model is down; /health hides nothing more."""
    dead = f"http://127.0.0.1:{free_port()}"
    s = await stack({"m": FakeBackend(), "gone": {"url": dead}})
    await wait_until(lambda: reason(s, "gone"))
    assert dead in await reason(s, "gone")
