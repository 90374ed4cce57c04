"""Real tier: the official `ollama` Python client, unchanged, against `localai up`
with real vLLM servers (list, show, ps, chat, stream, generate, embed)."""

from __future__ import annotations

import re

import httpx
import ollama
import pytest

pytestmark = pytest.mark.real

QUESTION = [{"role": "user", "content": "Write hello world in Python."}]


@pytest.fixture(scope="module")
def client(real_stack):
    # The client's only change for a gateway with keys: the Authorization header
    # (or OLLAMA_API_KEY in the environment).
    return ollama.Client(host=real_stack.url, headers={"Authorization": f"Bearer {real_stack.api_key}"})


def test_list_show_ps(client):
    tags = {m.model: m for m in client.list().models}
    assert {"coder", "general", "minilm", "dev", "architect", "po"} <= set(tags)  # presets listed like models
    assert tags["dev"].details.parent_model == "coder"
    # The tiny models are local folders: their config and weights say what they are.
    assert tags["coder"].details.family == "llama" and tags["coder"].details.quantization_level == "F32"
    assert re.fullmatch(r"\d+(\.\d+)?[KMB]", tags["coder"].details.parameter_size)
    shown = client.show("coder")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.capabilities == ["completion", "tools", "insert"]
    assert client.show("general").capabilities == ["completion"]
    assert client.show("minilm").capabilities == ["embedding"]
    assert "temperature 0.1" in client.show("architect").parameters.splitlines()
    running = {m.model: m.context_length for m in client.ps().models}
    assert running == {"coder": 2048, "general": 32768, "minilm": 256}


@pytest.mark.parametrize("model", ["coder", "general", "python", "chat", "dev", "architect"])
def test_chat(client, model):
    reply = client.chat(model=model, messages=QUESTION, options={"num_predict": 12, "temperature": 0})
    assert reply.message.role == "assistant" and isinstance(reply.message.content, str)
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.model == model
    assert reply.prompt_eval_count > 0 and 0 < reply.eval_count <= 12


def test_chat_stream(client):
    parts = list(client.chat(model="general", messages=[{"role": "user", "content": "Tell a story."}],
                             stream=True, options={"num_predict": 24, "seed": 42}))
    final = parts[-1]
    assert final.done and not any(p.done for p in parts[:-1])
    assert 0 < final.eval_count <= 24 and final.prompt_eval_count > 0
    assert final.eval_duration > 0 and final.total_duration >= final.eval_duration
    pieces = [p.message.content for p in parts[:-1]]
    assert all(isinstance(piece, str) for piece in pieces)
    # Several lines, not one buffered blob. (vLLM itself may put several tokens in one
    # chunk when it runs ahead of its HTTP loop, so not one line per token; the fast
    # tier proves chunk-for-chunk pass-through deterministically.)
    assert len(pieces) >= 2


def test_generate(client):
    reply = client.generate(model="coder", prompt="def fib(n):", system="You write Python.", think=False,
                            options={"num_predict": 10})  # think: chat_template_kwargs.enable_thinking
    assert isinstance(reply.response, str) and reply.done and 0 < reply.eval_count <= 10
    raw = client.generate(model="coder", prompt="<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                          raw=True, options={"num_predict": 6})
    assert raw.done and 0 < raw.eval_count <= 6
    parts = list(client.generate(model="python", prompt="import os\n", stream=True, options={"num_predict": 8}))
    assert parts[-1].done and 0 < parts[-1].eval_count <= 8


def test_sampling_options_reach_vllm(client):
    """temperature 0 is greedy in vLLM: the same prompt gives the same words twice."""
    opts = {"num_predict": 16, "temperature": 0}
    a = client.generate(model="coder", prompt="import sys", options=opts).response
    b = client.generate(model="coder", prompt="import sys", options=opts).response
    assert a == b


def test_fill_in_the_middle_with_suffix(client, real_stack):
    """What Continue's Ollama provider does for autocomplete: prompt + suffix on /api/generate,
    after /api/show said the template has .Suffix."""
    assert ".Suffix" in client.show("coder").template
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))"
    parts = list(client.generate(model="coder", prompt=prefix, suffix=suffix, stream=True,
                                 options={"num_predict": 8, "temperature": 0.01, "stop": ["\n\n"],
                                          "num_ctx": 2048}, keep_alive=1800))
    assert parts[-1].done and 0 < parts[-1].eval_count <= 8
    # vLLM was given the Qwen FIM layout: its own tokenizer counts exactly that prompt.
    fim = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    counted = httpx.post(real_stack.model_url("coder") + "/tokenize", json={"model": "coder", "prompt": fim},
                         timeout=30).json()["count"]
    assert parts[-1].prompt_eval_count == counted
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="general", prompt="def f(", suffix="return x")
    assert info.value.status_code == 400 and "fill-in-the-middle" in info.value.error


def test_tools_need_a_tool_call_parser(client):
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object", "required": ["city"],
                                                            "properties": {"city": {"type": "string"}}}}}
    reply = client.chat(model="coder", messages=QUESTION, tools=[tool], options={"num_predict": 8})
    assert reply.done  # hermes parser configured: vLLM accepts tools with auto choice
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="general", messages=QUESTION, tools=[tool])
    assert info.value.status_code == 400 and "tool_call_parser" in info.value.error


def test_errors(client, real_stack):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="gpt-4o", messages=QUESTION)
    assert info.value.status_code == 404 and "gpt-4o" in info.value.error
    bad = ollama.Client(host=real_stack.url, headers={"Authorization": "Bearer sk-wrong"})
    with pytest.raises(ollama.ResponseError) as info:
        bad.list()
    assert info.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as info:  # vLLM's own 400, in Ollama's shape
        client.chat(model="coder", messages=QUESTION, format={"type": "nonsense"})
    assert info.value.status_code == 400 and "nonsense" in info.value.error


def test_num_predict_beyond_the_window_is_capped(client):
    # vLLM itself refuses max_tokens 5000 on a 2,048-token model; the gateway asks for the room left.
    out = client.chat(model="coder", messages=QUESTION, options={"num_predict": 5000, "temperature": 0})
    assert out.done and 0 < out.eval_count <= 2048 - out.prompt_eval_count


def test_embed(client):
    out = client.embed(model="minilm", input=["hello world", "goodbye"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 384
    assert out.embeddings[0] != out.embeddings[1] and out.prompt_eval_count > 0
    norm = sum(x * x for x in out.embeddings[0]) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-3)  # all-MiniLM-L6-v2 vectors are L2-normalised
    legacy = client.embeddings(model="minilm", prompt="hello world")
    assert list(legacy.embedding) == pytest.approx(list(out.embeddings[0]), abs=1e-5)
    # Ollama truncates over-long input by default (the model takes 256 tokens).
    assert len(client.embed(model="minilm", input="word " * 600).embeddings[0]) == 384
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="minilm", input="word " * 600, truncate=False)
    assert info.value.status_code == 400


def test_gateway_metrics_count_ollama_requests(real_stack, client):
    client.chat(model="coder", messages=QUESTION, options={"num_predict": 2})
    r = httpx.get(real_stack.url + "/metrics", headers={"Authorization": f"Bearer {real_stack.api_key}"})
    assert re.search(r'localai_requests_total\{endpoint="/api/chat",model="coder",status="200"\} [1-9]', r.text)
