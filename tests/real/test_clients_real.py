"""Real tier for what every client needs: context guard, FIM, embeddings, tools,
structured output, presets — on real vLLM servers through the gateway."""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import openai
import pytest

from tests.conftest import EMBEDDING_MODEL, VLLM_PYTHON

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def client(real_stack):
    # A trailing slash on the base URL, as some IDE settings write it.
    return openai.OpenAI(base_url=real_stack.url + "/v1/", api_key=real_stack.api_key, max_retries=0)


def long_conversation(turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": "You answer in one line."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}: " + "explain the scheduler again. " * 12})
        msgs.append({"role": "assistant", "content": f"Answer {i}: " + "it batches requests by tokens. " * 12})
    msgs.append({"role": "user", "content": "Now summarise."})
    return msgs


def count(real_stack, model: str, messages: list[dict]) -> int:
    r = httpx.post(real_stack.model_url(model) + "/tokenize", json={"model": model, "messages": messages})
    return r.json()["count"]


def conversation_at(real_stack, model: str, tokens: int) -> list[dict]:
    """The shortest long_conversation() of at least *tokens* tokens, as the model counts."""
    base = count(real_stack, model, long_conversation(0))
    per_turn = count(real_stack, model, long_conversation(1)) - base
    turns = max(1, (tokens - base) // per_turn)
    while count(real_stack, model, long_conversation(turns)) < tokens:
        turns += 1
    return long_conversation(turns)


def test_prompt_at_twice_the_limit_is_truncated_with_counts(client, real_stack):
    msgs = conversation_at(real_stack, "coder", 2 * 1536)  # coder: limit 0.75 x 2048 = 1536
    raw = client.chat.completions.with_raw_response.create(model="coder", messages=msgs, max_tokens=8)
    dropped = int(raw.headers["X-LocalAI-Truncated-Messages"])
    reply = raw.parse()
    assert dropped >= 2 and dropped % 2 == 0
    assert reply.usage.prompt_tokens <= 1536  # vLLM's own count of what it was sent
    assert reply.usage.prompt_tokens == count(real_stack, "coder", [msgs[0], *msgs[1 + dropped:]])
    metrics = httpx.get(real_stack.url + "/metrics", headers={"Authorization": f"Bearer {real_stack.api_key}"}).text
    assert 'localai_context_truncations_total{model="coder"}' in metrics


def test_prompt_at_twice_the_limit_is_rejected_under_reject_policy(client, real_stack):
    limit = client.models.retrieve("general").model_dump()["context_limit"]  # 0.75 x 32768
    msgs = conversation_at(real_stack, "general", 2 * limit)
    counted = count(real_stack, "general", msgs)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="general", messages=msgs, max_tokens=8)
    err = info.value.body
    assert err["code"] == "context_length_exceeded"
    # Refused for the window it cannot fit (32768), not for the share chats are shortened toward.
    assert f"your prompt has {counted} tokens" in err["message"] and "maximum context length is 32768" in err["message"]


def test_fim_autocomplete(client):
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    reply = client.completions.create(model="coder", prompt=prefix, suffix=suffix, max_tokens=8)
    assert reply.choices[0].text is not None and reply.usage.completion_tokens > 0
    # The prompt vLLM saw is the Qwen FIM layout: its special tokens are one token each.
    assert reply.usage.prompt_tokens < len(prefix) + len(suffix)
    streamed = list(client.completions.create(model="coder", prompt=prefix, suffix=suffix, max_tokens=6,
                                              stream=True, stream_options={"include_usage": True}))
    assert any(c.choices and c.choices[0].text for c in streamed)
    assert streamed[-1].usage.completion_tokens == 6 or streamed[-1].usage.completion_tokens > 0


def test_fim_on_model_without_it_is_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="general", prompt="a", suffix="b", max_tokens=4)
    assert info.value.body["code"] == "fim_not_supported"


def test_embeddings_match_sentence_transformers(client):
    texts = ["The gateway routes requests to vLLM.", "def add(a, b): return a + b"]
    got = client.embeddings.create(model="minilm", input=texts)
    vectors = [d.embedding for d in got.data]
    assert len(vectors) == 2 and len(vectors[0]) == 384
    # Reference: sentence-transformers itself on the same weights, in the vLLM venv where torch lives.
    script = ("import json,sys; from sentence_transformers import SentenceTransformer; "
              f"m = SentenceTransformer({str(EMBEDDING_MODEL)!r}, device='cpu'); "
              "print(json.dumps(m.encode(json.loads(sys.argv[1]), normalize_embeddings=True).tolist()))")
    ref = json.loads(subprocess.run([str(VLLM_PYTHON), "-c", script, json.dumps(texts)], capture_output=True,
                                    text=True, check=True, timeout=300,
                                    env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}).stdout)
    worst = max(abs(a - b) for v, r in zip(vectors, ref, strict=True) for a, b in zip(v, r, strict=True))
    assert worst < 1e-3, worst


def test_tool_call_with_named_function(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    reply = client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=64, temperature=0)
    # vLLM answered with a call of the function it was told to call: tools and
    # tool_choice reached it unchanged. (The arguments are the random model's own.)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, str)
    auto = client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=tools, max_tokens=8)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tools_on_model_without_tool_calling_is_clear_400(client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="general", messages=[{"role": "user", "content": "x"}], tools=tools)
    assert info.value.body["code"] == "tools_not_supported"
    assert "tool_call_parser" in info.value.body["message"]


def test_structured_output_json_schema(client):
    # A schema with no room for whitespace: the random model can only produce one of these.
    # (Objects let it pad with the whitespace JSON allows until max_tokens runs out.)
    schema = {"type": "string", "enum": ["red", "green", "blue"]}
    reply = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "Pick a colour."}],
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": schema}},
        max_tokens=32, temperature=1.0)
    assert json.loads(reply.choices[0].message.content) in schema["enum"]


def sent_params(client, real_stack, model: str, **kw) -> dict[str, str]:
    """What vLLM was asked for (from its request log), for one request to *model*."""
    rid = "preset-test-" + uuid.uuid4().hex
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                   extra_headers={"X-Request-ID": rid}, **kw)
    return real_stack.sampling_params(rid)


def test_preset_defaults_reach_vllm(client, real_stack):
    # architect = general with temperature 0.1 and top_p 0.95 (the seeds' agent).
    preset = sent_params(client, real_stack, "architect")
    assert (preset["temperature"], preset["top_p"]) == ("0.1", "0.95"), preset
    # The request's own value wins; the preset's other defaults still apply. (Not 0: vLLM
    # resets top_p to 1 for greedy sampling.)
    own = sent_params(client, real_stack, "architect", temperature=0.7)
    assert (own["temperature"], own["top_p"]) == ("0.7", "0.95"), own
    # The model's own name carries no preset: vLLM's defaults.
    plain = sent_params(client, real_stack, "general")
    assert (plain["temperature"], plain["top_p"]) == ("1.0", "1.0"), plain
