"""Issue #21: OpenAI's Files and Batch APIs, driven by the openai SDK itself against the real
gateway in front of fake upstreams that count what they were sent (docs/batch.md)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from gateway.http.appkeys import REGISTRY
from gateway.keys.usage import read_summary
from gateway.routing.admission import ModelSlots, WaitingRoom
from tests.fakebackend import FakeBackend
from tests.harness import localai, make_config, serving, wait_until

KEYS = ["sk-alice-0123456789ab", "sk-bob-0123456789abc"]  # key-1 (alice), key-2 (bob)
CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
DONE = ("completed", "failed", "cancelled", "expired")


@pytest.fixture
async def upstream(aiohttp_server) -> tuple[list[dict], dict[str, FakeBackend]]:
    """A chat model (gen) and an embedding model (emb), each a fake that records every body."""
    fakes = {"gen": FakeBackend(chunks=3), "emb": FakeBackend(model_id="emb")}
    entries = []
    for name, fake in fakes.items():
        server = await aiohttp_server(fake.app())
        entries.append({"name": name, "url": str(server.make_url("/")).rstrip("/"), "served_model": fake.model_id,
                        "task": "embed" if name == "emb" else "generate", "default": name == "gen"})
    return entries, fakes


@contextlib.asynccontextmanager
async def sdk(models: list[dict], batch_dir: Path, key: str = KEYS[0], **settings) -> AsyncIterator[
        tuple[openai.AsyncOpenAI, object]]:
    """A gateway on batch_dir, and the openai SDK's client for it with `key`."""
    cfg = make_config(models, batch_dir=str(batch_dir), **settings)
    async with serving(cfg, api_keys=KEYS) as app:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{cfg.gateway.port}/v1", api_key=key, max_retries=0)
        try:
            yield client, app
        finally:
            await client.close()


def jsonl(endpoint: str, model: str, n: int) -> bytes:
    """n lines, each naming its custom_id in its prompt (so the fake's bodies say which line they are)."""
    def body(i: int) -> dict:
        if endpoint == EMBEDDINGS:
            return {"model": model, "input": f"doc line-{i}"}
        return {"model": model, "messages": [{"role": "user", "content": f"line-{i}"}], "max_tokens": 3}
    return b"".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": endpoint, "body": body(i)}
                               ).encode() + b"\n" for i in range(n))


def sent_ids(fake: FakeBackend) -> collections.Counter:
    """How many times the fake was sent each line (by the custom_id in its prompt)."""
    def cid(body: dict) -> str:
        text = body["input"] if "input" in body else body["messages"][0]["content"]
        return text.split()[-1]
    return collections.Counter(cid(b) for b in fake.received)


async def finished(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 20.0,  # noqa: ASYNC109
                   interval: float = 0.02):
    async def done():
        batch = await client.batches.retrieve(batch_id)
        return batch if batch.status in DONE else None
    return await wait_until(done, timeout, f"batch {batch_id} finished", interval=interval)


async def output_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


@pytest.mark.parametrize(("endpoint", "model"), [(CHAT, "gen"), (EMBEDDINGS, "emb")])
async def test_the_sdk_flow_answers_every_line_once(upstream, tmp_path, endpoint, model):
    models, fakes = upstream
    async with sdk(models, tmp_path) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(endpoint, model, 12)), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes > 0
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")
        assert batch.status == "validating"
        batch = await finished(client, batch.id)
        assert batch.status == "completed", batch
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (12, 12, 0)
        assert batch.error_file_id is None
        lines = await output_lines(client, batch.output_file_id)
        assert sorted(line["custom_id"] for line in lines) == sorted(f"line-{i}" for i in range(12))
        for line in lines:
            assert line["error"] is None and line["response"]["status_code"] == 200
            assert line["response"]["request_id"] == line["id"]
            if endpoint == EMBEDDINGS:
                assert line["response"]["body"]["data"][0]["embedding"]
            else:
                assert line["response"]["body"]["choices"][0]["message"]["content"]
        assert set(sent_ids(fakes[model]).values()) == {1}
        listed = await client.batches.list(limit=5)
        assert [b.id for b in listed.data] == [batch.id]


async def test_a_bad_line_fails_the_batch_naming_its_line(upstream, tmp_path):
    models, fakes = upstream
    good = jsonl(CHAT, "gen", 3).splitlines()
    bad = [good[0], b"{not json", good[1].replace(b'"gen"', b'"nosuch"'), good[2].replace(CHAT.encode(), b"/v1/x"),
           good[0]]
    async with sdk(models, tmp_path) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", b"\n".join(bad) + b"\n"), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        batch = await finished(client, batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None
    found = {(e.line, e.code) for e in batch.errors.data}
    assert found == {(2, "invalid_json_line"), (3, "invalid_model"), (4, "invalid_url"), (5, "duplicate_custom_id")}
    assert fakes["gen"].received == []


async def test_cancel_stops_the_batch(upstream, tmp_path):
    models, fakes = upstream
    fakes["gen"].ttft = 60  # every line hangs until cancelled
    async with sdk(models, tmp_path, batch_parallel=2) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 10)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        await fakes["gen"].wait_for(lambda f: f.active == 2)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        batch = await finished(client, batch.id)
    assert batch.status == "cancelled"
    assert batch.request_counts.completed == 0 and batch.output_file_id is None
    assert len(fakes["gen"].received) == 2  # nothing sent after the cancel


async def test_a_restart_mid_batch_answers_every_line_exactly_once(upstream, tmp_path):
    models, fakes = upstream
    fakes["gen"].ttft = 0.02
    n, parallel = 40, 4
    async with sdk(models, tmp_path, batch_parallel=parallel) as (client, app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", n)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

        async def some_done():
            return (await client.batches.retrieve(batch.id)).request_counts.completed >= 10
        await wait_until(some_done, 20, "a quarter of the lines done")
    # The gateway stopped mid-job; a new one on the same state directory carries on.
    async with sdk(models, tmp_path, batch_parallel=parallel) as (client, _app):
        done = await finished(client, batch.id, 30)
        assert done.status == "completed"
        assert done.request_counts.completed == n
        lines = await output_lines(client, done.output_file_id)
    assert collections.Counter(line["custom_id"] for line in lines) == {f"line-{i}": 1 for i in range(n)}
    sent = sent_ids(fakes["gen"])
    assert set(sent) == {f"line-{i}" for i in range(n)}
    # Only the lines in flight when it stopped were sent twice.
    assert sum(sent.values()) - n <= parallel and max(sent.values()) <= 2


async def test_transient_upstream_errors_are_retried(upstream, tmp_path):
    from tests.fakebackend import ScriptedError
    models, fakes = upstream
    fakes["gen"].errors.extend([ScriptedError(503, "overloaded"), ScriptedError(500, "boom")])
    async with sdk(models, tmp_path, batch_parallel=1) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 2)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        batch = await finished(client, batch.id)
        assert (batch.status, batch.request_counts.completed) == ("completed", 2)
    assert len(fakes["gen"].received) == 4


async def test_a_model_server_dropping_lines_mid_batch_loses_none(upstream, tmp_path):
    models, fakes = upstream
    fakes["gen"].hang_up = True  # like a server killed mid-request: every line's connection dropped
    async with sdk(models, tmp_path, batch_parallel=2) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 6)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        await fakes["gen"].wait_for(lambda f: len(f.received) >= 2)
        fakes["gen"].hang_up = False  # back
        done = await finished(client, batch.id, 30)
        lines = await output_lines(client, done.output_file_id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 6, 0)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"line-{i}" for i in range(6))


async def test_lines_wait_while_their_model_does_not_serve(upstream, tmp_path):
    models, fakes = upstream
    fakes["gen"].health_status = 503  # down (or a load: on_demand model not on its card): lines wait
    # No retries: a line sent to the model while it is down would fail at once (503 from the gateway).
    async with sdk(models, tmp_path, batch_retries=0) as (client, app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 3)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

        async def in_progress():
            return (await client.batches.retrieve(batch.id)).status == "in_progress"
        await wait_until(in_progress, 10, "batch in progress")
        assert fakes["gen"].received == []
        fakes["gen"].health_status = 200
        done = await finished(client, batch.id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 3, 0)


async def test_a_keys_batch_leaves_its_concurrency_and_rate_to_its_interactive_use(upstream, tmp_path):
    models, fakes = upstream
    fakes["gen"].ttft = 0.05
    # 60 lines against 60 requests a minute: were the lines counted, the key's own calls would be refused.
    limits = {"default": {"max_concurrent": 1, "requests_per_minute": 60}}
    async with sdk(models, tmp_path, batch_parallel=4, batch_retries=0, key_limits=limits) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 60)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        await fakes["gen"].wait_for(lambda f: f.active >= 2)
        # The key's own request, beside 2+ of its batch's lines, is inside its limit of one at a time.
        reply = await client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        done = await finished(client, batch.id, interval=0.25)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 60, 0)


async def test_files_and_batches_are_their_keys_own(upstream, tmp_path):
    models, _fakes = upstream
    async with sdk(models, tmp_path) as (alice, app):
        uploaded = await alice.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 2)), purpose="batch")
        batch = await alice.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        bob = openai.AsyncOpenAI(base_url=str(alice.base_url), api_key=KEYS[1], max_retries=0)
        try:
            for call in (bob.files.retrieve(uploaded.id), bob.files.content(uploaded.id),
                         bob.files.delete(uploaded.id), bob.batches.retrieve(batch.id), bob.batches.cancel(batch.id),
                         bob.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")):
                with pytest.raises(openai.NotFoundError):
                    await call
            assert (await bob.files.list()).data == []
            assert (await bob.batches.list()).data == []
        finally:
            await bob.close()
        assert (await alice.files.retrieve(uploaded.id)).id == uploaded.id
        await finished(alice, batch.id)
        assert (await alice.files.delete(uploaded.id)).deleted


async def test_uploads_are_capped_while_read(upstream, tmp_path):
    models, _fakes = upstream
    async with sdk(models, tmp_path, batch_max_file_bytes=4096, batch_max_key_bytes=6000) as (client, _app):
        with pytest.raises(openai.APIStatusError) as exc:
            await client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        assert exc.value.status_code == 413 and exc.value.code == "file_too_large"
        await client.files.create(file=("a.jsonl", b"x" * 4000), purpose="batch")
        with pytest.raises(openai.APIStatusError) as exc:
            await client.files.create(file=("b.jsonl", b"x" * 4000), purpose="batch")
        assert exc.value.status_code == 413 and exc.value.code == "storage_quota_exceeded"
        assert len((await client.files.list()).data) == 1
    assert [p.name for p in (tmp_path / "files").iterdir()] == [(await _only_file(tmp_path))]


async def _only_file(root: Path) -> str:
    return next(p.name for p in (root / "files").iterdir())


async def test_batch_lines_carry_vllm_priority_to_a_priority_scheduled_server(aiohttp_server, tmp_path):
    fake = FakeBackend()
    port = (await aiohttp_server(fake.app())).port
    models = [{"name": fake.model_id, "model": "some/model", "port": port,
               "extra_args": ["--scheduling-policy", "priority"]}]
    async with sdk(models, tmp_path, batch_priority=7) as (client, app):
        async with aiohttp.ClientSession() as http:
            await wait_until(lambda: _ready(http, str(client.base_url)), 10, "model ready")
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, fake.model_id, 1)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert (await finished(client, batch.id)).status == "completed"
        await client.chat.completions.create(model=fake.model_id, messages=[{"role": "user", "content": "hi"}])
    assert [b.get("priority") for b in fake.received] == [7, None]


async def _ready(http: aiohttp.ClientSession, base: str) -> bool:
    async with http.get(base.removesuffix("/v1/") + "/health") as r:
        return all(m["state"] == "ready" for m in (await r.json())["models"].values())


async def test_the_cli_lists_shows_and_cancels_the_keys_batches(upstream, tmp_path):
    models, fakes = upstream
    fakes["gen"].ttft = 60  # the batch stays in progress until cancelled
    async with sdk(models, tmp_path, batch_parallel=1) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 3)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        env = {**os.environ, "LOCALAI_URL": str(client.base_url).removesuffix("/v1/"), "LOCALAI_API_KEY": KEYS[0]}
        listed = await asyncio.to_thread(localai, "batch", "ls", env=env)
        assert listed.returncode == 0, listed.stderr
        assert batch.id in listed.stdout and "/v1/chat/completions" in listed.stdout and "0/3" in listed.stdout
        cancelled = await asyncio.to_thread(localai, "batch", "cancel", batch.id, env=env)
        assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
        await finished(client, batch.id)
        shown = await asyncio.to_thread(localai, "batch", "show", batch.id, "--json", env=env)
        assert json.loads(shown.stdout)["status"] == "cancelled"
        other = await asyncio.to_thread(localai, "batch", "show", batch.id, env={**env, "LOCALAI_API_KEY": KEYS[1]})
        assert other.returncode != 0 and "No batch found" in other.stderr


async def test_in_share_mode_an_interactive_request_waits_for_the_line_in_flight(upstream, tmp_path):
    """batch_yield share: a line in flight is never stopped; a freed slot goes to the interactive
    request before the lines waiting."""
    models, fakes = upstream
    models = [{**models[0], "max_concurrency": 1}]
    fakes["gen"].ttft = 0.3
    async with sdk(models, tmp_path, batch_parallel=3, batch_max_share=1.0, batch_yield="share") as (client, app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 3)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        slots = app[REGISTRY].backends["gen"].slots
        await wait_until(lambda: fakes["gen"].active == 1 and slots.low_waiting == 2, 10, "one line in, two waiting")
        await client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "interactive"}])
        await finished(client, batch.id)
    prompts = [b["messages"][0]["content"] for b in fakes["gen"].received]
    assert prompts[1] == "interactive" and len(prompts) == 4
    assert fakes["gen"].cancelled == 0


@pytest.mark.parametrize("share", [0.5, 1.0])
async def test_an_interactive_request_stops_the_batch_lines_running_on_its_model(upstream, tmp_path, share):
    """batch_yield idle: the lines in flight are aborted upstream (their connections closed, as vLLM
    learns to stop), the interactive request is served at once, and the lines run again later, each
    answered exactly once, neither as a retry (batch_retries 0) nor as an error in the usage."""
    models, fakes = upstream
    models = [{**models[0], "max_concurrency": 2}]
    fake = fakes["gen"]
    fake.ttft = 60  # the lines in flight hang until stopped
    db = tmp_path / "usage.db"
    async with sdk(models, tmp_path, batch_parallel=2, batch_max_share=share, batch_retries=0,
                   batch_quiet=0.2, usage_db=str(db)) as (client, _app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 6)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        running = max(1, int(2 * share))
        await fake.wait_for(lambda f: f.active == running)
        fake.ttft = 0.0
        answer = await asyncio.wait_for(client.chat.completions.create(
            model="gen", messages=[{"role": "user", "content": "interactive"}]), 5)
        assert answer.choices[0].message.content
        await fake.wait_for(lambda f: f.cancelled == running)
        batch = await finished(client, batch.id)
        lines = await output_lines(client, batch.output_file_id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (6, 0)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"line-{i}" for i in range(6))
    assert all(line["response"]["status_code"] == 200 for line in lines)
    sent = sent_ids(fake)
    assert sent["interactive"] == 1 and sorted(sent.values()).count(2) == running  # the stopped ones, sent again
    totals = read_summary(db, 0)["totals"]
    assert (totals["requests"], totals["errors"]) == (7, 0)


async def test_batch_lines_wait_out_the_quiet_time_after_interactive_traffic(upstream, tmp_path):
    models, fakes = upstream
    fake = fakes["gen"]
    started: list[float] = []

    def reply(body: dict) -> str:  # the fake answers at once: the time a line reached it
        started.append(time.monotonic())
        return "ok"
    fake.reply = reply
    async with sdk(models, tmp_path, batch_quiet=1.0) as (client, _app):
        await client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "interactive"}])
        uploaded = await client.files.create(file=("in.jsonl", jsonl(CHAT, "gen", 3)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        batch = await finished(client, batch.id)
    assert batch.status == "completed"
    # The interactive request ended after it reached the fake: the lines came a second after that at least.
    assert len(started) == 4 and min(started[1:]) >= started[0] + 1.0


async def test_the_runners_header_with_any_other_secret_is_refused(upstream, tmp_path):
    models, fakes = upstream
    async with sdk(models, tmp_path) as (client, _app), aiohttp.ClientSession() as http:
        url = str(client.base_url) + "chat/completions"
        for token in ("guess", ""):
            async with http.post(url, json={"model": "gen", "messages": [{"role": "user", "content": "x"}]},
                                 headers={"X-LocalAI-Batch-Token": token, "X-LocalAI-Batch-Key": "key-1"}) as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
    assert fakes["gen"].received == []


# --- admission's low lane -------------------------------------------------------------


async def test_an_interactive_request_goes_before_waiting_batch_lines():
    slots = ModelSlots("m", 2, WaitingRoom(10, 5.0), low_share=1.0)
    await slots.acquire("a")
    await slots.acquire("a")
    batch_line = asyncio.ensure_future(slots.acquire_low("b"))
    await asyncio.sleep(0)
    interactive = asyncio.ensure_future(slots.acquire("c"))
    await asyncio.sleep(0)
    slots.release("a")
    await interactive  # the freed slot went to the interactive request, though it came later
    assert not batch_line.done()
    slots.release("a")
    await batch_line
    assert (slots.in_flight, slots.low_in_flight) == (2, 1)


async def test_batch_lines_hold_at_most_their_share_of_the_slots():
    slots = ModelSlots("m", 4, WaitingRoom(10, 5.0), low_share=0.5)
    first = await slots.acquire_low("b")
    await slots.acquire_low("b")
    third = asyncio.ensure_future(slots.acquire_low("b"))
    await asyncio.sleep(0)
    assert not third.done() and slots.in_flight == 2
    await slots.acquire("c")  # interactive requests still find the other half free
    await slots.acquire("c")
    assert not first.done()  # share mode: the lines in flight go on
    slots.release_low("b", first)
    await third
    assert slots.low_in_flight == 2


async def test_yielding_lines_are_stopped_and_wait_out_the_quiet_time():
    """yield_idle: an interactive request stops the lines in flight and gets a slot even when they
    hold them all; new lines wait until the model has had no interactive request for `quiet`."""
    slots = ModelSlots("m", 2, WaitingRoom(10, 5.0), low_share=1.0, yield_idle=True, quiet=0.3)
    stops = [await slots.acquire_low("b"), await slots.acquire_low("b")]
    interactive = asyncio.ensure_future(slots.acquire("c"))
    await asyncio.sleep(0)
    assert all(stop.done() for stop in stops) and not interactive.done()
    slots.release_low("b", stops[0])
    await interactive  # the first slot a stopped line gave back
    slots.release_low("b", stops[1])
    line = asyncio.ensure_future(slots.acquire_low("b"))
    await asyncio.sleep(0)
    assert not line.done() and not slots.batch_may_start()  # an interactive request is in flight
    slots.release("c")
    ended = time.monotonic()
    stop = await asyncio.wait_for(line, 5)
    assert time.monotonic() - ended >= 0.3 - 0.01 and slots.batch_may_start() and not stop.done()
