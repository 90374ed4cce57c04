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


# Each API family: (path, body, headers, the error's message in that family's shape).
FAMILIES = {
    "openai": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, {},
               lambda body: body["error"]["code"] == "backend_error" and body["error"]["message"]),
    "anthropic": ("/v1/messages", {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
                  {"anthropic-version": "2023-06-01"},
                  lambda body: body["type"] == "error" and body["error"]["type"] == "api_error"
                  and body["error"]["message"]),
    "ollama": ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, {},
               lambda body: set(body) == {"error"} and body["error"]),
    "responses": ("/v1/responses", {"input": "hi"}, {},
                  lambda body: body["error"]["code"] == "backend_error" and body["error"]["message"]),
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
