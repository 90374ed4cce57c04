"""Real tier for the Anthropic Messages API: the official anthropic SDK against real vLLM
servers through `localai up` (create, stream, count_tokens, a wrong key), a request shaped
like Claude Code's, and max_tokens beyond the window capped rather than rejected."""

from __future__ import annotations

import re

import anthropic
import httpx
import pytest

pytestmark = pytest.mark.real

ASK = [{"role": "user", "content": "Write hello world in Python."}]


@pytest.fixture(scope="module")
def claude(real_stack):
    return anthropic.Anthropic(base_url=real_stack.url, api_key=real_stack.api_key, max_retries=0)


def token_totals(real_stack, model: str) -> tuple[float, float]:
    text = httpx.get(real_stack.url + "/metrics", headers={"Authorization": f"Bearer {real_stack.api_key}"}).text

    def total(name: str) -> float:
        found = re.search(rf'^localai_{name}_tokens_total{{model="{model}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0
    return total("prompt"), total("completion")


def test_create_answers_and_counts_its_usage(claude, real_stack):
    before = token_totals(real_stack, "coder")
    message = claude.messages.create(model="coder", max_tokens=12, system="You write Python.", messages=ASK)
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    after = token_totals(real_stack, "coder")
    assert after[0] - before[0] == message.usage.input_tokens
    assert after[1] - before[1] == message.usage.output_tokens


def test_stream_by_alias_and_its_usage_in_the_metrics(claude, real_stack):
    before = token_totals(real_stack, "coder")
    with claude.messages.stream(model="python", max_tokens=8, messages=ASK) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces and "".join(pieces) == final.content[0].text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")
    after = token_totals(real_stack, "coder")
    assert after[0] - before[0] == final.usage.input_tokens
    assert after[1] - before[1] == final.usage.output_tokens


def test_count_tokens_is_the_models_own_count(claude):
    counted = claude.messages.count_tokens(model="coder", system="You write Python.", messages=ASK)
    longer = claude.messages.count_tokens(model="coder", system="You write Python. " * 20, messages=ASK)
    assert 0 < counted.input_tokens < longer.input_tokens
    answered = claude.messages.create(model="coder", max_tokens=1, system="You write Python.", messages=ASK)
    assert answered.usage.input_tokens == counted.input_tokens


def test_wrong_key_and_unknown_model_raise_the_sdks_errors(claude, real_stack):
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=real_stack.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="coder", max_tokens=4, messages=ASK)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-opus-4-1", max_tokens=4, messages=ASK)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="coder", max_tokens=4, messages=[{"role": "tool", "content": "x"}])


def test_claude_code_shaped_request_is_answered_with_max_tokens_capped(claude, real_stack):
    # What Claude Code sends: ?beta=true, its beta header, system blocks, metadata, tools, 32000.
    tools = [{"name": "Read", "description": "Read a file.",
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                               "required": ["path"]}}]
    system = [{"type": "text", "text": "You are a coding agent."}]
    # Streamed, as Claude Code does (the SDK refuses a non-streamed max_tokens this large).
    with claude.messages.stream(model="coder", max_tokens=32000, system=system, tools=tools, messages=ASK,
                                metadata={"user_id": "user_test"}, extra_query={"beta": "true"},
                                extra_headers={"anthropic-beta": "claude-code-20250219"}) as stream:
        capped = int(stream.response.headers["X-LocalAI-Max-Tokens-Capped"])
        message = stream.get_final_message()
    prompt = claude.messages.count_tokens(model="coder", system=system, tools=tools, messages=ASK).input_tokens
    assert capped == 2048 - prompt
    assert message.usage.input_tokens == prompt and message.content


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])  # Claude Code's, opencode's
def test_max_tokens_32000_on_a_32768_model_is_capped_not_rejected(claude, real_stack, path):
    # Over 768 prompt tokens: 32000 more would not fit the window (the gateway used to reject it).
    long_ask = [{"role": "user", "content": "Summarise this log: " + "worker started, " * 400}]
    prompt = claude.messages.count_tokens(model="general", messages=long_ask).input_tokens
    assert prompt > 32768 - 32000
    headers = {"x-api-key": real_stack.api_key, "anthropic-version": "2023-06-01"}
    body = {"model": "general", "max_tokens": 32000, "messages": long_ask, "stream": True}
    # Streamed and hung up on after the first event: the capped answer would take minutes.
    with httpx.stream("POST", real_stack.url + path, json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert int(r.headers["X-LocalAI-Max-Tokens-Capped"]) == 32768 - prompt
        assert next(r.iter_lines())
