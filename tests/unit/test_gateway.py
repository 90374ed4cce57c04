"""Gateway behaviour against fake backends: routing, readiness, streaming, cancellation,
admission, auth, request ids, logs, metrics, bad input."""

import asyncio
import json

import aiohttp
import pytest

from tests.fakebackend import FakeBackend
from tests.harness import wait_until

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(body: dict, code: str) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["message"]


# --- routing ----------------------------------------------------------------


async def test_routes_by_name_alias_served_id_and_default(stack):
    coder, general = FakeBackend("Qwen/coder-7b"), FakeBackend("general-id")
    s = await stack({"coder": (coder, {"aliases": ["dev", "python"]}), "general": general})
    for model, fake in (("coder", coder), ("general", general), ("Qwen/coder-7b", coder),
                        ("general-id", general), ("dev", coder), (None, coder)):
        body = dict(CHAT, **({"model": model} if model else {}))
        async with s.http.post(s.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
        assert fake.received[-1]["model"] == fake.model_id  # rewritten to the backend's id


async def test_unknown_model_is_404_openai_shaped(stack):
    s = await stack({"coder": FakeBackend()})
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, model="gpt-9")) as r:
        assert r.status == 404
        body = await r.json()
    assert_openai_error(body, "model_not_found")
    assert body["error"]["param"] == "model" and body["error"]["type"] == "invalid_request_error"
    assert "gpt-9" in body["error"]["message"] and "coder" in body["error"]["message"]


# --- readiness ----------------------------------------------------------------


async def test_progressive_readiness(stack):
    ready, loading = FakeBackend("a"), FakeBackend("b", health_status=503)
    s = await stack({"a": ready, "b": loading}, wait=False)
    await s.ready("a")
    async with s.http.get(s.url + "/ready") as r:
        assert r.status == 200
    async with s.http.get(s.url + "/v1/models") as r:
        states = {m["id"]: m for m in (await r.json())["data"]}
    assert states["a"]["state"] == "ready" and states["a"]["max_model_len"] == 4096
    assert states["b"]["state"] == "loading"
    # The ready model serves while the other still loads.
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, model="a")) as r:
        assert r.status == 200
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, model="b")) as r:
        assert r.status == 503 and r.headers["Retry-After"]
        assert_openai_error(await r.json(), "model_loading")
    loading.health_status = 200
    await s.ready("b")
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, model="b")) as r:
        assert r.status == 200


async def test_ready_is_503_until_a_model_is_ready_and_health_always_200(stack):
    fake = FakeBackend(health_status=503)
    s = await stack({"m": fake}, wait=False)
    async with s.http.get(s.url + "/ready") as r:
        assert r.status == 503
    async with s.http.get(s.url + "/health") as r:
        assert r.status == 200
        assert (await r.json())["models"]["m"]["state"] == "loading"


async def test_failed_model_gets_503_naming_why(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    fake.health_status = 500
    await wait_until(lambda: _state(s, "m") == "failed")
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 503
        body = await r.json()
    assert_openai_error(body, "model_unavailable")
    assert "HTTP 500" in body["error"]["message"]


def _state(s, name):
    from gateway.http.appkeys import REGISTRY
    return s.app[REGISTRY].backends[name].state.value


# --- streaming ----------------------------------------------------------------


async def test_stream_passes_chunks_through_as_they_are_made(stack):
    fake = FakeBackend(chunks=3, gate=asyncio.Event())
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = []
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                events.append(event)
                # The backend sends the next chunk only after we saw this one:
                # a gateway that buffered would deadlock here.
                fake.gate.set()
    payloads = [e.removeprefix(b"data: ") for e in events]
    assert payloads[-1] == b"[DONE]"
    texts = [json.loads(p)["choices"][0]["delta"]["content"] for p in payloads[:-1]]
    assert texts == ["tok0 ", "tok1 ", "tok2 "]  # the injected usage event was removed again


async def test_backend_breaking_off_a_stream_ends_it_with_an_error(stack):
    fake = FakeBackend(chunks=10, break_after=2)
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True),
                           headers={"X-Request-ID": "broken-1"}) as r:
        assert r.status == 200 and r.headers["X-Request-ID"] == "broken-1"
        text = await asyncio.wait_for(r.text(), 5)  # the stream ends; the client is not left waiting
    events = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    assert [e["choices"][0]["delta"]["content"] for e in events[:2]] == ["tok0 ", "tok1 "]
    assert events[-1]["error"]["code"] == "backend_error"
    access = [line for line in s.log_lines() if line.get("request_id") == "broken-1"][-1]
    assert access["status"] == 502 and "broke off" in access["error"]


async def test_stream_usage_kept_when_client_asks(stack):
    s = await stack({"m": FakeBackend(chunks=2)})
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    async with s.http.post(s.url + "/v1/chat/completions", json=body) as r:
        text = await r.text()
    usage = [json.loads(e[6:]) for e in text.split("\n\n") if '"usage"' in e]
    assert usage and usage[0]["usage"]["completion_tokens"] == 2


async def hang_up_midway(url: str, fake: FakeBackend, body: dict) -> None:
    """Start a long generation and leave: after its first bytes (a stream) or while it waits."""
    session = aiohttp.ClientSession()
    request = asyncio.ensure_future(session.post(url, json=body))
    await fake.wait_for(lambda f: f.active == 1)
    if body.get("stream"):
        resp = await request
        await resp.content.readany()
        resp.close()
    else:
        request.cancel()
    await session.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_upstream(stack, stream):
    fake = FakeBackend(chunks=1000, itl=0.01)
    s = await stack({"m": fake})
    await hang_up_midway(s.url + "/v1/chat/completions", fake, dict(CHAT, stream=stream))
    # The backend's generation is cancelled at once, long before its 10 s of tokens.
    await fake.wait_for(lambda f: f.active == 0 and f.cancelled == 1, timeout=3)
    assert fake.completed == 0


# --- admission ---------------------------------------------------------------------


async def test_fifo_queue_then_429_then_leave_queue(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, max_queue=2)
    from gateway.http.appkeys import REGISTRY
    order = []

    async def call(tag):
        async with s.http.post(s.url + "/v1/chat/completions",
                               json=dict(CHAT, stream=True, messages=[{"role": "user", "content": tag}])) as r:
            await r.read()
            order.append(tag)
            return r.status

    first = asyncio.create_task(call("first"))
    await fake.wait_for(lambda f: f.active == 1)
    # Two connections race to the gateway, so the test lets each join the queue before the next.
    second = asyncio.create_task(call("second"))
    await wait_until(lambda: s.app[REGISTRY].room.waiting == 1)
    third = asyncio.create_task(call("third"))
    await wait_until(lambda: s.app[REGISTRY].room.waiting == 2)
    assert "localai_queue_depth{model=\"m\"} 2.0" in s.metrics_text()
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 429 and r.headers["Retry-After"]
        assert_openai_error(await r.json(), "queue_full")
    assert 'localai_rejections_total{model="m",reason="queue_full"} 1.0' in s.metrics_text()
    # Each gate opening lets one chunk through; the slots pass on in arrival order.
    while not third.done():
        fake.gate.set()
        await asyncio.sleep(0)
    assert [await t for t in (first, second, third)] == [200, 200, 200]
    assert order == ["first", "second", "third"]
    assert [b["messages"][0]["content"] for b in fake.received] == ["first", "second", "third"]


async def test_waiting_client_that_leaves_frees_its_place(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, max_queue=1)
    from gateway.http.appkeys import REGISTRY
    first = asyncio.create_task(s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)))
    await fake.wait_for(lambda f: f.active == 1)
    leaver = aiohttp.ClientSession()
    waiting = asyncio.create_task(leaver.post(s.url + "/v1/chat/completions", json=CHAT))
    await wait_until(lambda: s.app[REGISTRY].room.waiting == 1)
    waiting.cancel()
    await leaver.close()
    await wait_until(lambda: s.app[REGISTRY].room.waiting == 0)
    fake.gate.set()
    (await first).close()
    assert len(fake.received) == 1  # the leaver never reached the backend


async def test_queue_timeout_is_503(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, queue_timeout=0.2)
    first = asyncio.create_task(s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)))
    await fake.wait_for(lambda f: f.active == 1)
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 503
        assert_openai_error(await r.json(), "queue_timeout")
    fake.gate.set()
    (await first).close()


async def test_max_concurrency_defaults_to_max_num_seqs():
    from gateway.plan.placement import max_concurrency
    from tests.harness import make_config
    cfg = make_config([{"name": "m", "model": "x", "port": 9999, "max_num_seqs": 7},
                       {"name": "n", "model": "y", "port": 9998, "max_num_seqs": 7, "max_concurrency": 3,
                        "default": True}])
    assert max_concurrency(cfg.model("m")) == 7 and max_concurrency(cfg.model("n")) == 3


async def test_pool_does_not_cap_streams_at_100(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 200})}, max_connections_per_client=0)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    streams = [asyncio.create_task(session.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)))
               for _ in range(150)]
    await fake.wait_for(lambda f: f.active == 150, timeout=10)
    fake.gate.set()
    for t in streams:
        t.cancel()
    await session.close()


# --- auth ---------------------------------------------------------------------------


async def test_auth(stack):
    s = await stack({"m": FakeBackend()}, api_keys=["sk-right", "sk-other"])
    url = s.url + "/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-right"}):
        async with s.http.post(url, json=CHAT, headers=headers) as r:
            assert r.status == 401
            body = await r.json()
        assert_openai_error(body, "invalid_api_key")
        assert body["error"]["type"] == "authentication_error"
    for headers in ({"Authorization": "Bearer sk-right"}, {"Authorization": "Bearer sk-other"},
                    {"x-api-key": "sk-right"}):
        async with s.http.post(url, json=CHAT, headers=headers) as r:
            assert r.status == 200
    async with s.http.get(s.url + "/metrics") as r:
        assert r.status == 401
    async with s.http.get(s.url + "/metrics", headers={"Authorization": "Bearer sk-right"}) as r:
        assert r.status == 200
    for path in ("/health", "/ready"):
        async with s.http.get(s.url + path) as r:
            assert r.status == 200
    logs = "\n".join(json.dumps(line) for line in s.log_lines())
    assert "sk-right" not in logs and "sk-wrong" not in logs and "sk-other" not in logs
    assert '"status": 401' in logs


# --- request ids, logs, metrics ------------------------------------------------------


async def test_request_id_in_response_backend_and_logs(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "abc-123"}) as r:
        assert r.headers["X-Request-ID"] == "abc-123"
    assert fake.headers[-1]["X-Request-Id"] == "abc-123"
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:
        generated = r.headers["X-Request-ID"]
    assert len(generated) >= 16 and fake.headers[-1]["X-Request-Id"] == generated
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True),
                           headers={"X-Request-ID": "stream-7"}) as r:
        assert r.headers["X-Request-ID"] == "stream-7"  # streamed answers carry it too
    async with s.http.get(s.url + "/v1/nope") as r:
        assert len(r.headers["X-Request-ID"]) >= 16  # and errors
    lines = [line for line in s.log_lines() if line.get("request_id") == "abc-123"]
    assert lines
    access = lines[-1]
    for key in ("ts", "level", "request_id", "model", "backend", "status", "latency_ms",
                "prompt_tokens", "completion_tokens"):
        assert key in access, key
    assert access["model"] == "m" and access["status"] == 200 and access["prompt_tokens"] == 7


async def test_stream_log_has_ttft_and_tokens(stack):
    s = await stack({"m": FakeBackend(chunks=4)})
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        await r.read()
    access = [line for line in s.log_lines() if line.get("path") == "/v1/chat/completions"][-1]
    assert access["ttft_ms"] >= 0 and access["completion_tokens"] == 4


async def test_metrics(stack):
    s = await stack({"m": FakeBackend(chunks=3)})
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        await r.read()
    async with s.http.post(s.url + "/v1/chat/completions", json=dict(CHAT, model="nope")) as r:
        pass
    async with s.http.get(s.url + "/metrics") as r:
        text = await r.text()
    for needle in (
        'localai_requests_total{endpoint="/v1/chat/completions",model="m",status="200"} 1.0',
        'localai_request_duration_seconds_count{endpoint="/v1/chat/completions",model="m"} 1.0',
        'localai_time_to_first_token_seconds_count{model="m"} 1.0',
        'localai_inter_token_latency_seconds_count{model="m"}',
        'localai_queue_wait_seconds_count{model="m"} 1.0',
        'localai_in_flight_requests{model="m"} 0.0',
        'localai_prompt_tokens_total{model="m"} 7.0',
        'localai_completion_tokens_total{model="m"} 3.0',
        'localai_backend_up{model="m"} 1.0',
        'localai_backend_ready{model="m"} 1.0',
        'localai_requests_total{endpoint="/v1/chat/completions",model="",status="404"} 1.0',
    ):
        assert needle in text, needle
    assert "localai_gpu_" not in text  # no GPU here: absent, not zero


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    ({"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    ({"json": {"messages": "hi"}}, 400, "invalid_type"),
    ({"json": {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}}, 400, "invalid_type"),
    ({"json": {"messages": [{"role": "user", "content": "x"}], "model": 7}}, 400, "invalid_type"),
    ({"data": b"messages=hi", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
     "unsupported_media_type"),
    ({"data": b"x" * 2_000_000, "headers": {"Content-Type": "application/json"}}, 413, "request_too_large"),
])
async def test_bad_input_is_4xx_openai_shaped(stack, kwargs, status, code):
    fake = FakeBackend()
    s = await stack({"m": fake}, max_body_bytes=1_000_000)
    async with s.http.post(s.url + "/v1/chat/completions", **kwargs) as r:
        assert r.status == status
        body = await r.json()
    assert_openai_error(body, code)
    assert "Traceback" not in json.dumps(body)
    assert fake.received == []


async def test_wrong_method_and_path(stack):
    s = await stack({"m": FakeBackend()})
    async with s.http.get(s.url + "/v1/chat/completions") as r:
        assert r.status == 405 and "POST" in r.headers["Allow"]
        assert_openai_error(await r.json(), "method_not_allowed")
    async with s.http.post(s.url + "/v1/nothing", json={}) as r:
        assert r.status == 404
        assert_openai_error(await r.json(), "not_found")


async def test_backend_gone_is_502_not_500(stack):
    fake = FakeBackend()
    s = await stack({"m": fake}, health_interval=60)  # still marked ready when it vanishes
    await s.servers["m"].close()
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502
        assert_openai_error(await r.json(), "backend_unreachable")
