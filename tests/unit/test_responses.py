"""The Responses API (create, stream, retrieve, cancel) and vLLM's rerank/score/tokenize
endpoints, through the gateway to fake backends."""

import asyncio

import pytest

from gateway.http.families.responses import ResponseOwners, chat_view
from tests.fakebackend import FakeBackend
from tests.unit.test_gateway import assert_openai_error, hang_up_midway

HELLO = {"input": "hello"}


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of each event of a Responses stream."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((fields.get("event", ""), fields["data"]))
    return events


def log_line(s, path: str) -> dict:
    return [line for line in s.log_lines() if line.get("path") == path][-1]


async def create(s, **body) -> dict:
    async with s.http.post(s.url + "/v1/responses", json={**HELLO, **body}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def two_models(stack):
    coder, general = FakeBackend("coder-id"), FakeBackend("general-id")
    s = await stack({"coder": coder, "general": (general, {"presets": {"po": {"temperature": 0.5,
                                                                               "max_tokens": 50}}})})
    return s, coder, general


# --- create ------------------------------------------------------------------------------


async def test_create_routes_by_model_applies_presets_and_counts_usage(stack):
    s, coder, general = await two_models(stack)
    answer = await create(s, model="po")
    assert answer["id"].startswith("resp_") and answer["status"] == "completed"
    assert coder.received == []
    sent = general.received[-1]
    assert sent["model"] == "general-id" and sent["temperature"] == 0.5
    assert sent["max_output_tokens"] == 50 and "max_tokens" not in sent  # the Responses API's name
    line = log_line(s, "/v1/responses")
    assert line["model"] == "general" and line["status"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 5)
    assert 'localai_completion_tokens_total{model="general"} 5.0' in s.metrics_text()


async def test_stream_passes_typed_events_through_and_counts_usage(stack):
    fake = FakeBackend(chunks=4)
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/responses", json={**HELLO, "stream": True}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Request-ID"]
        events = sse_events(await r.text())
    names = [name for name, _ in events]
    assert names == ["response.created", "response.in_progress"] + ["response.output_text.delta"] * 4 \
        + ["response.completed"]
    assert '"input_tokens":7' in events[-1][1]  # the usage event reaches the client untouched
    assert "stream_options" not in fake.received[-1]  # not a Responses API field
    line = log_line(s, "/v1/responses")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 4) and "ttft_ms" in line
    assert 'localai_completion_tokens_total{model="m"} 4.0' in s.metrics_text()


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_response(stack, stream):
    fake = FakeBackend(chunks=1000, itl=0.01)
    s = await stack({"m": fake})
    await hang_up_midway(s.url + "/v1/responses", fake, {**HELLO, "stream": stream})
    await fake.wait_for(lambda f: f.active == 0 and f.cancelled == 1, timeout=3)
    assert fake.completed == 0
    assert log_line(s, "/v1/responses")["status"] == 499


async def test_queue_full_is_429_for_responses_too(stack):
    fake = FakeBackend(chunks=2, gate=asyncio.Event())
    s = await stack({"m": (fake, {"max_concurrency": 1})}, max_queue=0)
    first = asyncio.create_task(s.http.post(s.url + "/v1/responses", json={**HELLO, "stream": True}))
    await fake.wait_for(lambda f: f.active == 1)
    async with s.http.post(s.url + "/v1/responses", json=HELLO) as r:
        assert r.status == 429
        assert_openai_error(await r.json(), "queue_full")
    fake.gate.set()
    async with await first as r:
        assert r.status == 200
        await r.read()


async def test_codex_grammar_tools_become_free_form_text_and_others_pass(stack):
    fake = FakeBackend()
    s = await stack({"m": fake})
    tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}},
             {"type": "custom", "name": "apply_patch",
              "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
             {"type": "web_search"}]
    await create(s, tools=tools, store=False, include=["reasoning.encrypted_content"],
                 reasoning={"effort": "medium"})
    sent = fake.received[-1]
    assert sent["tools"] == [tools[0], {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
                             tools[2]]
    assert (sent["store"], sent["include"], sent["reasoning"]) == (False, ["reasoning.encrypted_content"],
                                                                   {"effort": "medium"})


async def test_codex_additional_tools_item_becomes_the_requests_tools(stack):
    """Codex 0.171 sends its tools for its newest model names as an input item vLLM refuses."""
    fake = FakeBackend()
    s = await stack({"m": fake})
    namespace = {"type": "namespace", "name": "functions", "description": "", "tools": [
        {"type": "custom", "name": "exec", "format": {"type": "grammar", "syntax": "lark", "definition": "s: /.+/"}},
        {"type": "function", "name": "shell", "parameters": {"type": "object"}}]}
    said = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}
    await create(s, input=[{"type": "additional_tools", "id": "at_1", "role": "developer", "tools": [namespace]},
                           said])
    sent = fake.received[-1]
    assert sent["input"] == [said]
    assert sent["tools"] == [{**namespace, "tools": [{**namespace["tools"][0], "format": {"type": "text"}},
                                                     namespace["tools"][1]]}]


# --- ids lead back to their backend ------------------------------------------------------


async def test_retrieve_and_cancel_go_to_the_backend_that_made_the_response(stack):
    s, coder, general = await two_models(stack)
    made = await create(s, model="general")
    async with s.http.get(s.url + f"/v1/responses/{made['id']}") as r:
        assert r.status == 200
        assert (await r.json())["id"] == made["id"]
    # A finished response can't be cancelled: the owner says so, in OpenAI's shape.
    async with s.http.post(s.url + f"/v1/responses/{made['id']}/cancel") as r:
        assert r.status == 400 and "Cannot cancel" in (await r.json())["error"]["message"]
    assert coder.looked_up == [] and general.looked_up == [made["id"], made["id"]]
    assert log_line(s, f"/v1/responses/{made['id']}")["model"] == "general"
    # Ids don't become metric labels; retrieving counts no tokens a second time.
    metrics = s.metrics_text()
    assert 'endpoint="/v1/responses/{response_id}"' in metrics and made["id"] not in metrics
    assert 'localai_completion_tokens_total{model="general"} 5.0' in metrics


async def test_a_streamed_response_is_remembered_and_cancelled_while_it_runs(stack):
    coder, general = FakeBackend("coder-id"), FakeBackend("general-id", chunks=2, gate=asyncio.Event())
    s = await stack({"coder": coder, "general": general})
    async with s.http.post(s.url + "/v1/responses", json={**HELLO, "model": "general", "stream": True}) as r:
        first = await r.content.readuntil(b"\n\n")  # response.created
        response_id = first.split(b'"id":"')[1].split(b'"')[0].decode()
        async with s.http.post(s.url + f"/v1/responses/{response_id}/cancel") as c:
            assert c.status == 200 and (await c.json())["status"] == "cancelled"
        general.gate.set()  # the one held delta, then response.completed
        await r.read()
    assert coder.looked_up == []


async def test_previous_response_id_continues_on_its_model(stack):
    s, coder, general = await two_models(stack)
    made = await create(s, model="general")
    # No model: the request goes where the conversation lives, not to the default (coder).
    await create(s, previous_response_id=made["id"])
    assert general.received[-1]["previous_response_id"] == made["id"] and coder.received == []
    # A model of another backend: a clear 400, and that backend sees nothing.
    async with s.http.post(s.url + "/v1/responses",
                           json={**HELLO, "model": "coder", "previous_response_id": made["id"]}) as r:
        assert r.status == 400
        body = await r.json()
    assert_openai_error(body, "previous_response_model_mismatch")
    assert "'general'" in body["error"]["message"]
    assert coder.received == []


async def test_unknown_response_id_is_404_and_reaches_no_generation(stack):
    s, coder, general = await two_models(stack)
    for method, path in (("GET", "/v1/responses/resp_nope"), ("POST", "/v1/responses/resp_nope/cancel")):
        async with s.http.request(method, s.url + path) as r:
            assert r.status == 404
            assert_openai_error(await r.json(), "response_not_found")
    async with s.http.post(s.url + "/v1/responses", json={**HELLO, "previous_response_id": "resp_nope"}) as r:
        assert r.status == 404
        assert_openai_error(await r.json(), "response_not_found")
    assert coder.received == [] and general.received == []


def test_the_id_map_keeps_the_newest_ids():
    owners = ResponseOwners(limit=2)
    for response_id, model in (("a", "m1"), ("b", "m2"), ("a", "m1"), ("c", "m2")):
        owners.remember(response_id, model, f"http://{model}")
    # "a" was remembered again after "b", so "b" is the oldest and goes.
    assert (owners.owner("a"), owners.owner("b"), owners.owner("c")) == (("m1", "http://m1"), None,
                                                                         ("m2", "http://m2"))


async def test_an_id_made_before_a_restart_is_found_by_asking_each_backend(stack):
    s, coder, general = await two_models(stack)
    general.stored["resp_old"] = {"id": "resp_old", "object": "response", "status": "completed", "output": []}
    for _ in range(2):
        async with s.http.get(s.url + "/v1/responses/resp_old") as r:
            assert r.status == 200 and (await r.json())["id"] == "resp_old"
    # Asked for once (both backends), then remembered: the second retrieve asks the owner only.
    assert coder.looked_up == ["resp_old"] and general.looked_up == ["resp_old"] * 3


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ({"input": 5}, "input"),
    ({"input": ["hello"]}, "input"),
    ({}, "input"),
    ({**HELLO, "max_output_tokens": "10"}, "max_output_tokens"),
    ({**HELLO, "max_output_tokens": True}, "max_output_tokens"),
    ({**HELLO, "max_output_tokens": 0}, "max_output_tokens"),
    ({**HELLO, "stream": "yes"}, "stream"),
    ({**HELLO, "previous_response_id": 5}, "previous_response_id"),
    ({**HELLO, "instructions": ["be terse"]}, "instructions"),
    ({**HELLO, "tools": {"type": "function"}}, "tools"),
    ({**HELLO, "model": 3}, "model"),
])
async def test_bad_fields_are_400_and_not_forwarded(stack, body, param):
    fake = FakeBackend()
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/responses", json=body) as r:
        assert r.status == 400
        answer = await r.json()
    assert_openai_error(answer, "invalid_type")
    assert answer["error"]["param"] == param
    assert fake.received == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"input"'])
async def test_malformed_bodies_are_400(stack, raw):
    fake = FakeBackend()
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/responses", data=raw, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "invalid_json")
    assert fake.received == []


# --- the context guard -------------------------------------------------------------------


def long_input(turns: int, words: int) -> list[dict]:
    items: list[dict] = []
    for i in range(turns):
        items.append({"role": "user", "content": [{"type": "input_text", "text": f"q{i} " + "word " * words}]})
        items.append({"type": "message", "role": "assistant",
                      "content": [{"type": "output_text", "text": f"a{i} " + "word " * words}]})
    items.append({"role": "user", "content": "latest question"})
    return items


async def test_an_agents_input_passes_whole_until_the_window_cannot_hold_it(stack):
    fake = FakeBackend(max_model_len=400)  # chats are shortened toward 300 tokens; the fake counts words
    s = await stack({"m": fake})
    items = long_input(4, 40)  # over 300 tokens, under 400
    body = {"input": items, "instructions": "Be terse."}
    async with s.http.post(s.url + "/v1/responses", json=body) as r:
        assert r.status == 200 and "X-LocalAI-Truncated-Messages" not in r.headers
    assert fake.received[-1]["input"] == items
    async with s.http.post(s.url + "/v1/responses", json={**body, "input": long_input(10, 40)}) as r:
        assert r.status == 400
        error = await r.json()
    assert error["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 400 tokens" in error["error"]["message"]


def test_the_guard_counts_the_tools_vllm_shows_the_model():
    tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}},
             {"type": "namespace", "name": "mcp", "tools": [{"type": "function", "name": "read", "parameters": {}}]},
             {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
             {"type": "web_search"}]
    view = chat_view({"input": [{"role": "developer", "content": "Sandbox: none."}], "tools": tools})
    assert [t["function"]["name"] for t in view["tools"]] == ["shell", "read", "apply_patch"]
    assert view["messages"] == [{"role": "system", "content": "Sandbox: none."}]


async def test_max_output_tokens_is_capped_to_the_room_the_window_leaves(stack):
    fake = FakeBackend(max_model_len=400)
    s = await stack({"m": (fake, {"context_policy": "reject"})})
    body = {"input": long_input(1, 100), "max_output_tokens": 350}
    async with s.http.post(s.url + "/v1/responses", json=body) as r:
        assert r.status == 200
        capped = int(r.headers["X-LocalAI-Max-Tokens-Capped"])
    # The prompt fits, prompt + 350 doesn't: the backend is asked for what the window still holds.
    assert 0 < capped < 350 and fake.received[-1]["max_output_tokens"] == capped
    async with s.http.post(s.url + "/v1/responses", json={**body, "max_output_tokens": 50}) as r:
        assert r.status == 200 and "X-LocalAI-Max-Tokens-Capped" not in r.headers
    assert fake.received[-1]["max_output_tokens"] == 50


# --- rerank, score, tokenize -------------------------------------------------------------


async def scoring_stack(stack, **gateway):
    chat, reranker, embedder = FakeBackend("chat-id"), FakeBackend("rr-id"), FakeBackend("emb-id")
    s = await stack({"chat": chat, "rr": (reranker, {"task": "score"}), "emb": (embedder, {"task": "embed"})},
                    **gateway)
    return s, chat, reranker, embedder


async def test_rerank_and_score_go_to_models_that_serve_them(stack):
    s, chat, reranker, embedder = await scoring_stack(stack)
    rerank = {"model": "rr", "query": "q", "documents": ["a", "b"]}
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        async with s.http.post(s.url + path, json=rerank) as r:
            assert r.status == 200, await r.text()
            assert [x["index"] for x in (await r.json())["results"]] == [0, 1]
    score = {"model": "emb", "text_1": "q", "text_2": ["a", "b", "c"]}
    for path in ("/v1/score", "/score"):
        async with s.http.post(s.url + path, json=score) as r:
            assert r.status == 200 and len((await r.json())["data"]) == 3
    assert [b["model"] for b in reranker.received] == ["rr-id"] * 3
    assert [b["model"] for b in embedder.received] == ["emb-id"] * 2
    assert log_line(s, "/v1/rerank")["model"] == "rr" and log_line(s, "/v1/score")["prompt_tokens"] == 12
    assert chat.received == []


async def test_models_that_dont_serve_an_endpoint_say_so(stack):
    s, chat, reranker, embedder = await scoring_stack(stack)
    cases = [("/v1/rerank", {"model": "chat", "query": "q", "documents": ["a"]}, "model_not_scoring"),
             ("/v1/score", {"model": "chat", "text_1": "q", "text_2": "a"}, "model_not_scoring"),
             ("/v1/chat/completions", {"model": "rr", "messages": [{"role": "user", "content": "hi"}]},
              "model_is_scoring"),
             ("/v1/responses", {"model": "emb", **HELLO}, "model_is_embedding"),
             ("/v1/embeddings", {"model": "rr", "input": "hi"}, "model_not_embedding")]
    for path, body, code in cases:
        async with s.http.post(s.url + path, json=body) as r:
            assert r.status == 400, path
            assert_openai_error(await r.json(), code)
    assert chat.received == reranker.received == embedder.received == []


async def test_tokenize_and_detokenize_route_by_model_and_need_a_key(stack):
    s, chat, reranker, _ = await scoring_stack(stack, api_keys=["sk-test"])
    for path in ("/tokenize", "/detokenize", "/rerank", "/score"):
        async with s.http.post(s.url + path, json={"model": "chat"}) as r:
            assert r.status == 401, path
    auth = {"Authorization": "Bearer sk-test"}
    async with s.http.post(s.url + "/tokenize", json={"model": "rr", "prompt": "one two three"}, headers=auth) as r:
        assert r.status == 200 and (await r.json())["count"] == 3
    assert reranker.tokenize_calls == 1 and chat.tokenize_calls == 0
    async with s.http.post(s.url + "/detokenize", json={"model": "chat", "tokens": [1, 2]}, headers=auth) as r:
        assert r.status == 200 and (await r.json())["prompt"] == "t1 t2"
    assert chat.received[-1]["model"] == "chat-id"
