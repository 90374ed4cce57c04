"""The context-window guard: chat prompts are shortened toward `context_limit` x max_model_len,
counted with the backend's own tokenizer and chat template, never silently; a request is refused
only when it cannot fit the window at all, so the guard is never stricter than vLLM.

Only chat conversations are shortened (OpenAI chat, the WebUI, Ollama): a coding agent's
Anthropic or Responses request carries tool state that dropping turns would corrupt, and the
agent compacts its own history, so those pass whole while they fit the window.

Short prompts pay nothing: a cheap upper bound (every token of a byte-level
tokenizer covers at least one byte, plus generous room for the template)
shows they are far below the limit, and the backend is not asked at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.base.bounded import TooLarge, read_at_most
from gateway.base.errors import ApiError, message_of
from gateway.routing.backends import Backend

log = logging.getLogger("localai.context")

# The Anthropic Messages endpoint: its bodies are counted with the backend's count_tokens.
MESSAGES = "/v1/messages"

# Template tokens per message (role markers, separators) and per request, generously.
_PER_MESSAGE = 16
_PER_REQUEST = 64
_PER_TOOL_REQUEST = 512  # tool instructions some templates add


@dataclass
class Guarded:
    body: dict
    dropped: int = 0  # messages dropped to fit
    max_tokens_capped: int | None = None  # the answer's new limit, when the one asked for didn't fit


# Where clients say how long an answer may get: OpenAI chat and completions (and Anthropic
# Messages), OpenAI's newer name, the Responses API.  Ollama's num_predict arrives as max_tokens.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


# The shortest answer a prompt must leave room for: vLLM serves a prompt of max_model_len - 1 tokens.
MIN_ANSWER_TOKENS = 1


def prompt_limit(backend: Backend, window: int) -> int:
    """The prompt size chats are shortened toward: context_limit x max_model_len, and room to answer."""
    return min(int(backend.model.context_limit * window), window - MIN_ANSWER_TOKENS)


def requested_max_tokens(body: dict) -> int | None:
    asked = [v for f in MAX_TOKENS_FIELDS if isinstance(v := body.get(f), int) and v > 0]
    return max(asked) if asked else None


def cap_max_tokens(body: dict, room: int) -> int | None:
    """Lower every max-tokens field above *room* (what the window leaves after the prompt) to it,
    as vLLM itself does; the new value, or None when the request asked for no more than fits."""
    capped = None
    for name in MAX_TOKENS_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and value > room:
            body[name] = capped = room
    thinking = body.get("thinking")  # Anthropic's: its budget must stay below max_tokens
    if capped is not None and isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int) \
            and thinking["budget_tokens"] >= capped:
        body["thinking"] = {**thinking, "budget_tokens": capped - 1}
    return capped


def _text_bytes(content: object) -> int | None:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                return None  # images and the like: no cheap bound
            total += len(part["text"].encode())
        return total
    return None


def upper_bound(body: dict, path: str) -> int | None:
    """Tokens the prompt can at most take, or None when no cheap bound exists."""
    if path == MESSAGES:
        # Anthropic blocks (text, tool_use, tool_result) render as at most their JSON's bytes.
        dumped = orjson.dumps([body.get("system"), body["messages"], body.get("tools")])
        if b'"image"' in dumped or b'"document"' in dumped:
            return None
        tools = _PER_TOOL_REQUEST if body.get("tools") else 0
        return len(dumped) + _PER_REQUEST + _PER_MESSAGE * len(body["messages"]) + tools
    if "messages" in body:
        total = _PER_REQUEST
        for message in body["messages"]:
            n = _text_bytes(message.get("content"))
            if n is None:
                return None
            total += n + _PER_MESSAGE
            if message.get("tool_calls"):
                total += len(orjson.dumps(message["tool_calls"]))
        if body.get("tools"):
            total += _PER_TOOL_REQUEST + len(orjson.dumps(body["tools"]))
        return total
    prompt = body.get("prompt")
    return len(prompt.encode()) + _PER_REQUEST if isinstance(prompt, str) else None


# The most of a token count's answer read (vLLM's /tokenize lists the tokens: a 1M-token prompt is ~8 MB).
_COUNT_ANSWER_LIMIT = 32 * 1024 * 1024


async def count_tokens(session: aiohttp.ClientSession, backend: Backend, body: dict, path: str
                       ) -> int | None:
    """The prompt's size by the backend's own tokenizer and chat template (vLLM's /tokenize,
    or its /v1/messages/count_tokens for Anthropic bodies)."""
    counter, answer_key = "/tokenize", "count"
    if path == MESSAGES:
        counter, answer_key = MESSAGES + "/count_tokens", "input_tokens"
        request = {k: body[k] for k in ("messages", "system", "tools", "tool_choice") if k in body}
        request["model"] = backend.served_id
    elif "messages" in body:
        request = {"model": backend.served_id, "messages": body["messages"], "add_generation_prompt": True}
        if body.get("tools"):
            request["tools"] = body["tools"]
    elif "prompt" in body:
        request = {"model": backend.served_id, "prompt": body["prompt"]}
    else:  # a body this guard can't read (another API's input): the backend judges it
        return None
    headers = {"Content-Type": "application/json"}
    if backend.api_key:
        headers["Authorization"] = f"Bearer {backend.api_key}"
    try:
        async with session.post(backend.url + counter, data=orjson.dumps(request), headers=headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
            if r.status != 200:
                if r.status == 404:  # not vLLM: nothing to count with
                    return None
                raise ApiError(r.status if r.status < 500 else 502, await _error_text(r),
                               code="invalid_request" if r.status < 500 else "backend_error")
            answer = orjson.loads(await read_at_most(r, _COUNT_ANSWER_LIMIT))
            count = answer.get(answer_key) if isinstance(answer, dict) else None
            if not isinstance(count, int) or isinstance(count, bool):
                raise ValueError(f"its answer has no integer {answer_key!r}")
            return count
    except (aiohttp.ClientError, TimeoutError, ValueError, TooLarge) as exc:
        log.warning("could not count tokens with %s: %s", backend.name, exc)
        return None


async def _error_text(r: aiohttp.ClientResponse) -> str:
    try:
        message = message_of(await read_at_most(r, 65536))
    except TooLarge:
        message = None
    return message or f"the backend answered HTTP {r.status} when counting tokens"


def _starts_turn(message: dict) -> bool:
    """A user message, unless it only carries tool results (Anthropic's shape for them): those
    belong to the assistant's tool call before them and are never split from it."""
    if message.get("role") != "user":
        return False
    content = message.get("content")
    return not (isinstance(content, list) and content
                and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content))


def _turn_starts(messages: list[dict], latest_user: int) -> list[int]:
    """Indices where droppable turns begin: each user message before the latest one,
    together with the assistant and tool messages that answer it."""
    return [i for i in range(latest_user) if _starts_turn(messages[i])]


def _without_turns(messages: list[dict], starts: list[int], n: int, latest_user: int) -> list[dict]:
    """The conversation minus its n oldest turns (system messages always stay)."""
    if n == 0:
        return messages
    cut_end = starts[n] if n < len(starts) else latest_user
    # Messages before the first user turn (other than system) belong to no turn; drop them with it.
    return [m for i, m in enumerate(messages) if i >= cut_end or m.get("role") == "system"]


async def guard(session: aiohttp.ClientSession, backend: Backend, body: dict, path: str, *,
                may_shorten: bool = True) -> Guarded:
    """Shorten a chat toward the model's context_limit (dropping old turns, unless its context_policy
    is 'reject' or the caller says not to), refuse only what cannot fit the window, then cap
    max_tokens to the room left: never stricter than vLLM."""
    window = backend.max_model_len
    if not window:
        return Guarded(body)
    target = prompt_limit(backend, window)
    most = window - MIN_ANSWER_TOKENS
    bound = upper_bound(body, path)
    if bound is not None and bound <= target and bound + (requested_max_tokens(body) or 0) <= window:
        return Guarded(body)
    counted = await count_tokens(session, backend, body, path)
    if counted is None:
        return Guarded(body)
    messages = body.get("messages")
    user_idx = [i for i, m in enumerate(messages or []) if _starts_turn(m)]
    agent = not may_shorten or path == MESSAGES
    shortens = not agent and backend.model.context_policy == "truncate"
    if counted <= target or not (shortens and messages and user_idx):
        if counted > most:
            raise _too_long(backend, counted, "agent" if agent else "chat" if shortens else "reject", path)
        return Guarded(body, max_tokens_capped=cap_max_tokens(body, window - counted))
    assert messages is not None
    latest_user = user_idx[-1]
    starts = _turn_starts(messages, latest_user)
    if not starts and any(m.get("role") != "system" for m in messages[:latest_user]):
        starts = [0]
    if not starts:
        return _kept_whole(backend, body, counted, window, path)
    # Fewest dropped turns that reach the target: binary search, each probe one count.
    lo, hi, fit_count = 1, len(starts), None
    trimmed_body = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = {**body, "messages": _without_turns(messages, starts, mid, latest_user)}
        n = await count_tokens(session, backend, candidate, path)
        if n is not None and n <= target:
            hi, fit_count, trimmed_body = mid - 1, n, candidate
        else:
            lo = mid + 1
    if trimmed_body is None:
        # The target is out of reach: the shortest conversation (system + latest turn) is the
        # nearest to it, and it is served as long as it fits the window.
        candidate = {**body, "messages": _without_turns(messages, starts, len(starts), latest_user)}
        n = await count_tokens(session, backend, candidate, path)
        if n is None or n > most:
            return _kept_whole(backend, body, counted, window, path)
        trimmed_body, fit_count = candidate, n
    assert fit_count is not None
    dropped = len(messages) - len(trimmed_body["messages"])
    log.info("context guard dropped %d messages: %d tokens, shortened to %d (target %d)", dropped, counted,
             fit_count, target,
             extra={"model": backend.name, "dropped_messages": dropped, "prompt_tokens_before": counted,
                    "prompt_tokens_after": fit_count, "allowed_tokens": target})
    return Guarded(trimmed_body, dropped=dropped,
                   max_tokens_capped=cap_max_tokens(trimmed_body, window - fit_count))


def _kept_whole(backend: Backend, body: dict, counted: int, window: int, path: str) -> Guarded:
    """A conversation dropping turns cannot bring toward the target: whole, if the window holds it."""
    if counted > window - MIN_ANSWER_TOKENS:
        raise _too_long(backend, counted, "latest", path)
    return Guarded(body, max_tokens_capped=cap_max_tokens(body, window - counted))


def _too_long(backend: Backend, counted: int, why: str, path: str) -> ApiError:
    """400 context_length_exceeded, worded as the client's API words it: coding agents read the
    wording to decide to compact their history (Anthropic's "prompt is too long", OpenAI's
    "maximum context length")."""
    hint = {
        "agent": "an agent's request is never shortened",
        "reject": "this model's context_policy is 'reject'",
        "latest": "the system prompt and the latest message alone are too long",
    }.get(why, "there is nothing older to drop")
    window = backend.max_model_len or 0  # the guard runs only with a window
    if path == MESSAGES:
        message = f"prompt is too long: {counted} tokens > {window - MIN_ANSWER_TOKENS} maximum ({hint})"
    else:
        message = (f"This model's maximum context length is {window} tokens. However, your prompt has "
                   f"{counted} tokens, leaving no room for an answer ({hint}).")
    return ApiError(400, message, code="context_length_exceeded", param="messages")
