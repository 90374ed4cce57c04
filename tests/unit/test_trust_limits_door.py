"""Issue #18, defects 3-6: a key's limits are checked at the door (before its body is read, before
tokenizing, before a model load, on every verb); a client's loads and unloads spend the key's limits
and honour min_residency; keep_alive has a ceiling and the listings never break; a stored response
belongs to the key that made it."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime

import orjson

from tests.fakebackend import FakeBackend
from tests.harness import wait_until
from tests.unit.test_gateway import CHAT, assert_openai_error
from tests.unit.test_lifecycle import MESSAGES, always, asleep, cards, on_demand

ALICE, BOB = {"Authorization": "Bearer sk-alice-1"}, {"Authorization": "Bearer sk-bob-2"}
KEYS = ["sk-alice-1", "sk-bob-2"]  # named key-1 (alice) and key-2 (bob)
ALICE_ONE_AT_A_TIME = {"per_key": {"key-1": {"max_concurrent": 1}}}
STREAM = {"messages": MESSAGES, "stream": True}


async def sleeping(s, *names: str) -> None:
    """Like test_lifecycle's asleep, on a gateway with keys."""
    async def check():
        async with s.http.get(s.url + "/v1/models", headers=BOB) as r:
            states = {m["id"]: m["state"] for m in (await r.json())["data"]}
        return all(states[n] == "sleeping" for n in names)
    await wait_until(check)


async def occupy(s, fake: FakeBackend, model: str, headers: dict) -> asyncio.Task:
    """A stream of `model` that the fake holds at its gate: one request in flight for this key."""
    fake.gate = asyncio.Event()
    before = fake.active
    running = asyncio.create_task(s.http.post(s.url + "/v1/chat/completions", headers=headers,
                                              json={"model": model, **STREAM}))
    await fake.wait_for(lambda f: f.active == before + 1)
    return running


async def finish(fake: FakeBackend, running: asyncio.Task) -> None:
    gate, fake.gate = fake.gate, None
    assert gate is not None
    gate.set()
    response = await running
    await response.read()
    response.close()


def peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident set (VmHWM) starts again from now


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


# --- defect 3: limits at the door ------------------------------------------------------------


async def test_a_key_at_its_limit_gets_429_before_sending_its_body(stack):
    fake = FakeBackend(chunks=2)
    s = await stack({"m": fake}, api_keys=KEYS, key_limits=ALICE_ONE_AT_A_TIME)
    running = await occupy(s, fake, "m", ALICE)
    # 16 MiB announced, 1 KiB sent: the answer comes without the rest of the body.
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-alice-1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 16777000\r\n\r\n"
                     b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 1024)
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 429 ")
    await finish(fake, running)


async def test_six_16_mib_bodies_from_a_key_at_its_limit_are_neither_kept_nor_tokenized(stack):
    fake = FakeBackend(chunks=2)
    s = await stack({"m": fake}, api_keys=KEYS, key_limits=ALICE_ONE_AT_A_TIME)
    running = await occupy(s, fake, "m", ALICE)
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x " * (8 * 1024 * 1024 - 256 * 1024)}]})
    assert 15 * 2**20 < len(big) < 16 * 2**20 - 1024  # under gateway.max_body_bytes
    headers = {**ALICE, "Content-Type": "application/json"}

    async def body():  # in pieces, so that this process (the client) never buffers a whole body
        view = memoryview(big)
        for at in range(0, len(big), 2**16):
            yield view[at:at + 2**16]

    async def send() -> tuple[int, dict]:
        async with s.http.post(s.url + "/v1/chat/completions", data=body(), headers=headers) as r:
            return r.status, await r.json()

    peak_rss_reset()
    before = peak_rss_mib()
    answers = await asyncio.gather(*(send() for _ in range(6)))
    grew = peak_rss_mib() - before
    assert [status for status, _ in answers] == [429] * 6
    for _, body in answers:
        assert_openai_error(body, "key_concurrency_limit")
    assert fake.tokenize_calls == 0 and len(fake.received) == 1  # the guard never counted them
    # Six bodies read whole and parsed held ~200 MiB at once; unread, a few buffers.
    assert grew < 48, f"the gateway's resident set grew by {grew:.0f} MiB"
    await finish(fake, running)


async def test_retrieve_and_cancel_of_a_response_count_against_the_key(stack):
    fake = FakeBackend(chunks=2)
    s = await stack({"m": fake}, api_keys=KEYS, key_limits=ALICE_ONE_AT_A_TIME)
    async with s.http.post(s.url + "/v1/responses", headers=ALICE, json={"model": "m", "input": "hi"}) as r:
        made = await r.json()
    running = await occupy(s, fake, "m", ALICE)
    for method, path in (("GET", ""), ("POST", "/cancel")):
        async with s.http.request(method, s.url + f"/v1/responses/{made['id']}{path}", headers=ALICE) as r:
            assert r.status == 429
            assert_openai_error(await r.json(), "key_concurrency_limit")
    assert fake.looked_up == []
    await finish(fake, running)


async def test_a_key_over_its_limit_drains_no_colleagues_model(stack):
    # b and c can't share the card. Bob is using b; alice has her one request running on a.
    s = await stack({"a": always("a", 0.4), "b": on_demand("b", 0.5), "c": on_demand("c", 0.55)},
                    wait=False, api_keys=KEYS, key_limits=ALICE_ONE_AT_A_TIME, queue_timeout=2, min_residency=0)
    await s.ready("a")
    await sleeping(s, "b", "c")
    bobs = await occupy(s, s.fakes["b"], "b", BOB)
    alices = await occupy(s, s.fakes["a"], "a", ALICE)
    started = time.monotonic()
    async with s.http.post(s.url + "/v1/chat/completions", headers=ALICE, json={"model": "c", **STREAM}) as r:
        assert r.status == 429
    assert time.monotonic() - started < 1  # at once, not after waiting for room
    # b was not marked for draining: bob's next request goes straight in.
    async with s.http.post(s.url + "/v1/chat/completions", headers=BOB,
                           json={"model": "b", "messages": MESSAGES, "max_tokens": 1}) as r:
        assert r.status == 200
    assert "/wake_up" not in s.fakes["c"].sleep_calls
    await finish(s.fakes["b"], bobs)
    await finish(s.fakes["a"], alices)


# --- defect 4: loads and unloads a client asks for ------------------------------------------------


async def test_ollama_load_and_unload_are_refused_over_the_keys_limits(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False, api_keys=KEYS,
                    key_limits={"per_key": {"key-1": {"max_concurrent": 1},
                                            "key-2": {"requests_per_minute": 2}}})
    await s.ready("a")
    await sleeping(s, "b")
    running = await occupy(s, s.fakes["a"], "a", ALICE)
    for keep_alive in ("5m", 0):
        async with s.http.post(s.url + "/api/generate", headers=ALICE,
                               json={"model": "b", "keep_alive": keep_alive}) as r:
            assert r.status == 429 and "max_concurrent 1" in (await r.json())["error"]
    assert "/wake_up" not in s.fakes["b"].sleep_calls
    await finish(s.fakes["a"], running)
    # Loads and unloads spend the key's rate like any request.
    statuses = []
    for keep_alive in ("5m", 0, "5m"):
        async with s.http.post(s.url + "/api/generate", headers=BOB,
                               json={"model": "b", "keep_alive": keep_alive}) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 429]


async def test_alternating_loads_and_unloads_cannot_thrash_a_model_inside_min_residency(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False, min_residency=60)
    await s.ready("a")
    await asleep(s, "b")
    b = s.fakes["b"]
    for _ in range(5):
        for keep_alive, done in (("5m", "load"), (0, "unload")):
            async with s.http.post(s.url + "/api/generate", json={"model": "b", "keep_alive": keep_alive}) as r:
                assert r.status == 200 and (await r.json())["done_reason"] == done
    assert b.sleep_calls == ["/sleep?level=1", "/wake_up"]  # put to sleep at start, woken once
    card = (await cards(s))["b"]
    assert card["state"] == "ready"
    # It goes once it has been resident min_residency, and says when.
    expires = datetime.fromisoformat(card["expires_at"].replace("Z", "+00:00"))
    assert 50 < (expires - datetime.now(UTC)).total_seconds() <= 61
    assert any("min_residency" in line["msg"] for line in s.log_lines() if line.get("model") == "b")


# --- defect 5: keep_alive has a ceiling -------------------------------------------------------


async def _listings_answer(s) -> dict:
    for path in ("/v1/models", "/v1/models/b", "/api/ps", "/api/tags"):
        async with s.http.get(s.url + path) as r:
            assert r.status == 200, (path, await r.text())
    return (await cards(s))["b"]


async def test_a_huge_keep_alive_is_clamped_and_said_so_and_the_listings_answer(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False, max_keep_alive="2h")
    await asleep(s, "b")
    for keep_alive in ("300000000h", -1, "1" + "0" * 400 + "h"):  # the last: an infinite float
        async with s.http.post(s.url + "/api/generate", json={"model": "b", "keep_alive": keep_alive}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-LocalAI-Keep-Alive-Clamped"] == "7200"
        card = await _listings_answer(s)
        expires = datetime.fromisoformat(card["expires_at"].replace("Z", "+00:00"))
        assert 7100 < (expires - datetime.now(UTC)).total_seconds() <= 7201
    async with s.http.post(s.url + "/api/chat", json={"model": "b", "messages": MESSAGES, "stream": False,
                                                      "keep_alive": "3h"}) as r:
        assert r.status == 200 and r.headers["X-LocalAI-Keep-Alive-Clamped"] == "7200"
    async with s.http.post(s.url + "/api/chat", json={"model": "b", "messages": MESSAGES, "keep_alive": "3h"}) as r:
        assert r.status == 200 and r.headers["X-LocalAI-Keep-Alive-Clamped"] == "7200"  # streamed too
        await r.read()
    async with s.http.post(s.url + "/api/generate", json={"model": "b", "keep_alive": "1h"}) as r:
        assert r.status == 200 and "X-LocalAI-Keep-Alive-Clamped" not in r.headers
    assert [line["keep_alive_clamped"] for line in s.log_lines() if "keep_alive_clamped" in line] == [7200] * 5


async def test_forever_only_where_the_admin_allows_it(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5)}, wait=False, max_keep_alive=-1)
    await asleep(s, "b")
    for keep_alive in ("300000000h", -1):
        async with s.http.post(s.url + "/api/generate", json={"model": "b", "keep_alive": keep_alive}) as r:
            assert r.status == 200 and "X-LocalAI-Keep-Alive-Clamped" not in r.headers
        await _listings_answer(s)


async def test_the_listings_answer_whatever_keep_alive_the_config_sets(stack):
    s = await stack({"a": always("a", 0.5), "b": on_demand("b", 0.5, keep_alive="300000000h")}, wait=False)
    await asleep(s, "b")
    async with s.http.post(s.url + "/v1/chat/completions", json={"model": "b", "messages": MESSAGES}) as r:
        assert r.status == 200
    await _listings_answer(s)


# --- defect 6: a stored response is its key's --------------------------------------------------


async def test_a_response_is_read_continued_and_cancelled_only_with_the_key_that_made_it(stack):
    fake = FakeBackend("m-id")
    s = await stack({"m": fake}, api_keys=KEYS)
    async with s.http.post(s.url + "/v1/responses", headers=ALICE, json={"model": "m", "input": "secret"}) as r:
        made = await r.json()
    rid = made["id"]
    for method, path in (("GET", f"/v1/responses/{rid}"), ("POST", f"/v1/responses/{rid}/cancel")):
        async with s.http.request(method, s.url + path, headers=BOB) as r:
            assert r.status == 404
            assert_openai_error(await r.json(), "response_not_found")
    async with s.http.post(s.url + "/v1/responses", headers=BOB,
                           json={"input": "go on", "previous_response_id": rid}) as r:
        assert r.status == 404
        assert_openai_error(await r.json(), "response_not_found")
    assert fake.looked_up == [] and len(fake.received) == 1
    async with s.http.get(s.url + f"/v1/responses/{rid}", headers=ALICE) as r:
        assert r.status == 200 and (await r.json())["id"] == rid
    async with s.http.post(s.url + "/v1/responses", headers=ALICE,
                           json={"input": "go on", "previous_response_id": rid}) as r:
        assert r.status == 200


async def test_with_keys_an_id_the_gateway_did_not_see_made_is_not_looked_for(stack):
    fake = FakeBackend("m-id")
    s = await stack({"m": fake}, api_keys=KEYS)
    fake.stored["resp_old"] = {"id": "resp_old", "object": "response", "status": "completed", "output": []}
    async with s.http.get(s.url + "/v1/responses/resp_old", headers=BOB) as r:
        assert r.status == 404
    assert fake.looked_up == []


async def test_an_open_gateway_keeps_finding_responses_for_anyone(stack):
    fake = FakeBackend("m-id")
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/responses", json={"model": "m", "input": "hi"}) as r:
        made = await r.json()
    async with s.http.get(s.url + f"/v1/responses/{made['id']}") as r:
        assert r.status == 200
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200


def test_every_route_that_needs_a_key_spends_its_limits_but_the_listings():
    from gateway.app.factory import create_app
    from gateway.http.middleware import is_free_of_key_limits
    from tests.harness import make_config

    app = create_app(make_config([{"name": "m", "url": "http://127.0.0.1:9"}]), api_keys=[])
    free = {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None and is_free_of_key_limits(route.handler) and route.method != "HEAD"}
    # Answered from the gateway's memory; everything else (generating, tokenizing, retrieve, cancel,
    # load, unload and any route added later) counts against the key's concurrency and rate.
    assert free == {("GET", "/v1/models"), ("GET", "/v1/models/"), ("GET", "/v1/models/{model}"),
                    ("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("POST", "/api/show"),
                    ("GET", "/metrics")}
