"""Real tier for the Responses API (the official openai SDK's client.responses) and vLLM's
rerank, score, tokenize and detokenize, on real vLLM servers through the gateway."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def client(real_stack):
    return openai.OpenAI(base_url=real_stack.url + "/v1", api_key=real_stack.api_key, max_retries=0)


@pytest.fixture(scope="module")
def http(real_stack):
    with httpx.Client(base_url=real_stack.url, headers={"Authorization": f"Bearer {real_stack.api_key}"},
                      timeout=300) as h:
        yield h


def test_create_and_retrieve_by_id(client):
    made = client.responses.create(model="coder", input="Say hello.", max_output_tokens=8)
    assert made.id.startswith("resp_") and made.status in ("completed", "incomplete")
    assert isinstance(made.output_text, str)
    assert 0 < made.usage.output_tokens <= 8 and made.usage.input_tokens > 0
    again = client.responses.retrieve(made.id)
    assert again.id == made.id and again.output_text == made.output_text


def test_stream_has_typed_events_and_its_id_leads_back(client):
    events = list(client.responses.create(model="general", input="Count to three.", max_output_tokens=6,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    done = events[-1].response
    assert done.usage.output_tokens > 0
    # The id came from the stream; retrieve finds it on `general`, not the default model.
    assert client.responses.retrieve(done.id).model == "general"


def test_previous_response_id_continues_on_its_model_only(client):
    first = client.responses.create(model="general", input="My name is Ada.", max_output_tokens=4)
    second = client.responses.create(model="general", input="What is my name?", max_output_tokens=4,
                                     previous_response_id=first.id)
    # vLLM prepended the first turn: the second prompt holds both.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="coder", input="And now?", previous_response_id=first.id, max_output_tokens=4)
    assert info.value.body["code"] == "previous_response_model_mismatch"


def test_unknown_id_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve("resp_0123456789abcdef")
    assert info.value.body["code"] == "response_not_found"


def test_an_input_past_the_window_is_refused_whole(client):
    # coder: max_model_len 2048. An agent's input is never shortened (dropping turns would corrupt its
    # tool state): past the window it is refused in the words Codex reads as "compact your history".
    turns = []
    for i in range(24):
        turns.append({"role": "user", "content": [{"type": "input_text",
                                                   "text": f"Question {i}: " + "explain the scheduler again. " * 12}]})
        turns.append({"role": "assistant", "content": f"Answer {i}: " + "it batches requests by tokens. " * 12})
    turns.append({"role": "user", "content": "Now summarise."})
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="coder", input=turns, max_output_tokens=8)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in info.value.body["message"]


def test_codex_shaped_request(http):
    """What Codex CLI (wire_api = "responses") sends: developer messages, a past tool call and its
    output, function, custom and web_search tools, reasoning, include, store false, a stream."""
    body = {
        "model": "general", "instructions": "You are a coding agent. " * 50, "stream": True, "store": False,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command": ["ls"]}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "README.md\nsetup.py"},
        ],
        "tools": [
            {"type": "function", "name": "shell", "description": "Run a command", "strict": False,
             "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                            "required": ["command"]}},
            {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
            {"type": "web_search"},
        ],
        "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "session-1", "max_output_tokens": 8,
    }
    with http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200, r.read()
        text = r.read().decode()
    assert "event: response.created" in text and "event: response.completed" in text


def test_a_tool_type_vllm_does_not_know_is_its_400(http):
    r = http.post("/v1/responses", json={"model": "coder", "input": "hi", "tools": [{"type": "teleport"}]})
    # vLLM's own answer, passed through: a 400 in OpenAI's shape that says what was wrong.
    assert r.status_code == 400, r.text
    assert "teleport" in r.json()["error"]["message"]


def test_rerank_and_score_on_an_embedding_model(http):
    docs = ["vLLM serves language models.", "Bananas are yellow.", "The gateway routes to vLLM servers."]
    r = http.post("/v1/rerank", json={"model": "minilm", "query": "What serves the models?", "documents": docs})
    assert r.status_code == 200, r.text
    ranked = [x["index"] for x in r.json()["results"]]
    assert sorted(ranked) == [0, 1, 2] and ranked[-1] == 1  # the bananas come last
    r = http.post("/v1/score", json={"model": "minilm", "text_1": "model serving", "text_2": docs})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3
    r = http.post("/v1/rerank", json={"model": "coder", "query": "q", "documents": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_scoring"


def test_tokenize_and_detokenize_round_trip(http):
    r = http.post("/tokenize", json={"model": "coder", "prompt": "def add(a, b):"})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert r.json()["count"] == len(tokens) > 0
    r = http.post("/detokenize", json={"model": "coder", "tokens": tokens})
    assert r.status_code == 200 and r.json()["prompt"] == "def add(a, b):"
