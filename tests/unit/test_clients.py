"""What every client needs, against fake backends: context guard, presets, FIM,
tools and embeddings routing, trailing slashes."""

import pytest

from tests.fakebackend import FakeBackend
from tests.unit.test_gateway import assert_openai_error


def conversation(turns: int, words: int) -> list[dict]:
    msgs = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"q{i} " + "word " * words})
        msgs.append({"role": "assistant", "content": f"a{i} " + "word " * words})
    msgs.append({"role": "user", "content": "latest question"})
    return msgs


# The fake's /tokenize counts whitespace-separated words of the JSON-encoded messages.


async def test_short_prompt_is_not_counted(stack):
    fake = FakeBackend(max_model_len=4096)
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": conversation(1, 3)}) as r:
        assert r.status == 200
    assert fake.tokenize_calls == 0  # far below the limit: no round trip
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": conversation(40, 40)}) as r:
        assert r.status == 200
    assert fake.tokenize_calls >= 1  # near the limit: counted by the backend


async def test_truncates_oldest_turns_and_says_so(stack):
    fake = FakeBackend(max_model_len=400)  # limit 300 prompt tokens
    s = await stack({"m": fake})
    msgs = conversation(6, 40)  # ~6*2*41 words: over the limit
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": msgs}) as r:
        assert r.status == 200
        dropped = int(r.headers["X-LocalAI-Truncated-Messages"])
    sent = fake.received[-1]["messages"]
    assert dropped == len(msgs) - len(sent) and dropped % 2 == 0 and dropped > 0
    assert sent[0] == msgs[0]  # the system message stays
    assert sent[-1] == msgs[-1]  # the latest user message stays
    assert sent[1]["role"] == "user"  # whole turns dropped, oldest first
    assert sent[1:] == msgs[1 + dropped:]
    metrics = s.metrics_text()
    assert 'localai_context_truncations_total{model="m"} 1.0' in metrics
    assert f'localai_context_dropped_messages_total{{model="m"}} {float(dropped)}' in metrics
    assert any(line.get("dropped_messages") == dropped for line in s.log_lines())


async def test_a_chat_the_target_cannot_hold_is_served_while_the_window_can(stack):
    # The share is where chats are shortened to, not a limit stricter than vLLM's window (#22).
    fake = FakeBackend(max_model_len=400)  # shortened toward 300 prompt tokens
    s = await stack({"m": fake})
    alone = [{"role": "system", "content": "word " * 340}, {"role": "user", "content": "latest question"}]
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": alone}) as r:
        assert r.status == 200 and "X-LocalAI-Truncated-Messages" not in r.headers
    assert fake.received[-1]["messages"] == alone
    # Older turns on top of that: all dropped (the nearest to the target), the rest served.
    msgs = [alone[0], {"role": "user", "content": "q0 word"}, {"role": "assistant", "content": "a0"}, alone[1]]
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": msgs}) as r:
        assert r.status == 200 and r.headers["X-LocalAI-Truncated-Messages"] == "2"
    assert fake.received[-1]["messages"] == alone
    # Past the window itself: refused in the words OpenAI clients read as a context overflow.
    too_long = [{"role": "system", "content": "word " * 420}, alone[1]]
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": too_long}) as r:
        assert r.status == 400
        body = await r.json()
    assert_openai_error(body, "context_length_exceeded")
    assert "maximum context length is 400 tokens" in body["error"]["message"]


async def test_reject_policy_gives_counts(stack):
    fake = FakeBackend(max_model_len=400)
    s = await stack({"m": (fake, {"context_policy": "reject"})})
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": conversation(6, 40)}) as r:
        assert r.status == 400
        body = await r.json()
    assert_openai_error(body, "context_length_exceeded")
    assert "400 tokens" in body["error"]["message"] and "prompt has 551" in body["error"]["message"]
    assert fake.received == []


async def test_latest_message_alone_too_long_is_400(stack):
    fake = FakeBackend(max_model_len=400)
    s = await stack({"m": fake})
    msgs = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "word " * 500}]
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": msgs}) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "context_length_exceeded")


async def test_opencodes_request_past_the_target_is_served_whole_as_it_streams(stack):
    # opencode's turn (#22): its system prompt and tool list alone pass the share chats are
    # shortened toward (with a project's AGENTS.md, 25,127 of 32,768 tokens), it asks for 32,000
    # tokens, streamed with usage. Refused with 400, opencode compacted its history and was
    # refused again, in a loop (the "2,102 prompt, 8,211 completion tokens" answered in between
    # were its summaries); vLLM serves the request, and so does the gateway now, whole.
    fake = FakeBackend(max_model_len=400)  # chats shortened toward 300 prompt tokens
    s = await stack({"m": fake})
    tool = {"type": "function", "function": {"name": "glob", "parameters": {
        "type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]}}}
    body = {"model": "m", "max_tokens": 32000, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": "word " * 340},
                         {"role": "user", "content": "Say hello in one word."}],
            "tools": [tool], "tool_choice": "auto"}
    async with s.http.post(s.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        capped = int(r.headers["X-LocalAI-Max-Tokens-Capped"])
        events = (await r.text()).strip().split("\n\n")
    sent = fake.received[-1]
    assert sent["messages"] == body["messages"] and sent["tools"] == [tool]
    assert sent["max_tokens"] == capped == 400 - fake.last_count
    assert events[-1] == "data: [DONE]" and '"usage"' in events[-2]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_too_big_for_the_window_is_capped_not_rejected(stack, field):
    fake = FakeBackend(max_model_len=400)
    s = await stack({"m": (fake, {"context_policy": "reject"})})
    body = {"messages": [{"role": "user", "content": "word " * 150}], field: 300}
    async with s.http.post(s.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()  # 150 words fit; 300 more would not: capped, as vLLM does
        capped = int(r.headers["X-LocalAI-Max-Tokens-Capped"])
    assert fake.received[-1][field] == capped < 300
    assert capped == 400 - fake.last_count
    assert [line["max_tokens_capped"] for line in s.log_lines() if line.get("path") == "/v1/chat/completions"] \
        == [capped]
    body[field] = 10  # fits: left alone, no header
    async with s.http.post(s.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200 and "X-LocalAI-Max-Tokens-Capped" not in r.headers
    assert fake.received[-1][field] == 10


async def test_models_report_limits_and_presets(stack):
    fake = FakeBackend(max_model_len=4096)
    s = await stack({"general": (fake, {"presets": {"architect": {"temperature": 0.1, "top_p": 0.95},
                                                    "po": {"temperature": 0.5}}})})
    async with s.http.get(s.url + "/v1/models") as r:
        cards = {m["id"]: m for m in (await r.json())["data"]}
    assert cards["general"]["max_model_len"] == 4096 and cards["general"]["context_limit"] == 3072
    assert cards["architect"]["preset_of"] == "general"
    assert cards["architect"]["defaults"] == {"temperature": 0.1, "top_p": 0.95}


async def test_retrieve_one_model_by_name_alias_or_preset(stack):
    # GET /v1/models/{id}, as the OpenAI SDKs' models.retrieve() calls it.
    s = await stack({"general": (FakeBackend(max_model_len=4096),
                                 {"aliases": ["chat"], "presets": {"po": {"temperature": 0.5}}})})
    for asked, expected_id in (("general", "general"), ("chat", "general"), ("po", "po")):
        async with s.http.get(s.url + f"/v1/models/{asked}") as r:
            assert r.status == 200
            card = await r.json()
        assert card["id"] == expected_id and card["object"] == "model" and card["context_limit"] == 3072
    assert card["preset_of"] == "general" and card["defaults"] == {"temperature": 0.5}
    async with s.http.get(s.url + "/v1/models/Qwen/Qwen2.5-7B") as r:
        assert r.status == 404
        assert_openai_error(await r.json(), "model_not_found")


async def test_preset_defaults_apply_only_where_request_is_silent(stack):
    fake = FakeBackend()
    s = await stack({"general": (fake, {"presets": {"architect": {"temperature": 0.1, "top_p": 0.95}}})})
    msgs = [{"role": "user", "content": "x"}]
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"model": "architect", "messages": msgs, "temperature": 0.9}) as r:
        assert r.status == 200
    sent = fake.received[-1]
    assert sent["temperature"] == 0.9 and sent["top_p"] == 0.95 and sent["model"] == fake.model_id
    async with s.http.post(s.url + "/v1/chat/completions", json={"model": "general", "messages": msgs}) as r:
        assert r.status == 200
    assert "temperature" not in fake.received[-1]


@pytest.mark.parametrize("fim, expected", [
    ("qwen", "<|fim_prefix|>def f(x):\n    return {x}<|fim_suffix|>\n\nprint(f(1))<|fim_middle|>"),
    ("starcoder", "<fim_prefix>def f(x):\n    return {x}<fim_suffix>\n\nprint(f(1))<fim_middle>"),
    ("codellama", "<PRE> def f(x):\n    return {x} <SUF>\n\nprint(f(1)) <MID>"),
    ("<SUF>{suffix}<PRE>{prefix}<MID>", "<SUF>\n\nprint(f(1))<PRE>def f(x):\n    return {x}<MID>"),
])
async def test_fim_builds_the_models_prompt(stack, fim, expected):
    fake = FakeBackend()
    s = await stack({"coder": (fake, {"fim": fim})})
    body = {"prompt": "def f(x):\n    return {x}", "suffix": "\n\nprint(f(1))", "max_tokens": 8}
    async with s.http.post(s.url + "/v1/completions", json=body) as r:
        assert r.status == 200
    sent = fake.received[-1]
    assert sent["prompt"] == expected and "suffix" not in sent


async def test_fim_on_model_without_it_is_clear_400(stack):
    fake = FakeBackend()
    s = await stack({"general": fake})
    async with s.http.post(s.url + "/v1/completions", json={"prompt": "a", "suffix": "b"}) as r:
        assert r.status == 400
        body = await r.json()
    assert_openai_error(body, "fim_not_supported")
    assert body["error"]["param"] == "suffix" and fake.received == []


async def test_tools_without_tool_calling_configured_is_clear_400(stack):
    fake = FakeBackend()
    s = await stack({"m": (fake, {"tools": False})})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "x"}]
    async with s.http.post(s.url + "/v1/chat/completions", json={"messages": msgs, "tools": tools}) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "tools_not_supported")
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"messages": msgs, "tools": tools, "tool_choice": "none"}) as r:
        assert r.status == 200


async def test_tools_and_structured_output_pass_through_unchanged(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "stream": True, "stream_options": {"include_usage": True},
    }
    async with s.http.post(s.url + "/v1/chat/completions/", json=body) as r:  # trailing slash too
        assert r.status == 200
        await r.read()
    sent = fake.received[-1]
    for key in ("tools", "tool_choice", "response_format", "stream_options"):
        assert sent[key] == body[key], key


async def test_embeddings_route_only_to_embedding_models(stack):
    chat, embed = FakeBackend("chat"), FakeBackend("minilm")
    s = await stack({"general": chat, "minilm": (embed, {"task": "embed"})})
    async with s.http.post(s.url + "/v1/embeddings", json={"model": "general", "input": "x"}) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "model_not_embedding")
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"model": "minilm", "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "model_is_embedding")
    async with s.http.post(s.url + "/v1/embeddings", json={"model": "general", "input": 3}) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "invalid_type")
