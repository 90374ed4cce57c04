"""A model with replicas, through the real gateway: each replica a fake vLLM on a port of its own
(two or three `hosts` on this machine, set apart by their port offsets)."""

from __future__ import annotations

import asyncio
import io
import re

import aiohttp
import pytest
import yaml

from gateway.base.observability import setup_logging
from gateway.plan.validate import parse_config
from gateway.routing import balancer
from tests.harness import wait_until
from tests.replicated import Replicated, all_ready, release


async def test_models_list_each_replica_with_its_host_state_and_load(replicated):
    r = await replicated(2)
    replicas = await r.replicas()
    assert replicas == [{"host": f"h{i}", "address": f"127.0.0.1:{r.ports[i]}", "state": "ready", "state_reason": None,
                         "in_flight": 0, "max_concurrency": 256, "draining": False} for i in (0, 1)]
    gate = r.fakes[0].gate = r.fakes[1].gate = asyncio.Event()
    async with r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [1, 2], "stream": True}) as s:
        assert s.status == 200
        assert sorted(x["in_flight"] for x in await r.replicas()) == [0, 1]
        release(r, gate)
        await s.read()


async def test_a_conversation_stays_on_its_replica_and_conversations_spread(replicated):
    r = await replicated(2)
    for conversation in range(12):
        for turn in (1, 2, 3):
            status, _ = await r.chat(conversation, turn)
            assert status == 200
        assert len(r.served_by(conversation)) == 1, conversation  # every turn on one replica
    assert all(f.received for f in r.fakes)  # 12 conversations did not all hash to one replica
    assert sum(r.metric("localai_replica_requests_total", p) for p in r.ports) == 36


async def test_least_outstanding_sends_work_past_the_busy_replica(replicated):
    r = await replicated(2)
    busy_gate = asyncio.Event()
    for f in r.fakes:
        f.gate = busy_gate
    # Token-id prompts name no conversation: least outstanding alone decides.
    stream = await r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [1], "stream": True})
    busy = next(i for i, f in enumerate(r.fakes) if f.active)
    for _ in range(6):
        async with r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [2]}) as resp:
            assert resp.status == 200
    assert len(r.fakes[1 - busy].received) == 6 and len(r.fakes[busy].received) == 1
    release(r, busy_gate)
    await stream.read()
    stream.release()


async def test_one_conversation_is_spread_once_its_replica_is_full(replicated):
    r = await replicated(2, model={"max_num_seqs": 5})
    gate = asyncio.Event()
    for f in r.fakes:
        f.gate = gate
    messages = [{"role": "user", "content": "conversation 1"}]
    streams = []
    for _ in range(8):
        streams.append(await r.http.post(r.url + "/v1/chat/completions",
                                         json={"model": "m", "messages": messages, "stream": True}))
    loads = sorted(f.active for f in r.fakes)
    # All eight share one conversation; its replica takes as many as its slots, the other the rest.
    assert loads == [3, 5]
    release(r, gate)
    for s in streams:
        await s.read()
        s.release()


async def test_a_replica_that_refuses_connections_loses_no_request(replicated):
    r = await replicated(2, health_interval=60)  # the requests find out first, not the regular checks
    gone = r.ports[1]
    await r.servers[1].close()
    statuses = [(await r.chat(c))[0] for c in range(30)]
    assert statuses == [200] * 30
    assert len(r.fakes[0].received) == 30
    # Out after a few tries: each failure asks for a health check at once (out after two misses),
    # and the breaker opens after BREAK_AFTER; whichever comes first.
    assert 1 <= r.metric("localai_replica_failures_total", gone) <= balancer.BREAK_AFTER
    assert (await r.replicas())[1]["state"] in ("failed", "unreachable")


async def test_a_replica_dying_before_it_answers_is_retried_on_another(replicated):
    r = await replicated(2)
    r.fakes[0].hang_up = True  # takes each request and drops its connection, no byte of an answer sent
    for c in range(10):
        status, body = await r.chat(c)
        assert status == 200 and body["choices"][0]["message"]["content"]
    assert r.fakes[0].received  # some went there first
    assert len(r.fakes[1].received) == 10


async def test_a_replica_answering_a_server_error_is_retried_on_another(replicated):
    """vLLM answers 500 once its engine has stopped (a server shutting down): another replica answers."""
    from tests.fakebackend import ScriptedError

    r = await replicated(2)
    r.fakes[0].errors.extend(ScriptedError(500, "EngineDeadError") for _ in range(100))
    for c in range(10):
        status, body = await r.chat(c)
        assert status == 200 and body["choices"][0]["message"]["content"]
    assert r.fakes[0].received and len(r.fakes[1].received) == 10


async def test_a_server_error_from_the_only_usable_replica_reaches_the_client(replicated):
    from tests.fakebackend import ScriptedError

    r = await replicated(2)
    for f in r.fakes:
        f.errors.extend(ScriptedError(500, "EngineDeadError") for _ in range(2))
    status, body = await r.chat(1)
    assert status == 500 and "scripted EngineDeadError" in body["error"]["message"]


async def test_breaker_takes_out_a_replica_that_fails_requests_and_lets_it_back(replicated, monkeypatch):
    monkeypatch.setattr(balancer, "COOL_DOWN", 2.0)  # long enough for the 30 requests, short for the test
    r = await replicated(2)
    flaky = r.ports[0]
    r.fakes[0].hang_up = True  # its health checks pass: only the breaker can tell
    statuses = [(await r.chat(c))[0] for c in range(30)]
    assert statuses == [200] * 30
    assert r.metric("localai_replica_failures_total", flaky) == balancer.BREAK_AFTER  # then it was taken out
    assert len(r.fakes[0].received) == balancer.BREAK_AFTER
    replicas = await r.replicas()
    assert [x["state"] for x in replicas] == ["unreachable", "ready"]
    assert replicas[0]["state_reason"] == f"{balancer.BREAK_AFTER} requests in a row could not reach it"
    # Mended: after the cool-down a passed health check (the half-open probe) lets it back.
    r.fakes[0].hang_up = False
    await wait_until(lambda: _states(r, ["ready", "ready"]))
    before = len(r.fakes[0].received)
    for c in range(100, 112):
        assert (await r.chat(c))[0] == 200
    assert len(r.fakes[0].received) > before
    assert r.metric("localai_replica_failures_total", flaky) == balancer.BREAK_AFTER


async def test_a_stream_on_a_replica_that_dies_midway_ends_with_an_error_event(replicated):
    r = await replicated(2)
    for f in r.fakes:
        f.break_after = 2
    async with r.http.post(r.url + "/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as s:
        assert s.status == 200
        text = (await s.read()).decode()
    assert text.count("data: ") >= 3
    assert '"error"' in text.rsplit("data: ", 1)[1]  # its last event says what happened
    assert sum(len(f.received) for f in r.fakes) == 1  # bytes were sent: no retry


async def test_model_serves_while_any_replica_is_healthy(replicated):
    r = await replicated(2)
    r.fakes[0].health_status = 503
    await wait_until(lambda: _states(r, ["failed", "ready"]))
    async with r.http.get(r.url + "/health") as resp:
        assert (await resp.json())["models"]["m"]["state"] == "ready"
    for c in range(8):
        assert (await r.chat(c))[0] == 200
    assert not r.fakes[0].received
    r.fakes[1].health_status = 503
    await wait_until(lambda: _states(r, ["failed", "failed"]))
    status, body = await r.chat(1)
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    r.fakes[0].health_status = 200
    await wait_until(lambda: _states(r, ["ready", "failed"]))
    assert (await r.chat(1))[0] == 200


async def _states(r: Replicated, expected: list[str]) -> bool:
    return [x["state"] for x in await r.replicas()] == expected


async def test_status_shows_every_replica_on_every_host(replicated, tmp_path):
    from gateway.cli.ops import collect_status, render_status

    r = await replicated(2)
    r.fakes[1].health_status = 503
    config = tmp_path / "localai.yaml"
    config.write_text(yaml.safe_dump(r.config))
    st = await asyncio.to_thread(collect_status, config)
    model = st["models"][0]
    assert [(x["host"], x["port"], x["readiness"]) for x in model["replicas"]] == \
        [("h0", r.ports[0], "ready"), ("h1", r.ports[1], "loading")]
    assert model["readiness"] == "degraded" and model["why"] == f"h1:{r.ports[1]} loading"
    text = render_status(st)
    assert re.search(rf"^m\s+degraded\s+{r.ports[0]}\b", text, re.M), text
    assert re.search(rf"^  #1 h1\s+loading\s+{r.ports[1]}  http://127.0.0.1:{r.ports[1]} \(localai-model@m.1.service\)",
                     text, re.M), text


async def test_a_stored_response_is_read_and_continued_on_the_replica_that_holds_it(replicated):
    r = await replicated(3)
    made = []
    for c in range(6):  # conversations of their own: they land on different replicas
        async with r.http.post(r.url + "/v1/responses", json={"model": "m", "input": f"conversation {c}"}) as resp:
            assert resp.status == 200
            made.append((await resp.json())["id"])
    holders = [next(i for i, f in enumerate(r.fakes) if rid in f.stored) for rid in made]
    assert len(set(holders)) > 1
    for rid, holder in zip(made, holders, strict=True):
        async with r.http.get(r.url + f"/v1/responses/{rid}") as resp:
            assert resp.status == 200 and (await resp.json())["id"] == rid
        async with r.http.post(r.url + "/v1/responses", json={"input": "and then?", "previous_response_id": rid}) \
                as resp:
            assert resp.status == 200
        assert r.fakes[holder].received[-1]["previous_response_id"] == rid
    assert all(rid in r.fakes[h].looked_up for rid, h in zip(made, holders, strict=True))


async def test_a_crashed_server_takes_out_its_replica_not_the_model(replicated):
    from gateway.http.appkeys import REGISTRY
    from gateway.routing.states import State

    r = await replicated(2, health_interval=60)
    backend = r.app[REGISTRY].backends["m"]
    # What `localai up` reports when one of the model's servers exits.
    backend.server_state(f"http://127.0.0.1:{r.ports[1]}", State.FAILED, "exited; restarting in 1 s")
    assert [x["state"] for x in await r.replicas()] == ["ready", "failed"]
    async with r.http.get(r.url + "/health") as resp:
        assert (await resp.json())["models"]["m"]["state"] == "ready"
    for c in range(6):
        assert (await r.chat(c))[0] == 200
    assert not r.fakes[1].received
    backend.server_state(f"http://127.0.0.1:{r.ports[0]}", State.FAILED, "exited; restarting in 1 s")
    async with r.http.get(r.url + "/health") as resp:
        assert (await resp.json())["models"]["m"]["state"] == "failed"


async def test_a_client_that_hangs_up_before_the_answer_leaves_no_load_behind(replicated):
    r = await replicated(2)
    for f in r.fakes:
        f.ttft = 30.0  # no byte of an answer yet
    with pytest.raises(asyncio.TimeoutError):
        async with r.http.post(r.url + "/v1/chat/completions", timeout=aiohttp.ClientTimeout(total=0.3), json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]}):
            pass

    async def no_load() -> bool:
        return [x["in_flight"] for x in await r.replicas()] == [0, 0]

    await wait_until(no_load)
    assert sum(f.cancelled for f in r.fakes) == 1  # the backend was told too


async def test_a_reload_balances_over_the_new_replica_set_and_says_which_servers_to_start_or_stop(
        replicated, tmp_path):
    from gateway.app.reload import RELOADER

    r = await replicated(3)
    config = tmp_path / "localai.yaml"
    reloader = r.app[RELOADER]
    reloader.config = parse_config(yaml.safe_dump(r.config), config)  # the running config, read from a file
    r.config["models"][0]["hosts"] = ["h0", "h1"]
    config.write_text(yaml.safe_dump(r.config))
    log = io.StringIO()
    setup_logging("info", stream=log)

    assert reloader.reload()
    assert "model m's server localai-model@m.2 on host h2, no longer planned (stop it)" in log.getvalue()
    for c in range(12):
        assert (await r.chat(c))[0] == 200
    assert not any(b["messages"][1]["content"] == "conversation 11" for b in r.fakes[2].received)
    assert len(await r.replicas()) == 2

    r.config["models"][0]["hosts"] = ["h0", "h1", "h2"]
    config.write_text(yaml.safe_dump(r.config))
    assert reloader.reload()
    assert "model m's new server localai-model@m.2 on host h2 (start it)" in log.getvalue()
    await wait_until(lambda: all_ready(r))
    before = len(r.fakes[2].received)
    for c in range(100, 130):
        assert (await r.chat(c))[0] == 200
    assert len(r.fakes[2].received) > before  # the third replica takes its share again
