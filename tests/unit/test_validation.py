"""Wrong field values get the gateway's own clear 400, in the shape of the API asked,
and never reach a backend (issue 10, point 4)."""

from __future__ import annotations

import pytest

from tests.fakebackend import EmbedFake, FakeBackend

HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

# (endpoint, body, the param the error names)
OPENAI_WRONG = [
    (CHAT, {"messages": [{}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    (CHAT, {"messages": HI + [{"role": "user", "content": 5}]}, "messages[1].content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0].type"),
    (CHAT, {"messages": [{"role": "user", "content": ["bare string"]}]}, "messages[0].content[0]"),
    (CHAT, {"messages": ["hi"]}, "messages[0]"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {}, "messages"),
    (CHAT, {"messages": HI, "max_tokens": "x"}, "max_tokens"),
    (CHAT, {"messages": HI, "max_tokens": 1e20}, "max_tokens"),
    (CHAT, {"messages": HI, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": HI, "max_tokens": -1}, "max_tokens"),
    (CHAT, {"messages": HI, "max_tokens": True}, "max_tokens"),
    (CHAT, {"messages": HI, "max_completion_tokens": 2.5}, "max_completion_tokens"),
    (CHAT, {"messages": HI, "temperature": "hot"}, "temperature"),
    (CHAT, {"messages": HI, "temperature": -0.1}, "temperature"),
    (CHAT, {"messages": HI, "temperature": 2.5}, "temperature"),
    (CHAT, {"messages": HI, "top_p": 0}, "top_p"),
    (CHAT, {"messages": HI, "top_p": 1.5}, "top_p"),
    (CHAT, {"messages": HI, "frequency_penalty": 3}, "frequency_penalty"),
    (CHAT, {"messages": HI, "presence_penalty": "none"}, "presence_penalty"),
    (CHAT, {"messages": HI, "n": 100000}, "n"),
    (CHAT, {"messages": HI, "n": 0}, "n"),
    (CHAT, {"messages": HI, "n": "2"}, "n"),
    (CHAT, {"messages": HI, "stream": "yes"}, "stream"),
    (CHAT, {"messages": HI, "stream_options": []}, "stream_options"),
    (CHAT, {"messages": HI, "tools": "x"}, "tools"),
    (CHAT, {"messages": HI, "tools": ["x"]}, "tools[0]"),
    (CHAT, {"messages": HI, "stop": 5}, "stop"),
    (CHAT, {"messages": HI, "stop": ["a", 1]}, "stop"),
    (CHAT, {"messages": HI, "seed": 1.5}, "seed"),
    (CHAT, {"messages": HI, "top_k": -2}, "top_k"),
    (CHAT, {"messages": HI, "logprobs": 3}, "logprobs"),
    (CHAT, {"messages": HI, "response_format": "json"}, "response_format"),
    (COMPLETIONS, {"prompt": [None]}, "prompt"),
    (COMPLETIONS, {"prompt": []}, "prompt"),
    (COMPLETIONS, {"prompt": {"text": "x"}}, "prompt"),
    (COMPLETIONS, {"prompt": [1, "a"]}, "prompt"),
    (COMPLETIONS, {"prompt": [[1, 2], [None]]}, "prompt"),
    (COMPLETIONS, {"prompt": [[]]}, "prompt"),
    (COMPLETIONS, {}, "prompt"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "suffix": 3}, "suffix"),
    (COMPLETIONS, {"prompt": "x", "echo": "no"}, "echo"),
    (EMBEDDINGS, {"model": "emb", "input": [None]}, "input"),
    (EMBEDDINGS, {"model": "emb", "input": 7}, "input"),
    (EMBEDDINGS, {"model": "emb"}, "input"),
    (EMBEDDINGS, {"model": "emb", "input": "x", "dimensions": 0}, "dimensions"),
    (EMBEDDINGS, {"model": "emb", "input": "x", "encoding_format": "hex"}, "encoding_format"),
]


@pytest.mark.parametrize("endpoint, body, param", OPENAI_WRONG)
async def test_wrong_openai_fields_are_400_naming_the_field(stack, endpoint, body, param):
    chat, emb = FakeBackend(), EmbedFake("e")
    s = await stack({"m": chat, "emb": (emb, {"task": "embed"})})
    async with s.http.post(s.url + endpoint, json=body) as r:
        assert r.status == 400
        err = (await r.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and f"'{param}'" in err["message"], err
    assert err["code"] in ("invalid_type", "invalid_value")
    assert chat.received == [] and emb.received == []


async def test_max_tokens_beyond_the_context_is_capped_as_vllm_does(stack):
    fake = FakeBackend(max_model_len=4096)
    s = await stack({"m": fake})
    async with s.http.post(s.url + CHAT, json={"messages": HI, "max_tokens": 5000}) as r:
        assert r.status == 200
        assert int(r.headers["X-LocalAI-Max-Tokens-Capped"]) == 4096 - fake.last_count
    assert fake.received[-1]["max_tokens"] == 4096 - fake.last_count
    # Ollama's num_predict arrives as max_tokens: the same cap.
    async with s.http.post(s.url + "/api/chat", json={"model": "m", "messages": HI, "stream": False,
                                                      "options": {"num_predict": 5000}}) as r:
        assert r.status == 200 and int(r.headers["X-LocalAI-Max-Tokens-Capped"]) == 4096 - fake.last_count
    assert fake.received[-1]["max_tokens"] == 4096 - fake.last_count
    async with s.http.post(s.url + CHAT, json={"messages": HI, "max_tokens": 100}) as r:
        assert r.status == 200 and "X-LocalAI-Max-Tokens-Capped" not in r.headers
    assert fake.received[-1]["max_tokens"] == 100


async def test_right_values_pass_through_untouched(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    body = {"messages": [{"role": "developer", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                         {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
                         {"role": "tool", "content": "42", "tool_call_id": "c"}],
            "max_tokens": 5, "max_completion_tokens": 5, "temperature": 0, "top_p": 1, "n": 1,
            "frequency_penalty": -2, "presence_penalty": 2, "stop": ["\n"], "seed": -1, "top_k": -1,
            "stream_options": None, "logit_bias": {"1": 2}, "user": "u", "some_vllm_extra": [1]}
    async with s.http.post(s.url + CHAT, json=body) as r:
        assert r.status == 200
    assert fake.received[-1] == {**body, "model": "fake"}
    for prompt in ("x", ["x", "y"], [1, 2], [[1, 2], [3]]):
        async with s.http.post(s.url + COMPLETIONS, json={"prompt": prompt, "stop": "x"}) as r:
            assert r.status == 200
        assert fake.received[-1]["prompt"] == prompt


# (path, body, words the Ollama error carries)
OLLAMA_WRONG = [
    ("/api/chat", {"messages": [{"role": 1}]}, "'messages[0].role'"),
    ("/api/chat", {"messages": [{"content": "x"}]}, "'messages[0].role' is required"),
    ("/api/chat", {"messages": [{"role": "developer", "content": "x"}]}, "'messages[0].role'"),
    ("/api/chat", {"messages": [{"role": "user", "content": ["x"]}]}, "'messages[0].content'"),
    ("/api/chat", {"messages": HI, "options": {"temperature": "hot"}}, "'options.temperature'"),
    ("/api/chat", {"messages": HI, "options": {"stop": 5}}, "'options.stop'"),
    ("/api/chat", {"messages": HI, "options": {"num_predict": "many"}}, "'options.num_predict'"),
    ("/api/chat", {"messages": HI, "options": {"top_k": 1.5}}, "'options.top_k'"),
    ("/api/chat", {"messages": HI, "options": {"seed": "1"}}, "'options.seed'"),
    ("/api/chat", {"messages": HI, "options": [1]}, "'options'"),
    ("/api/chat", {"messages": HI, "tools": "x"}, "'tools'"),
    ("/api/chat", {"messages": HI, "keep_alive": []}, "'keep_alive'"),
    ("/api/chat", {"messages": "hi"}, "'messages'"),
    ("/api/generate", {"prompt": "x", "system": 1}, "'system'"),
    ("/api/generate", {"prompt": "x", "raw": "yes"}, "'raw'"),
    ("/api/generate", {"prompt": []}, "'prompt'"),
    ("/api/generate", {"prompt": {}}, "'prompt'"),
    ("/api/generate", {"prompt": 5}, "'prompt'"),
    ("/api/generate", {"prompt": "x", "suffix": 1}, "'suffix'"),
    ("/api/generate", {"prompt": "x", "stream": "no"}, "'stream'"),
    ("/api/generate", {"prompt": "x", "options": {"temperature": -1}}, "'options.temperature'"),
    ("/api/embed", {"model": "emb", "input": 5}, "'input'"),
    ("/api/embed", {"model": "emb", "input": ["a", None]}, "'input'"),
    ("/api/embed", {"model": "emb"}, "'input' is required"),
    ("/api/embed", {"model": "emb", "input": "x", "truncate": "no"}, "'truncate'"),
    ("/api/embeddings", {"model": "emb", "prompt": ["x"]}, "'prompt'"),
]


@pytest.mark.parametrize("path, body, words", OLLAMA_WRONG)
async def test_wrong_ollama_fields_are_400_ollama_shaped(stack, path, body, words):
    chat, emb = FakeBackend(), EmbedFake("e")
    s = await stack({"m": chat, "emb": (emb, {"task": "embed"})})
    async with s.http.post(s.url + path, json={"model": "m", **body}) as r:
        assert r.status == 400
        answer = await r.json()
    assert set(answer) == {"error"} and words in answer["error"], answer
    assert chat.received == [] and emb.received == []
