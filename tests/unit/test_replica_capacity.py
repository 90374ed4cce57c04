"""Issue 19: replicas that add capacity and never hold a request. A model's slots are the sum of
its ready replicas'; deadlines tell a hung replica from a long answer and send the request on;
upstream errors leave in the client's API shape; a conversation stays on its replica until that
replica is full. Each replica a fake vLLM (tests/replicated.py), deadlines short."""

from __future__ import annotations

import asyncio

import yaml

from gateway.plan.document import full_plan
from gateway.plan.validate import parse_config
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
