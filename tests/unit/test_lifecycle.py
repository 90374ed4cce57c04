"""Model lifecycle (#13): load: on_demand models brought in when asked for and out when idle,
by vLLM's sleep mode (fakes that speak its endpoints, on the models' own ports) and by
stop/start through `localai up`'s real supervisor (test_lifecycle_process.py)."""

from __future__ import annotations

import asyncio
import json

from tests.fakebackend import FakeBackend
from tests.harness import wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def always(name: str, share: float, **fake) -> tuple[FakeBackend, dict]:
    return FakeBackend(model_id=name, **fake), {"model": f"/m/{name}", "gpu_memory_utilization": share}


def on_demand(name: str, share: float, **extra) -> tuple[FakeBackend, dict]:
    fake = {k: extra.pop(k) for k in ("chunks", "itl", "ttft") if k in extra}
    return FakeBackend(model_id=name, **fake), {"model": f"/m/{name}", "gpu_memory_utilization": share,
                                                "load": "on_demand", "sleep_mode": "level1", **extra}


async def cards(s) -> dict[str, dict]:
    async with s.http.get(s.url + "/v1/models") as r:
        return {m["id"]: m for m in (await r.json())["data"]}


async def state(s, name: str) -> str:
    return (await cards(s))[name]["state"]


async def asleep(s, *names: str) -> None:
    async def check():
        states = await cards(s)
        return all(states[n]["state"] == "sleeping" for n in names)
    await wait_until(check)


async def chat(s, model: str, **extra) -> tuple[int, dict | str]:
    """Status and answer: JSON, or a stream's whole text."""
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"model": model, "messages": MESSAGES, **extra}) as r:
        return r.status, (await r.text() if extra.get("stream") else await r.json())


def release(fake: FakeBackend) -> None:
    """Let a gated stream run to its end."""
    gate, fake.gate = fake.gate, None
    assert gate is not None
    gate.set()


def generated(fake: FakeBackend) -> list[dict]:
    """What the fake was asked to generate, warm-ups (max_tokens 1 on /v1/completions) left out."""
    return [b for b in fake.received if not (b.get("prompt") == "warm up" and b.get("max_tokens") == 1)]


async def test_a_sleeping_model_is_woken_and_warmed_up_before_the_request(stack):
    s = await stack({"a": always("a", 0.4), "b": on_demand("b", 0.4)}, wait=False)
    await s.ready("a")
    await asleep(s, "b")  # started, then put to sleep: models that share a card start in turn
    b = s.fakes["b"]
    assert b.sleeping == 1 and b.sleep_calls == ["/sleep?level=1"]
    card = (await cards(s))["b"]
    assert card["load"] == "on_demand" and card["vram_share"] == 0.4 and card["resident_since"] is None
    status, body = await chat(s, "b")
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("tok0")
    assert b.sleep_calls == ["/sleep?level=1", "/wake_up"]
    # One tiny warm-up went first, then the request itself.
    assert b.received[0]["max_tokens"] == 1 and b.received[1]["messages"] == MESSAGES
    card = (await cards(s))["b"]
    assert card["state"] == "ready" and card["resident_since"].endswith("Z") and card["expires_at"] is None
    metrics = s.metrics_text()
    assert 'localai_model_swaps_total{kind="sleep",model="b"} 1.0' in metrics
    assert 'localai_model_swaps_total{kind="wake",model="b"} 1.0' in metrics
    assert 'localai_model_swap_duration_seconds_count{kind="wake"} 1.0' in metrics
    assert 'localai_model_resident{model="b"} 1.0' in metrics


async def test_level_2_reloads_the_weights_and_resets_the_prefix_cache(stack):
    s = await stack({"a": always("a", 0.4), "b": on_demand("b", 0.4, sleep_mode="level2")}, wait=False)
    await asleep(s, "b")
    assert (await chat(s, "b"))[0] == 200
    assert s.fakes["b"].sleep_calls == ["/sleep?level=2", "/wake_up?tags=weights", "/collective_rpc",
                                        "/wake_up?tags=kv_cache", "/reset_prefix_cache"]


async def test_the_least_recently_used_idle_model_goes_never_a_busy_or_queued_one(stack):
    # Room for a and two of b, c, d. c serves one request and has another queued for its one slot.
    s = await stack({"a": always("a", 0.4), "b": on_demand("b", 0.3), "c": on_demand("c", 0.3, max_concurrency=1),
                     "d": on_demand("d", 0.3)}, wait=False, min_residency=0)
    await asleep(s, "b", "c", "d")
    for name in ("b", "c", "d"):  # d evicts b, the least recently used
        assert (await chat(s, name))[0] == 200
    # The swaps' log lines say which went and why (one run of many evicted c instead, unexplained).
    swaps = [line["msg"] for line in s.log_lines() if line["msg"].startswith("swap:")]
    assert [(await cards(s))[n]["state"] for n in "bcd"] == ["sleeping", "ready", "ready"], swaps
    assert "/sleep?level=1" in s.fakes["b"].sleep_calls[-1]
    c = s.fakes["c"]
    c.gate = asyncio.Event()
    in_flight = asyncio.create_task(chat(s, "c", stream=True))
    await c.wait_for(lambda f: f.active == 1)
    queued = asyncio.create_task(chat(s, "c"))
    await wait_until(lambda: 'localai_queue_depth{model="c"} 1.0' in s.metrics_text())
    # c is now the least recently used, but busy: b's return evicts d.
    assert (await chat(s, "b"))[0] == 200
    assert [(await cards(s))[n]["state"] for n in "bcd"] == ["ready", "ready", "sleeping"]
    release(c)
    assert (await queued)[0] == 200 and (await in_flight)[0] == 200
    lines = [line for line in s.log_lines() if line["msg"].startswith("swap: sleep d")]
    assert "least recently used idle model" in lines[-1]["msg"] and "to make room for b" in lines[-1]["msg"]


async def test_with_no_room_a_request_waits_then_gets_503_with_retry_after(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5), "c": on_demand("c", 0.5)}, wait=False,
                    queue_timeout=0.3, min_residency=0)
    await asleep(s, "b", "c")
    b = s.fakes["b"]
    b.gate = asyncio.Event()
    holding = asyncio.create_task(chat(s, "b", stream=True))
    await b.wait_for(lambda f: f.active == 1)
    async with s.http.post(s.url + "/v1/chat/completions", json={"model": "c", "messages": MESSAGES}) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "10"
        error = (await r.json())["error"]
    assert error["code"] == "queue_timeout" and "b is serving requests" in error["message"]
    assert await state(s, "c") == "sleeping" and await state(s, "b") == "ready"
    assert 'localai_rejections_total{model="c",reason="queue_timeout"} 1.0' in s.metrics_text()
    release(b)
    assert (await holding)[0] == 200


async def test_requests_for_two_models_that_cannot_share_the_card_are_served_in_turn(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5, ttft=0.02),
                     "c": on_demand("c", 0.5, ttft=0.02)}, wait=False, min_residency=0.2)
    await asleep(s, "b", "c")
    answers = await asyncio.gather(*(chat(s, "bc"[i % 2]) for i in range(12)))
    assert [status for status, _ in answers] == [200] * 12  # every one served, none lost
    assert len(generated(s.fakes["b"])) == 6 and len(generated(s.fakes["c"])) == 6
    # In turns, not one swap per request.
    wakes = s.fakes["b"].sleep_calls.count("/wake_up") + s.fakes["c"].sleep_calls.count("/wake_up")
    assert wakes <= 4, (s.fakes["b"].sleep_calls, s.fakes["c"].sleep_calls)


async def test_concurrent_requests_during_a_wake_are_all_served_after_one_wake(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False)
    await asleep(s, "b")
    b = s.fakes["b"]
    b.wake_gate = asyncio.Event()
    waiting = [asyncio.create_task(chat(s, "b")) for _ in range(8)]
    await b.wait_for(lambda f: "/wake_up" in f.sleep_calls)
    assert await state(s, "b") == "waking"
    b.wake_gate.set()
    assert [status for status, _ in await asyncio.gather(*waiting)] == [200] * 8
    assert b.sleep_calls.count("/wake_up") == 1 and len(generated(b)) == 8


async def test_keep_alive_puts_an_idle_model_to_sleep(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5, keep_alive="0.2s")}, wait=False)
    await asleep(s, "b")
    assert (await chat(s, "b"))[0] == 200
    assert (await cards(s))["b"]["expires_at"] is not None
    await asleep(s, "b")
    assert any("idle for keep_alive 0.2 s" in line["msg"] for line in s.log_lines())


async def test_ollama_keep_alive_per_request_and_load_unload(stack):
    # min_residency 0: a client's unload waits that out (test_trust_limits_door.py).
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False, min_residency=0)
    await asleep(s, "b")
    # An empty prompt loads (Ollama's habit; `localai load`), keep_alive sets when it unloads.
    async with s.http.post(s.url + "/api/generate", json={"model": "b", "keep_alive": "1h"}) as r:
        assert r.status == 200 and (await r.json())["done_reason"] == "load"
    async with s.http.get(s.url + "/api/ps") as r:
        (entry,) = [m for m in (await r.json())["models"] if m["name"] == "b"]
    assert entry["state"] == "ready" and entry["vram_share"] == 0.5 and entry["expires_at"].startswith("20")
    assert entry["expires_at"] != "9999-12-31T23:59:59Z"
    # keep_alive 0 on a request: unloaded once it is answered.
    async with s.http.post(s.url + "/api/chat", json={"model": "b", "messages": MESSAGES, "stream": False,
                                                      "keep_alive": 0}) as r:
        assert r.status == 200 and (await r.json())["message"]["content"].startswith("tok0")
    await asleep(s, "b")
    async with s.http.get(s.url + "/api/ps") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["a"]
    async with s.http.post(s.url + "/api/generate", json={"model": "b", "keep_alive": "soon"}) as r:
        assert r.status == 400 and "keep_alive" in (await r.json())["error"]


async def test_a_stream_waiting_for_its_model_gets_heartbeats_then_the_answer(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False)
    await asleep(s, "b")
    b = s.fakes["b"]
    b.wake_gate = asyncio.Event()
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"model": "b", "messages": MESSAGES, "stream": True}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert await r.content.readline() == b": waiting for b to load\n"  # before the model is in
        b.wake_gate.set()
        rest = (await r.content.read()).decode().lstrip("\n")
    events = [json.loads(e[6:]) for e in rest.split("\n\n") if e.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "tok0 tok1 tok2 tok3 tok4 "
    assert rest.rstrip().endswith("data: [DONE]")


async def test_a_failed_wake_answers_503_naming_why_and_the_next_request_retries(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False)
    await asleep(s, "b")
    b = s.fakes["b"]
    b.wake_status = 500
    status, body = await chat(s, "b")
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert "wake failed: POST /wake_up answered HTTP 500" in body["error"]["message"]
    assert "CUDA out of memory" in body["error"]["message"]
    card = (await cards(s))["b"]
    assert card["state"] == "failed" and "CUDA out of memory" in card["state_reason"]
    # A stream that already had its heartbeat gets the failure as an error event.
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"model": "b", "messages": MESSAGES, "stream": True}) as r:
        assert r.status == 200
        text = (await r.read()).decode()
    assert text.startswith(": waiting for b to load\n\n")
    error = json.loads(text.split("data: ", 1)[1])["error"]
    assert error["code"] == "model_unavailable" and "CUDA out of memory" in error["message"]
    b.wake_status = 200
    assert (await chat(s, "b"))[0] == 200


async def test_a_wake_that_hangs_is_bounded_by_wake_timeout(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False, wake_timeout=0.3)
    await asleep(s, "b")
    s.fakes["b"].wake_gate = asyncio.Event()  # never set
    status, body = await chat(s, "b")
    assert status == 503 and "POST /wake_up took longer than 0.3 s" in body["error"]["message"]


async def test_the_gateway_never_forwards_vllms_sleep_endpoints(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False)
    await asleep(s, "b")
    calls = list(s.fakes["b"].sleep_calls)
    for method, path in (("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
                         ("POST", "/v1/sleep"), ("POST", "/v1/wake_up"), ("POST", "/collective_rpc")):
        async with s.http.request(method, s.url + path) as r:
            assert r.status in (404, 405), path
    assert s.fakes["b"].sleep_calls == calls and await state(s, "b") == "sleeping"
