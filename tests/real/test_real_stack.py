"""Real tier: `localai up` starts two real vLLM servers (CPU build) on generated tiny
models; everything is driven through the gateway with the official openai client."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import openai
import pytest

from tests.harness import OUTPUT, localai, wait_until_sync

pytestmark = pytest.mark.real

# An answer that would run for two minutes (general has a 32,768-token context), so the
# client's leaving always comes first.
LONG_TOKENS = 30000
LONG = {"max_tokens": LONG_TOKENS, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(real_stack):
    return openai.OpenAI(base_url=real_stack.url + "/v1", api_key=real_stack.api_key, max_retries=0)


def metric(text: str, name: str) -> float:
    """Sum of a vLLM metric's samples (any labels)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_lists_models_with_state_and_context(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"coder", "general", "minilm", "dev", "architect", "po"}
    coder = models["coder"].model_dump()
    assert coder["state"] == "ready" and coder["max_model_len"] == 2048 and coder["context_limit"] == 1536
    assert coder["aliases"] == ["python"] and coder["default"] is True
    assert models["architect"].model_dump()["preset_of"] == "general"


@pytest.mark.parametrize("model", ["coder", "general", "python", "chat", "dev", "architect"])
def test_chat_reaches_the_right_vllm(client, model):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Write hello world in Python."}], max_tokens=16)
    assert reply.choices[0].message.content
    assert reply.model == ("coder" if model in ("coder", "python", "dev") else "general")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16


def test_default_model_when_request_names_none(real_stack):
    r = httpx.post(real_stack.url + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {real_stack.api_key}"},
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"] == "coder"


def test_streamed_chat_arrives_chunk_by_chunk(client):
    arrivals, text = [], []
    stream = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "Tell a story."}], stream=True,
        max_tokens=32, extra_body={"ignore_eos": True})
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    # Several chunks spread over time, not one buffered blob. (vLLM may put several
    # tokens in one chunk under load; the fast tier proves chunk-for-chunk pass-through.)
    assert len(text) >= 2
    assert arrivals[-1] - arrivals[0] > 0
    assert not any(c is None for c in text)


def test_stream_usage_when_asked(client):
    stream = client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=8,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    usage = [c.usage for c in stream if c.usage]
    assert usage and usage[-1].completion_tokens == 8


def test_completions(client):
    reply = client.completions.create(model="coder", prompt="def fib(n):", max_tokens=12)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 12
    # Greedy, so the same text each run: a sampled one may fall on byte tokens that vLLM holds
    # back until a character is whole, leaving fewer events with text than tokens.
    streamed = list(client.completions.create(model="python", prompt="import os\n", max_tokens=16, temperature=0,
                                              stream=True))
    assert len([c for c in streamed if c.choices and c.choices[0].text]) >= 3


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"


def test_wrong_key_is_401(real_stack):
    bad = openai.OpenAI(base_url=real_stack.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.body["code"] == "invalid_api_key"


def _wait_idle(real_stack, model: str, timeout: float = 30) -> None:
    """Wait until vLLM reports no running request (polling its own /metrics).

    The default leaves a loaded machine time to pass the hang-up on, and is still far
    short of the two minutes a LONG answer runs when nobody cancels it."""
    wait_until_sync(lambda: metric(real_stack.vllm_metrics(model), "vllm:num_requests_running") == 0, timeout,
                    "vLLM idle after the client left", interval=0.1)


def _tokens(real_stack, model: str) -> float:
    return metric(real_stack.vllm_metrics(model), "vllm:generation_tokens_total")


def test_disconnect_cancels_streaming_generation(client, real_stack):
    before = _tokens(real_stack, "general")
    stream = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "go"}], stream=True, **LONG)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()  # the client hangs up after a few tokens
    _wait_idle(real_stack, "general")
    generated = _tokens(real_stack, "general") - before
    assert generated < LONG_TOKENS, f"vLLM generated all {generated} tokens for a client that left after 5"


def test_disconnect_cancels_non_streaming_generation(real_stack):
    before = _tokens(real_stack, "general")
    started = []

    def watch():
        started.append(wait_until_sync(
            lambda: metric(real_stack.vllm_metrics("general"), "vllm:num_requests_running") >= 1, 30,
            "vLLM generating for the request"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while vLLM is generating
        httpx.post(real_stack.url + "/v1/chat/completions", timeout=httpx.Timeout(60, read=2.0),
                   headers={"Authorization": f"Bearer {real_stack.api_key}"},
                   json={"model": "general", "messages": [{"role": "user", "content": "go"}],
                         "max_tokens": LONG_TOKENS, "ignore_eos": True})
    watcher.join()
    assert started == [True]
    _wait_idle(real_stack, "general")
    generated = _tokens(real_stack, "general") - before
    assert generated < LONG_TOKENS, f"vLLM generated all {generated} tokens for a client that left"


def test_gateway_metrics_count_real_tokens(client, real_stack):
    reply = client.chat.completions.create(model="coder", messages=[{"role": "user", "content": "count"}],
                                           max_tokens=4, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 4
    r = httpx.get(real_stack.url + "/metrics", headers={"Authorization": f"Bearer {real_stack.api_key}"})
    assert r.status_code == 200
    counted = re.search(r'localai_completion_tokens_total\{model="coder"\} ([0-9.]+)', r.text)
    assert counted and float(counted.group(1)) >= 4, r.text
    assert 'localai_backend_ready{model="general"} 1.0' in r.text


def test_crashed_backend_is_restarted_and_routed_again(client, real_stack):
    real_stack.kill_backend("general")
    real_stack.until(lambda states: states["general"]["state"] != "ready", 30, "the gateway noticing the crash",
                     interval=0.2)
    state = real_stack.health()["general"]
    assert state["state"] in ("failed", "loading") and state["reason"]
    # The other model serves on while this one is down.
    assert client.chat.completions.create(model="coder", messages=[{"role": "user", "content": "x"}],
                                          max_tokens=2).choices
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="general", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    real_stack.wait_ready("general")
    reply = client.chat.completions.create(model="general", messages=[{"role": "user", "content": "x"}],
                                           max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_localai_usage_totals_equal_the_usage_vllm_reported(client, real_stack):
    """Issue #20: what `localai usage` reads from the database is what vLLM reported, request by request."""
    def totals() -> dict:
        result = localai("usage", "--db", str(real_stack.usage_db), "--since", "1d", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["totals"]

    before = totals()
    seen = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def add(usage) -> None:
        seen["requests"] += 1
        seen["prompt_tokens"] += usage.prompt_tokens
        seen["completion_tokens"] += usage.completion_tokens

    for model in ("coder", "general"):
        add(client.chat.completions.create(model=model, max_tokens=8,
                                           messages=[{"role": "user", "content": "Count to three."}]).usage)
    add(client.completions.create(model="coder", prompt="def add(a, b):", max_tokens=8).usage)
    stream = client.chat.completions.create(model="coder", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Say hi."}])
    add([chunk for chunk in stream][-1].usage)

    def caught_up():  # the store writes in batches, a fraction of a second behind
        now = totals()
        return now if now["requests"] - before["requests"] >= seen["requests"] else None
    after = wait_until_sync(caught_up, 30, "the usage written to the database")
    assert {k: after[k] - before[k] for k in seen} == seen
    assert after["gpu_seconds"] > before["gpu_seconds"]
    table = localai("usage", "--db", str(real_stack.usage_db), "--since", "1d", "--by", "model")
    assert table.returncode == 0 and "coder" in table.stdout
    (OUTPUT / "usage-real-tier.txt").write_text(
        table.stdout + "\n" + localai("usage", "--db", str(real_stack.usage_db), "--since", "1d").stdout)


@pytest.mark.parametrize(("endpoint", "model"), [("/v1/chat/completions", "coder"), ("/v1/embeddings", "minilm")])
def test_the_sdk_batch_flow_on_real_vllm(client, endpoint, model):
    """Issue #21: files.create, batches.create, batches.retrieve until completed, files.content."""
    def body(i: int) -> dict:
        if endpoint == "/v1/embeddings":
            return {"model": model, "input": f"document number {i}"}
        return {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": f"Say {i}."}]}
    lines = "".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body(i)}) + "\n"
                    for i in range(3))
    uploaded = client.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")

    def finished():
        now = client.batches.retrieve(batch.id)
        return now if now.status in ("completed", "failed", "cancelled", "expired") else None
    done = wait_until_sync(finished, 120, f"batch on {model} finished", interval=0.5)
    assert done.status == "completed" and done.request_counts.completed == 3, done
    answers = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["req-0", "req-1", "req-2"]
    for a in answers:
        assert a["response"]["status_code"] == 200
        data = a["response"]["body"]
        assert data["data"][0]["embedding"] if endpoint == "/v1/embeddings" else data["choices"][0]["message"]
