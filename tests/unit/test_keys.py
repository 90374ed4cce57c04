"""Named API keys, per-key limits and fair sharing of a model's slots between keys."""

import asyncio
import json

import pytest

from gateway.config.schema import ConfigError
from gateway.keys.keyring import load_keyring, parse_key_file
from gateway.routing.admission import ModelSlots, WaitingRoom
from tests.fakebackend import FakeBackend
from tests.harness import make_config, wait_until
from tests.unit.test_gateway import CHAT, assert_openai_error

ALICE, BOB, ANON = "sk-alice-1-0123456789ab", "sk-bob-2-0123456789ab", "sk-anon-4-0123456789ab"
HEAVY, LIGHT = "sk-heavy-0123456789ab", "sk-light-0123456789ab"
KEYS = f"# the team's keys\r\nalice: {ALICE}\r\n{BOB}   # bob\n\nsk-anon-3-0123456789ab\n{ANON}\n"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_key_file_spellings_and_names(tmp_path, monkeypatch, caplog):
    f = tmp_path / "api-keys"
    f.write_text(KEYS)
    f.chmod(0o600)
    monkeypatch.setenv("LOCALAI_API_KEY", "sk-env-0123456789ab")
    ring = load_keyring(f)
    assert ring.key_names() == {"alice", "bob", "key-1", "key-2", "env"}
    assert ring.name_of(ALICE.encode()) == "alice" and ring.name_of(BOB.encode()) == "bob"
    assert ring.name_of(ANON.encode()) == "key-2" and ring.name_of(b"sk-env-0123456789ab") == "env"
    assert ring.name_of(b"sk-alice") is None
    assert "sk-alice" not in caplog.text


def test_bad_key_file_lines_name_file_and_line_never_the_key():
    text = ("alice: sk-1-0123456789abcdef\nbad name: sk-2-0123456789abcdef\nalice: sk-3-0123456789abcdef\n"
            "sk-1-0123456789abcdef  # carol\nsk 4 5\n")
    with pytest.raises(ConfigError) as err:
        parse_key_file(text, "/etc/localai/api-keys")
    message = str(err.value)
    assert "/etc/localai/api-keys:2: expected 'name: key'" in message
    assert "/etc/localai/api-keys:3: the name 'alice' is already used on line 1" in message
    assert "/etc/localai/api-keys:4: this key is already on line 1" in message
    assert "/etc/localai/api-keys:5:" in message
    assert "sk-" not in message


def test_key_limits_validated_with_file_and_line():
    with pytest.raises(ConfigError) as err:
        make_config([{"name": "m", "url": "http://127.0.0.1:1"}],
                    key_limits={"default": {"max_concurrent": 0}, "per_key": {"alice": {"rpm": 5}}})
    message = str(err.value)
    assert "test.yaml:" in message
    assert "gateway.key_limits.default.max_concurrent: Input should be greater than or equal to 1" in message
    assert "gateway.key_limits.per_key.alice.rpm: unknown key" in message


def test_per_key_limits_override_the_default_field_by_field():
    cfg = make_config([{"name": "m", "url": "http://127.0.0.1:1"}],
                      key_limits={"default": {"max_concurrent": 4, "requests_per_minute": 60},
                                  "per_key": {"batch": {"max_concurrent": 1},
                                              "ci": {"requests_per_minute": None}}})
    limits = cfg.gateway.key_limits
    fields = ("max_concurrent", "requests_per_minute")
    assert limits.for_key("anyone").model_dump(include=set(fields)) == {"max_concurrent": 4, "requests_per_minute": 60}
    assert limits.for_key("batch").model_dump(include=set(fields)) == {"max_concurrent": 1, "requests_per_minute": 60}
    assert limits.for_key("ci").model_dump(include=set(fields)) == {"max_concurrent": 4, "requests_per_minute": None}


async def test_key_name_in_log_and_metrics_never_the_key(stack, tmp_path):
    f = tmp_path / "api-keys"
    f.write_text(KEYS)
    f.chmod(0o600)
    s = await stack({"m": FakeBackend()}, api_key_file=str(f))
    for key in (ALICE, BOB, ALICE):
        async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer(key)) as r:
            assert r.status == 200
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer("sk-wrong")) as r:
        assert r.status == 401
    lines = [line for line in s.log_lines() if line.get("path") == "/v1/chat/completions"]
    assert [line.get("key") for line in lines] == ["alice", "bob", "alice", None]
    assert "sk-" not in json.dumps(s.log_lines())
    metrics = s.metrics_text()
    assert 'localai_key_requests_total{key="alice",status="200"} 2.0' in metrics
    assert 'localai_key_requests_total{key="bob",status="200"} 1.0' in metrics
    assert "sk-" not in metrics


async def test_key_concurrency_limit_is_429_in_the_clients_shape(stack, tmp_path):
    f = tmp_path / "api-keys"
    f.write_text(KEYS)
    f.chmod(0o600)
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": fake}, api_key_file=str(f),
                    key_limits={"per_key": {"alice": {"max_concurrent": 1}}})
    running = asyncio.create_task(s.http.post(s.url + "/v1/chat/completions", headers=bearer(ALICE),
                                              json=dict(CHAT, stream=True)))
    await fake.wait_for(lambda f: f.active == 1)
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer(ALICE)) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        body = await r.json()
    assert_openai_error(body, "key_concurrency_limit")
    assert body["error"]["type"] == "rate_limit_error" and "max_concurrent 1" in body["error"]["message"]
    async with s.http.post(s.url + "/api/chat", headers=bearer(ALICE),
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 429
        assert "max_concurrent 1" in (await r.json())["error"]  # Ollama's {"error": "..."}
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer(BOB)) as r:
        assert r.status == 200  # another key is not held back
    fake.gate.set()
    (await running).close()
    async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer(ALICE)) as r:
        assert r.status == 200  # the slot is alice's again once her stream ended
    assert 'localai_rejections_total{model="",reason="key_concurrency_limit"} 2.0' in s.metrics_text()


async def test_key_rate_limit_is_429_with_retry_after(stack, tmp_path):
    f = tmp_path / "api-keys"
    f.write_text(KEYS)
    f.chmod(0o600)
    s = await stack({"m": FakeBackend()}, api_key_file=str(f),
                    key_limits={"default": {"requests_per_minute": 2},
                                "per_key": {"bob": {"requests_per_minute": None}}})
    statuses = []
    for _ in range(3):
        async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer(ALICE)) as r:
            statuses.append(r.status)
            body = await r.json()
    assert statuses == [200, 200, 429]
    assert_openai_error(body, "key_rate_limit")
    assert "2 requests per minute" in body["error"]["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    for _ in range(3):
        async with s.http.post(s.url + "/v1/chat/completions", json=CHAT, headers=bearer(BOB)) as r:
            assert r.status == 200


async def test_a_light_key_is_served_before_a_heavy_keys_queue(stack, tmp_path):
    f = tmp_path / "api-keys"
    f.write_text(f"heavy: {HEAVY}\nlight: {LIGHT}\n")
    f.chmod(0o600)
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, api_key_file=str(f))
    from gateway.http.appkeys import REGISTRY

    async def call(key: str, tag: str) -> int:
        async with s.http.post(s.url + "/v1/chat/completions", headers=bearer(key),
                               json=dict(CHAT, stream=True, messages=[{"role": "user", "content": tag}])) as r:
            await r.read()
            return r.status

    calls = [asyncio.create_task(call(HEAVY, "heavy-0"))]
    await fake.wait_for(lambda f: f.active == 1)
    for i in range(1, 4):  # the heavy key's batch queues up, one after the other
        calls.append(asyncio.create_task(call(HEAVY, f"heavy-{i}")))
        await wait_until(lambda n=i: s.app[REGISTRY].room.waiting == n)
    calls.append(asyncio.create_task(call(LIGHT, "light")))
    await wait_until(lambda: s.app[REGISTRY].room.waiting == 4)
    while not all(c.done() for c in calls):
        fake.gate.set()
        await asyncio.sleep(0)
    assert [await c for c in calls] == [200] * 5
    served = [b["messages"][0]["content"] for b in fake.received]
    assert served == ["heavy-0", "light", "heavy-1", "heavy-2", "heavy-3"]


async def test_slots_round_robin_between_keys_fifo_within_and_cancel_hands_on():
    slots = ModelSlots("m", 1, WaitingRoom(max_waiting=10, timeout=5))
    served: list[str] = []

    async def user(key: str, tag: str) -> None:
        await slots.acquire(key)
        served.append(tag)

    await slots.acquire("a")  # a holds the one slot
    waiters = {}
    for key, tag in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("b", "b2"), ("c", "c1")]:
        waiters[tag] = asyncio.create_task(user(key, tag))
        await wait_until(lambda: slots.waiting == len(waiters))  # each joins the line before the next
    waiters["b1"].cancel()  # b's first request gives up: b2 keeps b's place in the rotation
    await wait_until(lambda: slots.waiting == 5)
    order = ["b2", "c1", "a1", "a2", "a3"]
    for tag in order:
        key = served[-1][0] if served else "a"
        slots.release(key)
        await waiters[tag]
    assert served == order
    slots.release("a")
    assert slots.in_flight == 0 and slots.waiting == 0
