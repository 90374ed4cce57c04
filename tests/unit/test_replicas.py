"""A model with replicas, through the real gateway: each replica a fake vLLM on a port of its own
(two or three `hosts` on this machine, set apart by their port offsets)."""

from __future__ import annotations

import asyncio
import io
import re

import aiohttp
import pytest
import yaml

from gateway import balancer
from gateway.app import create_app
from gateway.config import parse_config
from gateway.observability import setup_logging
from gateway.server import serve
from tests.conftest import free_port, wait_until
from tests.fakebackend import FakeBackend


class Replicated:
    def __init__(self, url: str, http: aiohttp.ClientSession, fakes: list[FakeBackend], ports: list[int],
                 servers: list, app):
        self.url, self.http, self.fakes, self.ports, self.servers, self.app = url, http, fakes, ports, servers, app

    async def chat(self, conversation: int, turn: int = 1, **extra) -> tuple[int, dict]:
        messages = [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": f"conversation {conversation}"}]
        for t in range(1, turn):
            messages += [{"role": "assistant", "content": f"reply {t}"}, {"role": "user", "content": f"turn {t}"}]
        async with self.http.post(self.url + "/v1/chat/completions",
                                  json={"model": "m", "messages": messages, **extra}) as r:
            return r.status, await r.json()

    async def replicas(self) -> list[dict]:
        async with self.http.get(self.url + "/v1/models") as r:
            return (await r.json())["data"][0]["replicas"]

    def metric(self, name: str, port: int) -> float:
        from prometheus_client import generate_latest

        from gateway.keys import METRICS
        text = generate_latest(self.app[METRICS].registry).decode()
        found = re.search(rf'^{name}{{model="m",replica="127.0.0.1:{port}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    def served_by(self, conversation: int) -> list[int]:
        """Which fakes got a request of this conversation."""
        return [i for i, f in enumerate(self.fakes)
                if any(b["messages"][1]["content"] == f"conversation {conversation}" for b in f.received)]


@pytest.fixture
async def replicated(aiohttp_server):
    """Factory: replicated(n, **gateway settings) -> Replicated, every replica ready."""
    cleanups = []

    async def make(n: int = 2, **gateway) -> Replicated:
        ports = sorted(free_port() for _ in range(n))
        fakes = [FakeBackend("m") for _ in range(n)]
        servers = [await aiohttp_server(f.app(), port=p) for f, p in zip(fakes, ports, strict=True)]
        data = {
            "gateway": {"port": free_port(), "health_interval": 0.05, "webui": False, **gateway},
            "hosts": [{"name": f"h{i}", "address": "127.0.0.1", "gpus": 0, "port_offset": p - ports[0]}
                      for i, p in enumerate(ports)],
            "models": [{"name": "m", "model": "fake", "port": ports[0], "hosts": [f"h{i}" for i in range(n)],
                        "default": True}],
        }
        cfg = parse_config(yaml.safe_dump(data), "replicas.yaml")
        setup_logging("info", stream=io.StringIO())
        app = create_app(cfg, api_keys=[])
        ctx = serve(app, "127.0.0.1", cfg.gateway.port)
        await ctx.__aenter__()
        http = aiohttp.ClientSession()
        cleanups.append((ctx, http))
        r = Replicated(f"http://127.0.0.1:{cfg.gateway.port}", http, fakes, ports, servers, app)
        await wait_until(lambda: _all_ready(r))
        return r

    yield make
    for ctx, http in cleanups:
        await http.close()
        await ctx.__aexit__(None, None, None)


def release(r: Replicated, gate: asyncio.Event) -> None:
    """Let the gated streams run to their end (a fake's gate lets one chunk through per set())."""
    for f in r.fakes:
        f.gate = None
    gate.set()


async def _all_ready(r: Replicated) -> bool:
    return all(x["state"] == "ready" for x in await r.replicas())


async def test_models_list_each_replica_with_its_host_state_and_load(replicated):
    r = await replicated(2)
    replicas = await r.replicas()
    assert replicas == [{"host": "h0", "address": f"127.0.0.1:{r.ports[0]}", "state": "ready", "in_flight": 0},
                        {"host": "h1", "address": f"127.0.0.1:{r.ports[1]}", "state": "ready", "in_flight": 0}]
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


async def test_one_conversation_is_spread_once_its_replica_holds_more_than_its_share(replicated):
    r = await replicated(2)
    gate = asyncio.Event()
    for f in r.fakes:
        f.gate = gate
    messages = [{"role": "user", "content": "conversation 1"}]
    streams = []
    for _ in range(8):
        streams.append(await r.http.post(r.url + "/v1/chat/completions",
                                         json={"model": "m", "messages": messages, "stream": True}))
    loads = sorted(f.active for f in r.fakes)
    # All eight share one conversation; its replica takes at most 1.25 x the average load.
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


async def test_breaker_takes_out_a_replica_that_fails_requests_and_lets_it_back(replicated, monkeypatch):
    monkeypatch.setattr(balancer, "COOL_DOWN", 1.0)  # long enough for the 30 requests, short for the test
    r = await replicated(2)
    flaky = r.ports[0]
    r.fakes[0].hang_up = True  # its health checks pass: only the breaker can tell
    statuses = [(await r.chat(c))[0] for c in range(30)]
    assert statuses == [200] * 30
    assert r.metric("localai_replica_failures_total", flaky) == balancer.BREAK_AFTER  # then it was taken out
    assert len(r.fakes[0].received) == balancer.BREAK_AFTER
    assert [x["state"] for x in await r.replicas()] == ["unreachable", "ready"]
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
