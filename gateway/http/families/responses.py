"""The OpenAI Responses API, and vLLM's scoring and tokenizer endpoints, on the chat pipeline.

  POST /v1/responses               create: `pipeline.run` (routing, presets, context guard, admission,
                                   logs, metrics, cancel-on-disconnect); a stream's typed events
                                   (`event: response.created` ... `response.completed`) pass through
  GET  /v1/responses/{id}          retrieve, from the backend that made the response
  POST /v1/responses/{id}/cancel   cancel a background response, likewise
  POST /v1/rerank, /rerank, /v2/rerank, /v1/score, /score, /tokenize, /detokenize:
                                   routed by `model` to the models whose task serves them

vLLM keeps a response in the memory of the server that made it (with
VLLM_ENABLE_RESPONSES_API_STORE=1, which plan.py sets), so an id only means
something to its own backend.  The gateway remembers which backend made each
id, and with which API key (`ResponseOwners`, the newest 100,000) from the
answer's body or the stream's response.created event.  With keys configured, a
response is its key's: retrieving, cancelling or continuing it with another key
is a 404, as is an id the gateway does not remember (older, or made before it
restarted: nothing says whose it is).  On an open gateway an id it doesn't know
is looked for on each ready generating backend in turn.  Found nowhere, it is a
404 in OpenAI's shape and no backend is asked to go on with it.  A
`previous_response_id` continues the conversation where it lives: without
`model` the request goes to that backend; with a model served by another
backend it is a 400, rather than an answer from a model the client did not ask
for.  Retrieving or cancelling takes no generation slot and counts no tokens
(they were counted when the response was made), but spends the key's limits
like any request.

Tools pass through as vLLM takes them (it shows the model function tools and
free-form custom tools, and drops web_search and the other hosted tools), with
one change: vLLM rejects a custom tool with a grammar format, which Codex CLI
sends for apply_patch, so the gateway makes it free-form text (vLLM could not
have held the model to the grammar anyway); and Codex's `additional_tools`
input item, which vLLM refuses, has its tools moved to the request's tools.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web

from gateway.base.errors import ApiError
from gateway.http.accounting import Account
from gateway.http.appkeys import ACCESS, ACCOUNT, KEY_NAME, MONITOR, PINNED_REPLICA, REGISTRY, SESSION
from gateway.http.context import Guarded, guard
from gateway.http.pipeline import CHAT, DETOKENIZE, RERANK, RESPONSES, SCORE, TOKENIZE, read_json_body, run
from gateway.http.proxy import event_json, forward
from gateway.routing.backends import Backend
from gateway.routing.states import State

log = logging.getLogger("localai.responses")

MAX_REMEMBERED_IDS = 100_000
_MAX_ID_LENGTH = 256
_CREATED = b"event: response.created"


class ResponseOwners:
    """Response id -> the name of the backend that made it, the replica (base URL) that
    holds it and the name of the API key it was made with ("" on an open gateway); the
    newest `limit` ids."""

    def __init__(self, limit: int = MAX_REMEMBERED_IDS):
        self.limit = limit
        self._owners: OrderedDict[str, tuple[str, str, str]] = OrderedDict()

    def remember(self, response_id: object, backend: str | None, replica: str | None, key: str = "") -> None:
        if isinstance(response_id, str) and backend is not None and replica is not None:
            self._owners[response_id] = (backend, replica, key)
            self._owners.move_to_end(response_id)
            if len(self._owners) > self.limit:
                self._owners.popitem(last=False)

    def owner(self, response_id: str, key: str | None = None) -> tuple[str, str] | None:
        """Its backend and replica; with `key`, only for a response made with that key."""
        known = self._owners.get(response_id)
        if known is None or (key is not None and known[2] != key):
            return None
        return known[0], known[1]


RESPONSE_OWNERS = web.AppKey("response_owners", ResponseOwners)


class RememberOwner:
    """A pass-through adapter that notes which backend made the response it carries."""

    stream_content_type = "text/event-stream"

    def __init__(self, owners: ResponseOwners, acct: Account, key: str):
        self._owners = owners
        self._acct = acct  # its model and backend: the backend's name and replica once they are known
        self._key = key
        self._seen = False

    def body(self, data: bytes) -> bytes:
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if isinstance(answer, dict):
            self._owners.remember(answer.get("id"), self._acct.model, self._acct.backend, self._key)
        return data

    def events(self, data: bytes) -> bytes:
        # response.created is the first event; after it, nothing more to look at.
        if not self._seen and _CREATED in data:
            self._seen = True
            start = data.index(_CREATED)
            created = event_json(data[start:data.find(b"\n\n", start)])
            response = created.get("response") if isinstance(created, dict) else None
            if isinstance(response, dict):
                self._owners.remember(response.get("id"), self._acct.model, self._acct.backend, self._key)
        return data

    def end(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes:
        # The Responses API's own error event (the SDKs' ResponseErrorEvent), as OpenAI ends a failed stream.
        event = {"type": "error", "code": "backend_error", "message": message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


# --- finding a response's backend --------------------------------------------------------


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"No response with id '{response_id}' is known to any model here.",
                    code="response_not_found", param="response_id")


async def _holds(session: aiohttp.ClientSession, backend: Backend, url: str, response_id: str) -> bool:
    headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    try:
        async with session.get(f"{url}/v1/responses/{quote(response_id, safe='')}", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def find_owner(request: web.Request, response_id: str) -> Backend:
    """The backend that made this response, remembered (with keys: made with this request's key)
    or, on an open gateway, found by asking; 404 otherwise. The request is pinned to the replica
    that holds it."""
    if not response_id or len(response_id) > _MAX_ID_LENGTH or not response_id.isprintable():
        raise _not_found(response_id[:_MAX_ID_LENGTH])
    app = request.app
    registry, owners = app[REGISTRY], app[RESPONSE_OWNERS]
    keyed = bool(app[ACCESS].keyring)
    known = owners.owner(response_id, request.get(KEY_NAME, "") if keyed else None)
    if known is not None and known[0] in registry.backends:
        request[PINNED_REPLICA] = known[1]
        return registry.backends[known[0]]
    if keyed:
        raise _not_found(response_id)  # another key's, or one nothing says whose it is
    for backend in registry.backends.values():
        if backend.state is not State.READY or backend.model.task != "generate":
            continue
        for replica in backend.replicas:
            if await _holds(app[SESSION], backend, replica.url, response_id):
                owners.remember(response_id, backend.name, replica.url)
                request[PINNED_REPLICA] = replica.url
                return backend
    raise _not_found(response_id)


async def _continue_where_it_lives(request: web.Request, body: dict) -> None:
    """Send a request with previous_response_id to the backend (and replica) holding that response."""
    previous = body.get("previous_response_id")
    if previous is None:
        return
    if not isinstance(previous, str):
        raise ApiError(400, "'previous_response_id' must be a string.", code="invalid_type",
                       param="previous_response_id")
    owner = await find_owner(request, previous)
    model = body.get("model")
    if model is None or model == "":
        body["model"] = owner.name
    elif request.app[REGISTRY].resolve(model).backend is not owner:
        raise ApiError(400, f"Response '{previous}' was made by model '{owner.name}', and a conversation "
                            f"continues on the model that holds it: ask for '{owner.name}' or leave "
                            "'model' out.", code="previous_response_model_mismatch",
                       param="previous_response_id")


# --- create --------------------------------------------------------------------------------


_TYPED_FIELDS = (("instructions", str, "a string"), ("tools", list, "a list"), ("stream", bool, "true or false"),
                 ("store", bool, "true or false"), ("background", bool, "true or false"))


def _check_fields(body: dict) -> None:
    """The fields the gateway itself reads; vLLM validates the rest."""
    items = body.get("input")
    if not (isinstance(items, str) or (isinstance(items, list) and all(isinstance(i, dict) for i in items))):
        raise ApiError(400, "'input' must be a string or a list of input items (objects).",
                       code="invalid_type", param="input")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ApiError(400, "'max_output_tokens' must be a positive integer.", code="invalid_type",
                       param="max_output_tokens")
    for name, kind, said in _TYPED_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], kind):
            raise ApiError(400, f"'{name}' must be {said}.", code="invalid_type", param=name)


def _lift_additional_tools(body: dict) -> None:
    """Codex (0.17x, for its newest models' names) sends its tools as an `additional_tools` input
    item, which vLLM refuses ("Unsupported input item type"): they join the request's tools."""
    items = body.get("input")
    if not isinstance(items, list):
        return
    lifted = [item for item in items if isinstance(item, dict) and item.get("type") == "additional_tools"]
    if not lifted:
        return
    body["input"] = [item for item in items if not (isinstance(item, dict) and item.get("type") == "additional_tools")]
    tools = body["tools"] if isinstance(body.get("tools"), list) else []
    body["tools"] = tools + [tool for item in lifted if isinstance(item.get("tools"), list) for tool in item["tools"]]


def _free_form_custom_tools(tools: object) -> None:
    """Custom tools with a grammar (Codex's apply_patch) become free-form: vLLM refuses grammars."""
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            _free_form_custom_tools(tool.get("tools"))
        elif tool.get("type") == "custom" and isinstance(tool.get("format"), dict) \
                and tool["format"].get("type") == "grammar":
            tool["format"] = {"type": "text"}


def _text(content: object) -> str:
    """The text of a Responses content field: a string, or a list of parts with text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _as_message(item: dict) -> dict:
    """One input item as the chat message it is rendered as, for counting its tokens."""
    kind = item.get("type", "message")
    if kind == "message":
        role = "system" if item.get("role") == "developer" else item.get("role")
        return {"role": role if role in ("system", "user", "assistant") else "user",
                "content": _text(item.get("content"))}
    if kind == "function_call":
        call = {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", ""))}
        return {"role": "assistant", "content": None,
                "tool_calls": [{"id": str(item.get("call_id", "")), "type": "function", "function": call}]}
    if kind == "function_call_output":
        return {"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": _text(item.get("output"))}
    # Reasoning, custom tool calls and the rest: their JSON is a fair upper measure.
    return {"role": "assistant", "content": orjson.dumps(item).decode()}


_FUNCTION_KEYS = ("name", "description", "parameters")
_TEXT_INPUT = {"type": "object", "properties": {"input": {"type": "string"}}}


def _shown_tools(tools: list) -> list[dict]:
    """The tools vLLM shows the model, as functions: function tools, those inside a namespace
    (Codex sends one), and custom tools (a one-string function); hosted tools are not shown."""
    shown = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function":
            shown.append(tool)
        elif tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            shown += _shown_tools([t for t in tool["tools"] if isinstance(t, dict) and t.get("type") == "function"])
        elif tool.get("type") == "custom":
            shown.append({**tool, "parameters": _TEXT_INPUT})
    return shown


def chat_view(body: dict) -> dict:
    """The request as a chat body the context guard can count."""
    messages: list[dict] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    messages += [_as_message(item) for item in ([{"role": "user", "content": items}] if isinstance(items, str)
                                                 else items)]
    view: dict = {"messages": messages}
    tools = [{"type": "function", "function": {k: v for k, v in t.items() if k in _FUNCTION_KEYS}}
             for t in _shown_tools(body.get("tools") or [])]
    if tools:
        view["tools"] = tools
    if body.get("max_output_tokens") is not None:
        view["max_tokens"] = body["max_output_tokens"]
    return view


async def guard_responses(session: aiohttp.ClientSession, backend: Backend, body: dict) -> Guarded:
    """The context guard on a Responses body: counted as the chat it renders to; max_output_tokens
    is its max_tokens. An agent's input is never shortened: it passes whole while it fits the window."""
    view = chat_view(body)
    try:
        # The guard caps the view's max_tokens to the room left; it goes back as max_output_tokens below.
        guarded = await guard(session, backend, view, CHAT, may_shorten=False)
    except ApiError as exc:
        if exc.code != "invalid_request":
            raise
        # Our chat rendering of the input is only a measure: the backend judges the real request.
        log.info("could not count a Responses input as chat: %s", exc.message)
        return Guarded(body)
    max_tokens = guarded.body.get("max_tokens")
    if max_tokens is not None and max_tokens != body.get("max_output_tokens"):
        body["max_output_tokens"] = max_tokens
    return Guarded(body, max_tokens_capped=guarded.max_tokens_capped)


async def create_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses."""
    body = await read_json_body(request)
    _check_fields(body)
    _lift_additional_tools(body)
    _free_form_custom_tools(body.get("tools"))
    await _continue_where_it_lives(request, body)
    remember = RememberOwner(request.app[RESPONSE_OWNERS], request[ACCOUNT], request.get(KEY_NAME, ""))
    return await run(request, RESPONSES, body, adapter=remember, guard_with=guard_responses)


# --- retrieve, cancel ----------------------------------------------------------------------


async def _to_owner(request: web.Request, method: str, suffix: str = "") -> web.StreamResponse:
    app = request.app
    response_id = request.match_info["response_id"]
    backend = await find_owner(request, response_id)
    app[REGISTRY].check_serving(backend)
    acct = request[ACCOUNT]
    acct.model, acct.backend = backend.name, backend.url
    path = f"/v1/responses/{quote(response_id, safe='')}{suffix}"
    if request.query_string:
        path += "?" + request.query_string  # stream, starting_after, include
    # A GET sends no body; this one only says whether to relay a stream.
    relay = {"stream": request.query.get("stream", "").lower() in ("true", "1")}
    try:
        return await forward(request, backend, path, relay if method == "GET" else {}, method=method)
    except ApiError as exc:
        if exc.code == "backend_unreachable":
            app[MONITOR].poke(backend.name)
        raise
    finally:
        acct.prompt_tokens = acct.completion_tokens = None  # counted when the response was made


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    """GET /v1/responses/{response_id} (?stream=true replays a background response's events)."""
    return await _to_owner(request, "GET")


async def cancel_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses/{response_id}/cancel."""
    return await _to_owner(request, "POST", "/cancel")


# --- vLLM's scoring and tokenizer endpoints ------------------------------------------------


def _routed(endpoint: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        return await run(request, endpoint, await read_json_body(request))
    handler.__doc__ = f"POST {endpoint}, routed by model to a backend whose task serves it."
    return handler


# The paths clients use -> the endpoint vLLM serves them on.
_VLLM_PATHS = {
    "/v1/rerank": RERANK, "/v2/rerank": RERANK, RERANK: RERANK,
    "/v1/score": SCORE, SCORE: SCORE,
    TOKENIZE: TOKENIZE, DETOKENIZE: DETOKENIZE,
}


def add_routes(app: web.Application) -> None:
    app[RESPONSE_OWNERS] = ResponseOwners()
    app.router.add_post(RESPONSES, create_response)
    app.router.add_get(RESPONSES + "/{response_id}", retrieve_response)
    app.router.add_post(RESPONSES + "/{response_id}/cancel", cancel_response)
    handlers = {endpoint: _routed(endpoint) for endpoint in set(_VLLM_PATHS.values())}
    for path, endpoint in _VLLM_PATHS.items():
        app.router.add_post(path, handlers[endpoint])
