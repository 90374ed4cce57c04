"""Issue 19: replicas that add capacity and never hold a request. A model's slots are the sum of
its ready replicas'; deadlines tell a hung replica from a long answer and send the request on;
upstream errors leave in the client's API shape; a conversation stays on its replica until that
replica is full. Each replica a fake vLLM (tests/replicated.py), deadlines short."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from gateway.plan.document import full_plan
from gateway.plan.validate import parse_config
from tests.fakebackend import FakeBackend, ScriptedError
from tests.harness import wait_until
from tests.replicated import release


async def test_each_ready_replica_adds_its_slots(replicated):
    r = await replicated(3, model={"max_num_seqs": 4})
    gate = asyncio.Event()
    for f in r.fakes:
        f.gate = gate
    streams = [asyncio.ensure_future(r.http.post(r.url + "/v1/completions", json={
        "model": "m", "prompt": f"request {i}", "stream": True})) for i in range(12)]
    # All twelve are at the replicas at once, four each: one round, not three.
    await wait_until(lambda: [f.active for f in r.fakes] == [4, 4, 4], timeout=5,
                     detail=lambda: f" active: {[f.active for f in r.fakes]}")
    async with r.http.get(r.url + "/v1/models") as resp:
        card = (await resp.json())["data"][0]
    assert card["max_concurrency"] == 12 and [x["max_concurrency"] for x in card["replicas"]] == [4, 4, 4]
    assert "localai_model_capacity{model=\"m\"} 12.0" in r.metrics_text()
    release(r, gate)
    for s in streams:
        resp = await s
        assert resp.status == 200
        await resp.read()
    plan = full_plan(parse_config(yaml.safe_dump(r.config), "replicas.yaml"))["models"][0]
    assert (plan["max_concurrency"], plan["replica_concurrency"]) == (12, 4)  # what `localai check` says

    # A replica that fails takes its slots away; back, it adds them again.
    async def capacity(expected: int) -> bool:
        return await r.capacity() == expected

    r.fakes[2].health_status = 503
    await wait_until(lambda: capacity(8))
    assert r.metric("localai_replica_capacity", r.ports[2]) == 0
    r.fakes[2].health_status = 200
    await wait_until(lambda: capacity(12))


def _openai_message(body: dict) -> str:
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]["message"]


def _anthropic_message(body: dict) -> str:
    assert body["type"] == "error" and body["error"]["type"] == "api_error", body
    return body["error"]["message"]


def _ollama_message(body: dict) -> str:
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


# Each API family: (path, body, headers, the error's message, its shape asserted).
FAMILIES = {
    "openai": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, {}, _openai_message),
    "anthropic": ("/v1/messages", {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
                  {"anthropic-version": "2023-06-01"}, _anthropic_message),
    "ollama": ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, {}, _ollama_message),
    "responses": ("/v1/responses", {"input": "hi"}, {}, _openai_message),
}
HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("family", FAMILIES)
async def test_an_upstream_error_that_is_not_json_leaves_in_the_clients_shape(stack, family, stream):
    fake = FakeBackend("m")
    s = await stack({"m": fake})
    path, body, headers, message_of = FAMILIES[family]
    fake.errors.extend([ScriptedError(500, "unhandled", text="Internal Server Error"),
                        ScriptedError(502, "proxy", text=HTML, content_type="text/html")])
    for status in (500, 502):
        async with s.http.post(s.url + path, json={"model": "m", **body, "stream": stream}, headers=headers) as r:
            assert r.status == status and r.content_type == "application/json"
            answer = await r.json()
        message = message_of(answer)
        assert message.startswith(f"Model 'm' answered HTTP {status}"), message
        assert "<" not in json.dumps(answer)  # nothing of the page


async def test_the_last_replicas_text_error_leaves_shaped(replicated):
    r = await replicated(2)
    errors = r.fakes[0].errors
    r.fakes[1].errors = errors  # shared: whichever replica is tried answers the next one
    errors.extend(ScriptedError(500, "unhandled", text="Internal Server Error") for _ in range(2))
    async with r.http.post(r.url + "/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"] == {"message": "Model 'm' answered HTTP 500 Internal Server Error.",
                                                "type": "server_error", "param": None, "code": "backend_error"}


DEADLINES = {"response_headers_timeout": 0.3, "first_token_timeout": 0.6, "read_timeout": 0.6}


async def _chat(r, conversation: int, stream: bool) -> tuple[int, str]:
    """(status, the answer's text) of a one-turn chat."""
    async with r.http.post(r.url + "/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": f"conversation {conversation}"}],
            "stream": stream}) as resp:
        if not stream or resp.status != 200:
            body = await resp.json()
            return resp.status, body["choices"][0]["message"]["content"] if resp.status == 200 else body
        text = ""
        async for line in resp.content:
            if line.startswith(b"data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        return resp.status, text


ANSWER = "".join(f"tok{i} " for i in range(5))  # the fake's


# A non-streamed answer's headers come with the whole answer: it has no "headers, then nothing".
@pytest.mark.parametrize(("hang", "stream"), [("ttft", False), ("ttft", True), ("stall", True)],
                         ids=["whole-no-headers", "streamed-no-headers", "streamed-headers-then-nothing"])
async def test_a_hung_replica_misses_its_deadline_and_the_request_goes_to_another(replicated, hang, stream):
    r = await replicated(2, health_interval=60, **DEADLINES)  # the deadlines find it, not the health checks
    setattr(r.fakes[0], hang, 30.0)
    for c in range(6):
        async with asyncio.timeout(3):
            assert await _chat(r, c, stream) == (200, ANSWER)
    assert r.fakes[0].received  # some were sent there first
    assert len(r.fakes[1].received) == 6
    assert r.metric("localai_replica_failures_total", r.ports[0]) >= 1  # counted toward its breaker


@pytest.mark.parametrize("family", FAMILIES)
async def test_one_replica_that_hangs_gets_a_504_in_the_clients_shape(stack, family):
    fake = FakeBackend("m", stall=30.0)
    s = await stack({"m": fake}, **DEADLINES)
    path, body, headers, message_of = FAMILIES[family]
    async with s.http.post(s.url + path, json={"model": "m", **body, "stream": True}, headers=headers) as r:
        assert r.status == 504 and r.content_type == "application/json"
        message = message_of(await r.json())
    assert "gateway.first_token_timeout" in message, message


async def test_a_stream_whose_replica_dies_before_its_first_chunk_is_answered_by_another(replicated):
    r = await replicated(2)
    r.fakes[0].break_after = 0  # headers, then the connection drops: vLLM's engine died before a token
    for c in range(8):
        assert await _chat(r, c, True) == (200, ANSWER)
    assert r.fakes[0].received and len(r.fakes[1].received) == 8


async def test_requests_waiting_on_a_replica_marked_failed_go_to_the_others_at_once(replicated):
    r = await replicated(2)  # the default deadlines: minutes away
    r.fakes[0].ttft = 60.0  # hung: takes requests, answers nothing
    asks = [asyncio.ensure_future(_chat(r, c, stream)) for c in range(8) for stream in (False, True)]
    await wait_until(lambda: r.fakes[0].active >= 2)
    r.fakes[0].health_status = 503  # its health checks find it down
    async with asyncio.timeout(5):
        assert await asyncio.gather(*asks) == [(200, ANSWER)] * 16
    assert r.fakes[0].cancelled >= 2  # what waited there was taken back


async def test_a_silent_replica_does_not_slow_its_siblings_health_checks(replicated):
    r = await replicated(2, health_interval=0.05)
    r.fakes[0].health_delay = 30.0  # its checks hang until their own timeout
    await wait_until(lambda: r.fakes[0].probes and r.fakes[0].active == 0)
    before = r.fakes[1].probes
    # Each check of the silent replica takes 5 s; its sibling's go on every 50 ms meanwhile.
    await wait_until(lambda: r.fakes[1].probes >= before + 10, timeout=3)
    r.fakes[1].health_status = 503
    await wait_until(lambda: _state(r, 1, "failed"), timeout=3)


async def _state(r, i: int, expected: str) -> bool:
    return (await r.replicas())[i]["state"] == expected


async def test_conversations_stay_on_their_replica_under_light_load(replicated):
    """20 conversations at once, several turns each, over 3 replicas: every turn on its
    conversation's first replica (none is anywhere near full)."""
    r = await replicated(3)
    for f in r.fakes:
        f.ttft = 0.02  # requests overlap

    async def converse(c: int) -> None:
        for turn in range(1, 5):
            status, _ = await r.chat(c, turn)
            assert status == 200

    await asyncio.gather(*(converse(c) for c in range(20)))
    assert [len(r.served_by(c)) for c in range(20)] == [1] * 20
