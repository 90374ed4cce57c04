"""Real tier: litellm's SDK the way aider drives it.

`aider --model openai/coder --openai-api-base URL --openai-api-key KEY` puts the
base and key in OPENAI_API_BASE / OPENAI_API_KEY and calls
`litellm.completion(model="openai/coder", messages=..., stream=True, temperature=0,
timeout=600)` (stream=False for commit messages and summaries)."""

from __future__ import annotations

import os

import pytest

# aider sets this before importing litellm: no download of the model price list.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402 - in the test extra

pytestmark = pytest.mark.real

MESSAGES = [
    {"role": "system", "content": "Act as an expert software developer."},
    {"role": "user", "content": "Write hello world in Python."},
]


@pytest.fixture(params=["/v1", "/v1/"], ids=["v1", "v1-slash"])
def aider_env(request, real_stack, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", real_stack.url + request.param)
    monkeypatch.setenv("OPENAI_API_KEY", real_stack.api_key)
    return real_stack


def test_streamed_chat_as_aider_sends_it(aider_env):
    # max_tokens is the one addition (aider sends it when a model's settings ask, via extra_params):
    # random weights at temperature 0 repeat one token, and litellm aborts a stream after
    # 100 identical chunks. A real model does not loop like that.
    chunks = list(litellm.completion(model="openai/coder", messages=MESSAGES, stream=True, temperature=0,
                                     timeout=600, max_tokens=48))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and len(chunks) >= 3
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)


def test_non_streamed_chat_as_aider_sends_it(aider_env):
    reply = litellm.completion(model="openai/coder", messages=MESSAGES, stream=False, temperature=0,
                               timeout=600)
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_explicit_api_base_and_key(real_stack):
    """litellm used directly, base and key as arguments instead of the environment."""
    chunks = list(litellm.completion(model="openai/dev", messages=MESSAGES, stream=True,
                                     api_base=real_stack.url + "/v1", api_key=real_stack.api_key,
                                     max_tokens=8))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_wrong_key_and_unknown_model(real_stack):
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(model="openai/coder", messages=MESSAGES, api_base=real_stack.url + "/v1",
                           api_key="sk-wrong", max_tokens=4, num_retries=0)
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="openai/gpt-4o", messages=MESSAGES, api_base=real_stack.url + "/v1",
                           api_key=real_stack.api_key, max_tokens=4, num_retries=0)
