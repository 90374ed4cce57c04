"""The Anthropic Messages API through the gateway, against fake backends: routing, streams
and their usage, cancellation, glob aliases, the max_tokens cap, errors in Anthropic's
shape, and the official anthropic SDK's typed exceptions."""

import asyncio
import json

import aiohttp
import anthropic
import pytest

from gateway.config.schema import ConfigError
from tests.fakebackend import FakeBackend
from tests.harness import make_config, wait_until

HEADERS = {"anthropic-version": "2023-06-01"}
ASK = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def assert_anthropic_error(body: dict, kind: str) -> None:
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]


def sdk(s, key: str = "sk-right") -> anthropic.AsyncAnthropic:
    # No retries: each call shows the one answer the gateway gave.
    return anthropic.AsyncAnthropic(base_url=s.url, api_key=key, max_retries=0)


def events_of(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            name_line, data_line = block.split("\n")
            out.append((name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return out


# --- routing -------------------------------------------------------------------------------


async def test_claude_code_request_routes_by_glob_alias_to_the_backend(stack):
    coder, general = FakeBackend("coder-id"), FakeBackend("general-id")
    s = await stack({"coder": (coder, {"aliases": ["claude-haiku-*", "coder-exact"]}),
                     "general": (general, {"aliases": ["claude-*"]})}, api_keys=["sk-right"])
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "metadata": {"user_id": "u1"},
            "system": [{"type": "text", "text": "You are Claude Code."}],
            # Claude Code 2.1 sends a system turn inside messages as well.
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                         {"role": "system", "content": "Be brief."}]}
    headers = {**HEADERS, "anthropic-beta": "claude-code-20250219", "x-api-key": "sk-right"}
    async with s.http.post(s.url + "/v1/messages?beta=true", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
        assert general.headers[-1]["X-Request-Id"] == r.headers["X-Request-ID"]  # one id, end to end
    assert answer["content"][0]["text"].startswith("tok0")
    sent = general.received[-1]
    assert sent["model"] == "general-id" and sent["system"] == body["system"] and sent["metadata"] == {"user_id": "u1"}
    for name, fake in (("claude-haiku-4-5", coder), ("coder-exact", coder), ("general", general)):
        async with s.http.post(s.url + "/v1/messages", json=dict(body, model=name), headers=headers) as r:
            assert r.status == 200
        assert fake.received[-1]["model"] == fake.model_id


def test_glob_aliases_exact_names_win_then_config_order():
    from gateway.base.observability import Metrics
    from gateway.routing.backends import Registry
    cfg = make_config([
        {"name": "a", "url": "http://127.0.0.1:1", "default": True, "aliases": ["gpt-*", "claude-opus-*"]},
        {"name": "b", "url": "http://127.0.0.1:2", "aliases": ["claude-*", "gpt-4o"]},
    ])
    registry = Registry(cfg, Metrics())
    assert registry.resolve("gpt-4o").backend.name == "b"  # exact beats a glob
    assert registry.resolve("gpt-5-codex").backend.name == "a"
    assert registry.resolve("claude-opus-4").backend.name == "a"  # first glob in config order
    assert registry.resolve("claude-sonnet-4-5").backend.name == "b"
    with pytest.raises(Exception) as err:
        registry.resolve("llama-3")
    assert getattr(err.value, "status", None) == 404


@pytest.mark.parametrize("aliases, needle", [
    ((["claude-*"], ["claude-*"]), "'claude-*' is already used by model 'a' (model 'b' cannot use it too)"),
    ((["claude-[ab]*"], []), "models[0].aliases[0]"),
    ((["claude *"], []), "models[0].aliases[0]"),
])
def test_bad_glob_aliases_are_config_errors(aliases, needle):
    with pytest.raises(ConfigError) as err:
        make_config([{"name": "a", "url": "http://127.0.0.1:1", "default": True, "aliases": aliases[0]},
                     {"name": "b", "url": "http://127.0.0.1:2", "aliases": aliases[1]}])
    assert needle in str(err.value)


async def test_models_list_in_anthropic_shape_with_anthropic_version(stack):
    s = await stack({"coder": (FakeBackend("c"), {"aliases": ["claude-*"], "presets": {"dev": {"temperature": 0.3}}}),
                     "general": FakeBackend("g")})
    async with s.http.get(s.url + "/v1/models", headers=HEADERS) as r:
        listing = await r.json()
    assert [m["id"] for m in listing["data"]] == ["coder", "general", "dev"]
    assert listing["has_more"] is False and listing["first_id"] == "coder" and listing["last_id"] == "dev"
    assert listing["data"][0] == {"type": "model", "id": "coder", "display_name": "coder",
                                  "created_at": "1970-01-01T00:00:00Z"}
    async with s.http.get(s.url + "/v1/models") as r:  # OpenAI clients keep OpenAI's list
        assert (await r.json())["object"] == "list"
    page = await sdk(s).models.list()
    assert [m.id for m in page.data] == ["coder", "general", "dev"]
    assert (await sdk(s).models.retrieve("claude-sonnet-4-5")).id == "coder"
    with pytest.raises(anthropic.NotFoundError):
        await sdk(s).models.retrieve("gpt-9")


# --- streams, usage, cancellation ------------------------------------------------------------


async def test_stream_passes_named_events_through_one_by_one_and_counts_usage(stack):
    fake = FakeBackend(chunks=3, gate=asyncio.Event())
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/messages", json=dict(ASK, stream=True), headers=HEADERS) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        seen = []
        while event := await r.content.readuntil(b"\n\n"):
            seen.append(event)
            fake.gate.set()  # the next delta leaves the backend only once we saw this event
    names = [name for name, _ in events_of(b"".join(seen).decode())]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert "stream_options" not in fake.received[-1]  # OpenAI's usage switch is not Anthropic's
    access = [line for line in s.log_lines() if line.get("path") == "/v1/messages"][-1]
    assert access["prompt_tokens"] == 7 and access["completion_tokens"] == 3 and access["ttft_ms"] >= 0
    metrics = s.metrics_text()
    assert 'localai_prompt_tokens_total{model="m"} 7.0' in metrics
    assert 'localai_completion_tokens_total{model="m"} 3.0' in metrics
    assert 'localai_requests_total{endpoint="/v1/messages",model="m",status="200"} 1.0' in metrics


async def test_non_streamed_answer_counts_usage(stack):
    s = await stack({"m": FakeBackend(chunks=4)})
    message = await sdk(s).messages.create(**ASK)
    assert message.content[0].text == "tok0 tok1 tok2 tok3 " and message.usage.output_tokens == 4
    metrics = s.metrics_text()
    assert 'localai_prompt_tokens_total{model="m"} 7.0' in metrics
    assert 'localai_completion_tokens_total{model="m"} 4.0' in metrics


async def test_sdk_streams_and_counts_tokens(stack):
    fake = FakeBackend(chunks=3)
    s = await stack({"m": fake})
    async with sdk(s).messages.stream(**ASK) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["tok0 ", "tok1 ", "tok2 "] and final.usage.output_tokens == 3
    counted = await sdk(s).messages.count_tokens(model="m", messages=ASK["messages"], system="be brief")
    assert counted.input_tokens == fake.last_count and fake.received[-1]["model"] == fake.model_id


async def test_client_disconnect_cancels_the_backend(stack):
    fake = FakeBackend(chunks=1000, itl=0.01)
    s = await stack({"m": fake})
    session = aiohttp.ClientSession()
    resp = await session.post(s.url + "/v1/messages", json=dict(ASK, stream=True), headers=HEADERS)
    assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: message_start")
    resp.close()
    await session.close()
    await fake.wait_for(lambda f: f.active == 0 and f.cancelled == 1, timeout=3)
    assert fake.completed == 0


async def test_broken_off_stream_ends_with_an_anthropic_error_event(stack):
    s = await stack({"m": FakeBackend(chunks=10, break_after=2)})
    async with s.http.post(s.url + "/v1/messages", json=dict(ASK, stream=True), headers=HEADERS) as r:
        text = await asyncio.wait_for(r.text(), 5)
    name, data = events_of(text)[-1]
    assert name == "error" and data["error"]["type"] == "api_error" and "broke off" in data["error"]["message"]


# --- the context guard: max_tokens capped, never stricter than vLLM ------------------------


async def test_max_tokens_beyond_the_window_is_capped_and_said(stack):
    fake = FakeBackend(max_model_len=32768)
    s = await stack({"m": fake})
    body = dict(ASK, max_tokens=32000, system="word " * 900,  # opencode's and Claude Code's ask
                thinking={"type": "enabled", "budget_tokens": 31999})
    async with s.http.post(s.url + "/v1/messages", json=body, headers=HEADERS) as r:
        assert r.status == 200, await r.text()
        capped = int(r.headers["X-LocalAI-Max-Tokens-Capped"])
    counted = fake.received[-2]  # what the guard sent to count_tokens
    assert set(counted) == {"model", "messages", "system"}
    assert capped == 32768 - fake.last_count and fake.received[-1]["max_tokens"] == capped
    assert fake.received[-1]["thinking"]["budget_tokens"] == capped - 1  # vLLM wants it below max_tokens
    access = [line for line in s.log_lines() if line.get("path") == "/v1/messages"][-1]
    assert access["max_tokens_capped"] == capped


async def test_an_agents_conversation_passes_whole_until_the_window_cannot_hold_it(stack):
    # Claude Code's first request was refused at 0.75 of the window though vLLM serves it (#22).
    fake = FakeBackend(max_model_len=400)  # truncate policy: chats are shortened toward 300 tokens
    s = await stack({"m": fake})
    call = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]}
    old = [{"role": "user", "content": "word " * 350}, {"role": "assistant", "content": "ok"}]
    body = dict(ASK, messages=[*old, {"role": "user", "content": "read it"}, call, result])
    async with s.http.post(s.url + "/v1/messages", json=body, headers=HEADERS) as r:
        assert r.status == 200 and "X-LocalAI-Truncated-Messages" not in r.headers
    assert fake.received[-1]["messages"] == body["messages"]  # nothing of the agent's history dropped
    # Past the window: refused in the words Claude Code reads as "compact your history".
    body["messages"][0]["content"] = "word " * 400
    async with s.http.post(s.url + "/v1/messages", json=body, headers=HEADERS) as r:
        assert r.status == 400
        error = await r.json()
    assert_anthropic_error(error, "invalid_request_error")
    assert error["error"]["message"].startswith("prompt is too long: ")
    assert sum("max_tokens" in b for b in fake.received) == 1


async def test_preset_defaults_apply_in_anthropic_names(stack):
    fake = FakeBackend()
    s = await stack({"m": (fake, {"presets": {"dev": {"temperature": 0.3, "stop": ["###"]}}})})
    async with s.http.post(s.url + "/v1/messages", json=dict(ASK, model="dev"), headers=HEADERS) as r:
        assert r.status == 200
    sent = fake.received[-1]
    assert sent["temperature"] == 0.3 and sent["stop_sequences"] == ["###"] and "stop" not in sent


async def test_short_prompt_that_fits_is_not_counted_or_capped(stack):
    fake = FakeBackend(max_model_len=32768)
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/messages", json=dict(ASK, max_tokens=4096), headers=HEADERS) as r:
        assert r.status == 200 and "X-LocalAI-Max-Tokens-Capped" not in r.headers
    assert fake.tokenize_calls == 0 and fake.received[-1]["max_tokens"] == 4096


async def test_prompt_over_the_limit_is_rejected_in_anthropic_shape(stack):
    fake = FakeBackend(max_model_len=400)
    s = await stack({"m": (fake, {"context_policy": "reject"})})
    with pytest.raises(anthropic.BadRequestError) as err:
        await sdk(s).messages.create(**dict(ASK, messages=[{"role": "user", "content": "word " * 500}]))
    assert err.value.status_code == 400 and "prompt is too long" in err.value.message
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert [b for b in fake.received if "max_tokens" in b] == []  # counted, never generated


# --- errors in Anthropic's shape, and the SDK's exceptions ----------------------------------


async def test_auth_errors_are_anthropic_shaped(stack):
    s = await stack({"m": FakeBackend()}, api_keys=["sk-right"])
    for headers in ({}, {"x-api-key": "sk-wrong"}):
        async with s.http.post(s.url + "/v1/messages", json=ASK, headers={**HEADERS, **headers}) as r:
            assert r.status == 401
            assert_anthropic_error(await r.json(), "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(s, key="sk-wrong").messages.create(**ASK)
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(s, key="sk-wrong").models.list()
    assert (await sdk(s).messages.create(**ASK)).content


async def test_unknown_model_is_not_found_error(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    with pytest.raises(anthropic.NotFoundError) as err:
        await sdk(s).messages.create(**dict(ASK, model="claude-opus-4"))
    assert err.value.body["error"]["type"] == "not_found_error" and "claude-opus-4" in err.value.message
    assert fake.received == []


async def test_full_queue_is_rate_limit_error_with_retry_after(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, max_queue=1)
    from gateway.http.appkeys import REGISTRY
    first = asyncio.create_task(s.http.post(s.url + "/v1/messages", json=dict(ASK, stream=True), headers=HEADERS))
    await fake.wait_for(lambda f: f.active == 1)
    second = asyncio.create_task(s.http.post(s.url + "/v1/messages", json=ASK, headers=HEADERS))
    await wait_until(lambda: s.app[REGISTRY].room.waiting == 1)
    with pytest.raises(anthropic.RateLimitError) as err:
        await sdk(s).messages.create(**ASK)
    assert err.value.response.headers["retry-after"] and err.value.body["error"]["type"] == "rate_limit_error"
    while not second.done():
        fake.gate.set()
        await asyncio.sleep(0)
    assert (await first).status == 200 and (await second).status == 200


async def test_loading_model_is_overloaded_error_with_retry_after(stack):
    s = await stack({"m": FakeBackend(health_status=503)}, wait=False)
    async with s.http.post(s.url + "/v1/messages", json=ASK, headers=HEADERS) as r:
        assert r.status == 503 and r.headers["Retry-After"]
        assert_anthropic_error(await r.json(), "overloaded_error")
    with pytest.raises(anthropic.InternalServerError) as err:
        await sdk(s).messages.create(**ASK)
    assert err.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("path, kwargs, status, kind", [
    ("/v1/messages", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
     "invalid_request_error"),
    ("/v1/messages", {"data": b"[1]", "headers": {"Content-Type": "application/json"}}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, messages="hi")}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, messages=[])}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, messages=[{"role": "robot", "content": "x"}])}, 400,
     "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, messages=[{"role": "user", "content": 5}])}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, max_tokens="64")}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, max_tokens=0)}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": {k: v for k, v in ASK.items() if k != "max_tokens"}}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": {k: v for k, v in ASK.items() if k != "model"}}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, model=7)}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, stream="yes")}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, system=3)}, 400, "invalid_request_error"),
    ("/v1/messages", {"json": dict(ASK, tools={"name": "x"})}, 400, "invalid_request_error"),
    ("/v1/messages/count_tokens", {"json": dict(ASK, stream=True)}, 400, "invalid_request_error"),
    ("/v1/messages/count_tokens", {"json": {"model": "m"}}, 400, "invalid_request_error"),
    ("/v1/messages", {"data": b"x" * 2_000_000, "headers": {"Content-Type": "application/json"}}, 413,
     "request_too_large"),
    ("/v1/messages", {"data": b"hi", "headers": {"Content-Type": "text/plain"}}, 415, "invalid_request_error"),
    ("/v1/messages/batches", {"json": ASK}, 404, "not_found_error"),
])
async def test_bad_input_is_4xx_anthropic_shaped_and_never_forwarded(stack, path, kwargs, status, kind):
    fake = FakeBackend()
    s = await stack({"m": fake}, max_body_bytes=1_000_000)
    async with s.http.post(s.url + path, **kwargs) as r:
        assert r.status == status
        assert_anthropic_error(await r.json(), kind)
    assert fake.received == [] and fake.tokenize_calls == 0


async def test_sdk_raises_bad_request_for_bad_input(stack):
    s = await stack({"m": FakeBackend()})
    with pytest.raises(anthropic.BadRequestError) as err:
        await sdk(s).messages.create(model="m", max_tokens=64, messages=[{"role": "tool", "content": "x"}])
    assert "'messages[0].role'" in err.value.message


async def test_wrong_method_is_anthropic_shaped(stack):
    s = await stack({"m": FakeBackend()})
    async with s.http.get(s.url + "/v1/messages", headers=HEADERS) as r:
        assert r.status == 405 and "POST" in r.headers["Allow"]
        assert_anthropic_error(await r.json(), "invalid_request_error")
