"""The Ollama API against fake backends: the official `ollama` client and the raw
requests Continue's Ollama provider sends, through the same path as /v1."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import ollama
import pytest
from aiohttp import web

from tests.fakebackend import EmbedFake, FakeBackend

HI = [{"role": "user", "content": "hi"}]


def client(s, key: str | None = None) -> ollama.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return ollama.AsyncClient(host=s.url, headers=headers)


async def ndjson(resp: aiohttp.ClientResponse) -> list[dict]:
    text = await resp.text()
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert all(line.strip() for line in lines), "blank lines break Ollama clients"
    return [json.loads(line) for line in lines]


def assert_ollama_error(body: dict, *needles: str) -> None:
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for needle in needles:
        assert needle in body["error"], (needle, body["error"])


class ToolFake(FakeBackend):
    """Answers with a tool call (arguments streamed in pieces, as vLLM's parsers do)."""

    async def _generate(self, request: web.Request):
        body = await request.json()
        self.received.append(body)
        calls = [{"id": "chatcmpl-tool-1", "type": "function",
                  "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "chat.completion", "model": self.model_id, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                 "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pieces = [
            {"tool_calls": [{"index": 0, "id": "chatcmpl-tool-1", "type": "function",
                             "function": {"name": "get_weather", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
        ]
        for i, delta in enumerate(pieces):
            chunk = {"id": "x", "object": "chat.completion.chunk", "model": self.model_id,
                     "choices": [{"index": 0, "delta": delta,
                                  "finish_reason": "tool_calls" if i == len(pieces) - 1 else None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {"id": "x", "object": "chat.completion.chunk", "model": self.model_id, "choices": [],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp


# --- listing -----------------------------------------------------------------------------


async def test_tags_lists_models_and_presets(stack):
    s = await stack({
        "coder": (FakeBackend("Qwen/coder"), {"presets": {"architect": {"temperature": 0.7},
                                                          "dev": {"temperature": 0.1, "max_tokens": 512}}}),
        "general": FakeBackend("general-id"),
    })
    listed = await client(s).list()
    names = [m.model for m in listed.models]
    assert names == ["coder", "general", "architect", "dev"]
    by_name = {m.model: m for m in listed.models}
    assert by_name["architect"].details.parent_model == "coder"
    assert by_name["coder"].details.parent_model == ""
    # External fakes: nothing on disk to read, so said plainly.
    assert by_name["general"].details.family == "unknown"
    assert by_name["general"].details.parameter_size == "unknown"
    async with s.http.get(s.url + "/api/tags") as r:
        raw = (await r.json())["models"]
    assert all(m["name"] == m["model"] for m in raw)
    assert len({m["digest"] for m in raw}) == 4


async def test_tags_reads_family_and_size_of_local_weights(stack, tmp_path):
    """A managed model's folder: architecture from config.json, parameter count from the safetensors header."""
    import struct

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    header = json.dumps({"a": {"dtype": "BF16", "shape": [1000, 500], "data_offsets": [0, 1_000_000]},
                         "b": {"dtype": "BF16", "shape": [250], "data_offsets": [1_000_000, 1_000_500]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1_000_500)
    s = await stack({"m": FakeBackend(),
                     "local": {"model": str(folder), "port": 1, "max_model_len": 1024, "fim": "qwen"}},
                    wait=False)
    await s.ready("m")
    tags = {m["name"]: m for m in (await (await s.http.get(s.url + "/api/tags")).json())["models"]}
    details = tags["local"]["details"]
    assert details["family"] == "qwen2" and details["parameter_size"] == "500.25K"
    assert details["quantization_level"] == "BF16" and details["format"] == "safetensors"
    assert tags["local"]["size"] == (folder / "model.safetensors").stat().st_size
    shown = await client(s).show("local")
    assert shown.modelinfo["general.architecture"] == "qwen2"
    assert shown.modelinfo["qwen2.context_length"] == 1024
    assert shown.modelinfo["general.parameter_count"] == 500_250
    assert shown.capabilities == ["completion", "insert"]


async def test_ps_lists_only_ready_models_with_context_length(stack):
    s = await stack({"ready": FakeBackend("r", max_model_len=8192), "loading": FakeBackend("l", health_status=503)},
                    wait=False)
    await s.ready("ready")
    running = await client(s).ps()
    assert [(m.model, m.context_length) for m in running.models] == [("ready", 8192)]
    assert running.models[0].expires_at.year == 9999


async def test_show_context_length_capabilities_template_and_parameters(stack):
    s = await stack({
        "coder": (FakeBackend("c", max_model_len=4096),
                  {"fim": "qwen", "presets": {"architect": {"temperature": 0.7, "max_tokens": 300,
                                                             "stop": ["###"]}}}),
        "plain": (FakeBackend("p"), {"tools": False}),
        "emb": (EmbedFake("e"), {"task": "embed"}),
    })
    c = client(s)
    shown = await c.show("coder")
    assert shown.modelinfo["general.architecture"] == "unknown"
    assert shown.modelinfo["unknown.context_length"] == 4096
    assert shown.capabilities == ["completion", "tools", "insert"]
    assert ".Suffix" in shown.template and "<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}" in shown.template
    assert shown.parameters == "num_ctx 4096"
    preset = await c.show("architect")
    assert preset.parameters.splitlines() == ["num_ctx 4096", "temperature 0.7", "num_predict 300", 'stop "###"']
    assert preset.details.parent_model == "coder"
    plain = await c.show("plain")
    assert plain.capabilities == ["completion"] and ".Suffix" not in plain.template
    assert (await c.show("emb")).capabilities == ["embedding"]
    # Continue's Ollama provider asks with {"name": ...}.
    async with s.http.post(s.url + "/api/show", json={"name": "coder"}) as r:
        assert r.status == 200 and ".Suffix" in (await r.json())["template"]
    with pytest.raises(ollama.ResponseError) as info:
        await c.show("gpt-9")
    assert info.value.status_code == 404 and "gpt-9" in info.value.error


async def test_version(stack):
    s = await stack({"m": FakeBackend()})
    async with s.http.get(s.url + "/api/version") as r:
        version = (await r.json())["version"]
    major, minor, _ = (int(x) for x in version.split("."))
    assert (major, minor) >= (0, 5)


# --- chat ---------------------------------------------------------------------------------


async def test_chat_non_streaming_with_the_ollama_client(stack):
    fake = FakeBackend("served-id", chunks=3)
    s = await stack({"m": fake})
    reply = await client(s).chat(model="m", messages=HI)
    assert reply.message.role == "assistant" and reply.message.content == "tok0 tok1 tok2 "
    assert reply.done is True and reply.done_reason == "length"
    assert reply.model == "m" and reply.prompt_eval_count == 7 and reply.eval_count == 3
    assert reply.total_duration > 0
    sent = fake.received[-1]
    assert sent["model"] == "served-id" and sent["stream"] is False
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert "tools" not in sent  # the client sends tools: [] always; an empty list is dropped


async def test_chat_streams_ndjson_chunk_by_chunk(stack):
    fake = FakeBackend(chunks=3, gate=asyncio.Event())
    s = await stack({"m": fake})
    # No "stream" key: Ollama streams by default.
    async with s.http.post(s.url + "/api/chat", json={"model": "m", "messages": HI}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
        lines, buf = [], b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(json.loads(line))
                fake.gate.set()  # the next token only after we saw this one: no buffering
    assert [line["message"]["content"] for line in lines[:-1]] == ["tok0 ", "tok1 ", "tok2 "]
    assert all(line["done"] is False and line["model"] == "m" for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["prompt_eval_count"] == 7 and final["eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0, key
    assert final["total_duration"] >= final["eval_duration"]


async def test_chat_stream_with_the_ollama_client(stack):
    s = await stack({"m": FakeBackend(chunks=4)})
    parts = [p async for p in await client(s).chat(model="m", messages=HI, stream=True)]
    assert "".join(p.message.content for p in parts) == "tok0 tok1 tok2 tok3 "
    assert parts[-1].done and parts[-1].eval_count == 4
    assert not any(p.done for p in parts[:-1])


async def test_options_format_and_keep_alive_map_to_sampling_fields(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    options = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "num_predict": 64, "stop": ["\n\n"],
               "seed": 7, "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25,
               # llama.cpp knobs: accepted, ignored
               "num_ctx": 8192, "num_gpu": 99, "num_thread": 8, "mirostat": 0, "use_mmap": True}
    await client(s).chat(model="m", messages=HI, options=options, format="json", keep_alive="10m")
    sent = fake.received[-1]
    expected = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "max_tokens": 64, "stop": ["\n\n"],
                "seed": 7, "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25,
                "response_format": {"type": "json_object"}}
    assert {k: sent[k] for k in expected} == expected
    for ignored in ("num_ctx", "num_gpu", "num_thread", "mirostat", "use_mmap", "keep_alive", "options", "format"):
        assert ignored not in sent, ignored
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    await client(s).chat(model="m", messages=HI, format=schema, options={"num_predict": -1})
    sent = fake.received[-1]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    assert "max_tokens" not in sent  # -1: until done


async def test_presets_and_latest_tag(stack):
    fake = FakeBackend()
    s = await stack({"coder": (fake, {"presets": {"architect": {"temperature": 0.7, "max_tokens": 300}}})})
    await client(s).chat(model="architect", messages=HI)
    assert fake.received[-1]["temperature"] == 0.7 and fake.received[-1]["max_tokens"] == 300
    await client(s).chat(model="architect:latest", messages=HI, options={"temperature": 0.1})
    assert fake.received[-1]["temperature"] == 0.1  # the request's own option wins over the preset
    reply = await client(s).chat(model="coder:latest", messages=HI)
    assert reply.model == "coder:latest"


async def test_tool_calls_both_ways(stack):
    fake = ToolFake("t")
    s = await stack({"m": fake})

    def get_weather(city: str) -> str:
        """Weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    history = HI + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                           "arguments": {"city": "Bergen"}}}]},
        {"role": "tool", "content": "rain", "tool_name": "get_weather"},
        {"role": "user", "content": "and Oslo?"},
    ]
    reply = await client(s).chat(model="m", messages=history, tools=[get_weather])
    assert reply.message.tool_calls[0].function.name == "get_weather"
    assert reply.message.tool_calls[0].function.arguments == {"city": "Oslo"}
    assert reply.done_reason == "stop"
    sent = fake.received[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    call = sent["messages"][1]["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {"city": "Bergen"}
    assert sent["messages"][2] == {"role": "tool", "content": "rain", "tool_call_id": call["id"]}
    # Streamed: the pieces are put together into one tool call, as Ollama sends them.
    parts = [p async for p in await client(s).chat(model="m", messages=HI, tools=[get_weather], stream=True)]
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.arguments == {"city": "Oslo"}
    assert parts[-1].done and parts[-1].eval_count == 9


async def test_tools_on_a_model_without_tool_calling_is_400(stack):
    s = await stack({"m": (FakeBackend(), {"tools": False})})
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(ollama.ResponseError) as info:
        await client(s).chat(model="m", messages=HI, tools=[tool])
    assert info.value.status_code == 400 and "tool" in info.value.error


# --- generate ----------------------------------------------------------------------------------


async def test_generate_uses_the_chat_template_with_system(stack):
    fake = FakeBackend(chunks=2)
    s = await stack({"m": fake})
    reply = await client(s).generate(model="m", prompt="Why is the sky blue?", system="Be brief.")
    assert reply.response == "tok0 tok1 " and reply.done and reply.eval_count == 2
    assert fake.received[-1]["messages"] == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Why is the sky blue?"}]
    parts = [p async for p in await client(s).generate(model="m", prompt="go", stream=True)]
    assert "".join(p.response for p in parts) == "tok0 tok1 " and parts[-1].done


async def test_generate_raw_goes_to_completions(stack):
    fake = FakeBackend(chunks=2)
    s = await stack({"m": fake})
    reply = await client(s).generate(model="m", prompt="<|im_start|>user\nhi", raw=True, options={"num_predict": 5})
    assert reply.response == "tok0 tok1 "
    sent = fake.received[-1]
    assert sent["prompt"] == "<|im_start|>user\nhi" and "messages" not in sent and sent["max_tokens"] == 5
    parts = [p async for p in await client(s).generate(model="m", prompt="x", raw=True, stream=True)]
    assert [p.response for p in parts[:-1]] == ["tok0 ", "tok1 "]


async def test_generate_suffix_is_fill_in_the_middle(stack):
    fake = FakeBackend(chunks=2)
    s = await stack({"coder": (fake, {"fim": "qwen"}), "plain": FakeBackend("p")})
    reply = await client(s).generate(model="coder", prompt="def add(a, b):\n", suffix="\nprint(add(1, 2))")
    assert reply.response == "tok0 tok1 "
    assert fake.received[-1]["prompt"] == \
        "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\nprint(add(1, 2))<|fim_middle|>"
    assert "suffix" not in fake.received[-1]
    # Cursor at the end of the file: an empty suffix is still FIM.
    await client(s).generate(model="coder", prompt="x = ", suffix="")
    assert fake.received[-1]["prompt"] == "<|fim_prefix|>x = <|fim_suffix|><|fim_middle|>"
    with pytest.raises(ollama.ResponseError) as info:
        await client(s).generate(model="plain", prompt="x", suffix="y")
    assert info.value.status_code == 400 and "fill-in-the-middle" in info.value.error


async def test_continue_ollama_provider_autocomplete(stack):
    """Exactly what Continue's Ollama provider sends for autocomplete: /api/show with
    "name" (FIM if the template mentions .Suffix), then a streamed /api/generate."""
    fake = FakeBackend(chunks=3)
    s = await stack({"coder": (fake, {"fim": "qwen"})}, api_keys=["sk-team"])
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-team"}
    async with s.http.post(s.url + "/api/show", data=json.dumps({"name": "coder"}), headers=headers) as r:
        shown = await r.json()
    assert ".Suffix" in shown["template"]
    assert [line for line in shown["parameters"].split("\n") if line.startswith("num_ctx")] == ["num_ctx 4096"]
    request = {"model": "coder", "prompt": "def fib(n):\n    ", "suffix": "\n\nprint(fib(10))",
               "options": {"temperature": 0.01, "num_predict": 256, "stop": ["\n\n", "<|endoftext|>"],
                           "num_ctx": 4096},
               "keep_alive": 1800, "stream": True}
    async with s.http.post(s.url + "/api/generate", data=json.dumps(request), headers=headers) as r:
        assert r.status == 200
        lines = await ndjson(r)
    assert "".join(line["response"] for line in lines) == "tok0 tok1 tok2 "
    assert lines[-1]["done"] is True
    sent = fake.received[-1]
    assert sent["prompt"] == "<|fim_prefix|>def fib(n):\n    <|fim_suffix|>\n\nprint(fib(10))<|fim_middle|>"
    assert sent["max_tokens"] == 256 and sent["stop"] == ["\n\n", "<|endoftext|>"] and sent["temperature"] == 0.01


async def test_empty_prompt_loads_the_model(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    loaded = await client(s).generate(model="m:latest")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert loaded.model == "m:latest"
    async with s.http.post(s.url + "/api/chat", json={"model": "m", "messages": [], "keep_alive": 0}) as r:
        body = await r.json()
    assert body["done"] and body["done_reason"] == "unload" and body["message"]["content"] == ""
    assert fake.received == []
    with pytest.raises(ollama.ResponseError) as info:
        await client(s).generate(model="nope")
    assert info.value.status_code == 404


# --- embeddings -------------------------------------------------------------------------------------


async def test_embed_and_legacy_embeddings(stack):
    emb = EmbedFake("minilm")
    s = await stack({"chat": FakeBackend("c"), "emb": (emb, {"task": "embed"})})
    c = client(s)
    out = await c.embed(model="emb", input=["a", "bcd"])
    assert [list(v) for v in out.embeddings] == [[0.0, 1.0, 0.5], [1.0, 3.0, 0.5]]  # in input order
    assert out.prompt_eval_count == 6
    assert emb.received[-1]["input"] == ["a", "bcd"] and emb.received[-1]["model"] == "minilm"
    single = await c.embed(model="emb", input="hello")
    assert len(single.embeddings) == 1
    legacy = await c.embeddings(model="emb", prompt="hello")
    assert list(legacy.embedding) == [0.0, 5.0, 0.5]
    with pytest.raises(ollama.ResponseError) as info:
        await c.embed(model="chat", input="x")
    assert info.value.status_code == 400 and "not an embedding model" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        await c.chat(model="emb", messages=HI)
    assert info.value.status_code == 400 and "embedding model" in info.value.error


# --- errors, auth, and the shared path ---------------------------------------------------------------


@pytest.mark.parametrize("path, kwargs, status, needle", [
    ("/api/chat", {"json": {"model": "gpt-9", "messages": HI}}, 404, "gpt-9"),
    ("/api/chat", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("/api/chat", {"json": {"model": "m", "messages": "hi"}}, 400, "messages"),
    ("/api/chat", {"json": {"model": "m", "messages": HI, "stream": "yes"}}, 400, "stream"),
    ("/api/chat", {"json": {"model": "m", "messages": HI, "options": [1]}}, 400, "options"),
    ("/api/chat", {"json": {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}},
     400, "Images"),
    ("/api/generate", {"json": {"model": "m", "prompt": "x", "images": ["aGk="]}}, 400, "Images"),
    ("/api/generate", {"json": {"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}}, 400, "template"),
    ("/api/generate", {"json": {"model": "m", "prompt": "x", "format": 3}}, 400, "format"),
    ("/api/pull", {"json": {"model": "llama3"}}, 404, "does not exist"),
    ("/api/push", {"json": {"model": "m"}}, 400, "localai config"),
    ("/api/nothing", {"json": {}}, 404, "/api/nothing"),
])
async def test_errors_are_ollama_shaped(stack, path, kwargs, status, needle):
    fake = FakeBackend()
    s = await stack({"m": fake})
    async with s.http.post(s.url + path, **kwargs) as r:
        assert r.status == status
        assert_ollama_error(await r.json(), needle)
    assert fake.received == []


async def test_curl_without_content_type_works(stack):
    """Ollama's own docs use `curl -d '{...}'`, which sends a form Content-Type."""
    s = await stack({"m": FakeBackend(chunks=1)})
    body = json.dumps({"model": "m", "prompt": "hi", "stream": False})
    async with s.http.post(s.url + "/api/generate", data=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 200 and (await r.json())["response"] == "tok0 "


async def test_loading_model_is_503_with_retry_after(stack):
    s = await stack({"a": FakeBackend("a"), "b": FakeBackend("b", health_status=503)}, wait=False)
    await s.ready("a")
    async with s.http.post(s.url + "/api/chat", json={"model": "b", "messages": HI}) as r:
        assert r.status == 503 and r.headers["Retry-After"]
        assert_ollama_error(await r.json(), "still loading")


def test_backend_errors_become_ollama_shaped():
    from gateway.http.families.ollama.common import ollama_error
    for body in (b'{"error":{"message":"max_tokens=5000 cannot be greater","type":"BadRequestError","code":400}}',
                 b'{"object":"error","message":"max_tokens=5000 cannot be greater","code":400}'):
        out = ollama_error(web.Response(status=400, body=body, content_type="application/json"))
        assert out.status == 400 and json.loads(out.body) == {"error": "max_tokens=5000 cannot be greater"}


async def test_auth(stack, monkeypatch):
    s = await stack({"m": FakeBackend()}, api_keys=["sk-right"])
    for path in ("/api/tags", "/api/ps", "/api/version"):
        async with s.http.get(s.url + path) as r:
            assert r.status == 401
            assert_ollama_error(await r.json(), "API key")
    with pytest.raises(ollama.ResponseError) as info:
        await client(s, "sk-wrong").chat(model="m", messages=HI)
    assert info.value.status_code == 401
    assert (await client(s, "sk-right").chat(model="m", messages=HI)).done
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-right")  # the client's own way to send a key
    assert [m.model for m in (await ollama.AsyncClient(host=s.url).list()).models] == ["m"]
    logs = json.dumps(s.log_lines())
    assert "sk-right" not in logs and "sk-wrong" not in logs


async def test_logs_metrics_and_request_id_like_v1(stack):
    s = await stack({"m": FakeBackend(chunks=3)})
    async with s.http.post(s.url + "/api/chat", json={"model": "m", "messages": HI},
                           headers={"X-Request-ID": "olla-1"}) as r:
        await r.read()
    async with s.http.post(s.url + "/api/generate", json={"model": "m", "prompt": "x", "stream": False},
                           headers={"X-Request-ID": "olla-2"}) as r:
        assert r.headers["X-Request-ID"] == "olla-2"
    assert s.fakes["m"].headers[-1]["X-Request-Id"] == "olla-2"  # forwarded to the backend
    access = [line for line in s.log_lines() if line.get("request_id") == "olla-1"][-1]
    assert access["path"] == "/api/chat" and access["model"] == "m" and access["status"] == 200
    assert access["prompt_tokens"] == 7 and access["completion_tokens"] == 3 and access["ttft_ms"] >= 0
    text = s.metrics_text()
    for needle in ('localai_requests_total{endpoint="/api/chat",model="m",status="200"} 1.0',
                   'localai_requests_total{endpoint="/api/generate",model="m",status="200"} 1.0',
                   'localai_completion_tokens_total{model="m"} 6.0',
                   'localai_time_to_first_token_seconds_count{model="m"} 1.0',
                   'localai_queue_wait_seconds_count{model="m"} 2.0'):
        assert needle in text, needle


async def test_admission_queue_applies(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, max_queue=0)
    first = asyncio.create_task(s.http.post(s.url + "/api/chat", json={"model": "m", "messages": HI}))
    await fake.wait_for(lambda f: f.active == 1)
    async with s.http.post(s.url + "/api/chat", json={"model": "m", "messages": HI}) as r:
        assert r.status == 429 and r.headers["Retry-After"]
        assert_ollama_error(await r.json(), "waiting")
    assert 'localai_rejections_total{model="m",reason="queue_full"} 1.0' in s.metrics_text()
    fake.gate.set()
    (await first).close()


async def test_context_guard_applies(stack):
    fake = FakeBackend(max_model_len=100)
    s = await stack({"m": (fake, {"context_policy": "reject"})})
    long = " ".join(["word"] * 200)
    with pytest.raises(ollama.ResponseError) as info:
        await client(s).chat(model="m", messages=[{"role": "user", "content": long}])
    assert info.value.status_code == 400 and "maximum context length is 100 tokens" in info.value.error
    assert fake.received == []


async def test_client_leaving_an_ndjson_stream_cancels_generation(stack):
    fake = FakeBackend(chunks=1000, itl=0.01)
    s = await stack({"m": fake})
    session = aiohttp.ClientSession()
    resp = await session.post(s.url + "/api/chat", json={"model": "m", "messages": HI})
    await resp.content.readline()
    resp.close()
    await session.close()
    started = time.monotonic()
    await fake.wait_for(lambda f: f.active == 0 and f.cancelled == 1, timeout=3)
    assert fake.completed == 0 and time.monotonic() - started < 3


async def test_v1_errors_stay_openai_shaped(stack):
    s = await stack({"m": FakeBackend()})
    async with s.http.post(s.url + "/v1/chat/completions", json={"model": "gpt-9", "messages": HI}) as r:
        body = await r.json()
    assert r.status == 404 and body["error"]["code"] == "model_not_found"
