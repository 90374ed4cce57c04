"""The fields the gateway understands, checked before a request goes anywhere.

A backend that is not vLLM may answer a wrong value with a 200, a text/plain 500 or
nothing at all; checked here, every family answers the same clear 400 instead.

One table per endpoint: field -> check. A check looks at one value and says what is
wrong with it, or returns None. Only the fields a body has are looked up, and values
that are null mean "the default": a typical request pays a handful of dict lookups.
Fields not in a table (vLLM's extras and the like) go through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from gateway.base.errors import ApiError


class Problem(NamedTuple):
    code: str  # invalid_type (wrong kind of value) or invalid_value (right kind, out of range)
    text: str  # what the value must be, after its name: "must be a number between 0 and 2"
    where: str = ""  # inside the value: "[2].role", ".temperature"


Check = Callable[[Any], Problem | None]
Rules = Mapping[str, Check]

_TYPE, _VALUE = "invalid_type", "invalid_value"


def check(body: dict, rules: Rules, required: str | None = None) -> None:
    """Raise a 400 ApiError naming the first field of *body* that breaks its rule."""
    if required is not None and body.get(required) is None:
        raise ApiError(400, f"'{required}' is required.", code=_TYPE, param=required)
    for name, value in body.items():
        rule = rules.get(name)
        if rule is not None and value is not None:
            problem = rule(value)
            if problem is not None:
                param = name + problem.where
                raise ApiError(400, f"'{param}' {problem.text}.", code=problem.code, param=param)


# --- checks ----------------------------------------------------------------------------------


def _span(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" greater than {lo:g} and at most {hi:g}" if lo_open else f" between {lo:g} and {hi:g}"
    if lo is not None:
        return f" greater than {lo:g}" if lo_open else f" of at least {lo:g}"
    return ""


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    must = "must be an integer" + _span(lo, hi)

    def check_integer(value: Any) -> Problem | None:
        if type(value) is not int:  # bool is an int to Python, not to a client
            return Problem(_TYPE, must)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return Problem(_VALUE, must)
        return None
    return check_integer


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    must = "must be a number" + _span(lo, hi, lo_open)

    def check_number(value: Any) -> Problem | None:
        if type(value) is not int and type(value) is not float:
            return Problem(_TYPE, must)
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        if too_low or (hi is not None and value > hi):
            return Problem(_VALUE, must)
        return None
    return check_number


def of_type(kind: type | tuple[type, ...], must: str) -> Check:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    takes_bool = bool in kinds  # True is an int to Python, not to a client

    def check_type(value: Any) -> Problem | None:
        if isinstance(value, kinds) and (takes_bool or type(value) is not bool):
            return None
        return Problem(_TYPE, must)
    return check_type


def one_of(*allowed: str) -> Check:
    must = "must be one of " + ", ".join(f"'{a}'" for a in allowed)

    def check_one_of(value: Any) -> Problem | None:
        return None if value in allowed and isinstance(value, str) else Problem(_VALUE, must)
    return check_one_of


def list_of(item: Check, must: str, *, non_empty: bool = False) -> Check:
    def check_list(value: Any) -> Problem | None:
        if not isinstance(value, list) or (non_empty and not value):
            return Problem(_TYPE, must)
        for i, element in enumerate(value):
            problem = item(element)
            if problem is not None:
                return problem._replace(where=f"[{i}]{problem.where}")
        return None
    return check_list


def fields(rules: Rules, must: str = "must be an object", required: tuple[str, ...] = ()) -> Check:
    """An object whose own fields follow *rules* (Ollama's options, a chat message)."""
    def check_fields(value: Any) -> Problem | None:
        if not isinstance(value, dict):
            return Problem(_TYPE, must)
        for name in required:
            if value.get(name) is None:
                return Problem(_TYPE, "is required", f".{name}")
        for name, rule in rules.items():
            inner = value.get(name)
            if inner is not None:
                problem = rule(inner)
                if problem is not None:
                    return problem._replace(where=f".{name}{problem.where}")
        return None
    return check_fields


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _prompt(value: Any) -> Problem | None:
    """A string, a list of strings, a list of token ids, or a list of lists of them."""
    must = "must be a string, a list of strings, or a list of token ids (or of lists of them)"
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        return Problem(_TYPE, must)
    first = value[0]
    if isinstance(first, str):
        ok = all(isinstance(v, str) for v in value)
    elif type(first) is int:
        ok = _token_ids(value)
    else:
        ok = all(_token_ids(v) for v in value)
    return None if ok else Problem(_TYPE, must)


STRING = of_type(str, "must be a string")
BOOLEAN = of_type(bool, "must be true or false")
OBJECT = of_type(dict, "must be an object")
OBJECTS = list_of(OBJECT, "must be a list of objects")


def _string_or_strings(value: Any) -> Problem | None:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None
    return Problem(_TYPE, "must be a string or a list of strings")


_CONTENT_PARTS = list_of(fields({"type": STRING}, "must be a content part object", required=("type",)),
                         "must be a list of content parts")


def _content(value: Any) -> Problem | None:
    if isinstance(value, str):
        return None
    if isinstance(value, list):
        return _CONTENT_PARTS(value)
    return Problem(_TYPE, "must be a string, a list of content parts, or null")


def _messages(roles: tuple[str, ...], content: Check, *, non_empty: bool) -> Check:
    message = fields({"role": one_of(*roles), "content": content, "tool_calls": OBJECTS, "name": STRING},
                     "must be an object with 'role' and 'content'", required=("role",))
    return list_of(message, "must be a non-empty list" if non_empty else "must be a list", non_empty=non_empty)


# --- the OpenAI API --------------------------------------------------------------------------

_MAX_TOKENS = integer(1)
_PENALTY = number(-2, 2)
_SAMPLING: dict[str, Check] = {
    "stream": BOOLEAN,
    "stream_options": OBJECT,
    "max_tokens": _MAX_TOKENS,
    "temperature": number(0, 2),
    "top_p": number(0, 1, lo_open=True),
    "top_k": integer(-1),
    "min_p": number(0, 1),
    "frequency_penalty": _PENALTY,
    "presence_penalty": _PENALTY,
    "repetition_penalty": number(0, lo_open=True),
    "seed": integer(),
    "n": integer(1, 128),
    "stop": _string_or_strings,
    "logit_bias": OBJECT,
    "response_format": OBJECT,
    "user": STRING,
}

CHAT = {
    **_SAMPLING,
    "messages": _messages(("system", "user", "assistant", "tool", "developer"), _content, non_empty=True),
    "max_completion_tokens": _MAX_TOKENS,
    "tools": OBJECTS,
    "tool_choice": of_type((str, dict), "must be a string or an object"),
    "parallel_tool_calls": BOOLEAN,
    "logprobs": BOOLEAN,
    "top_logprobs": integer(0, 20),
}
COMPLETIONS = {
    **_SAMPLING,
    "prompt": _prompt,
    "suffix": STRING,
    "echo": BOOLEAN,
    "logprobs": integer(0, 20),
    "best_of": integer(1, 128),
}
EMBEDDINGS = {
    "input": _prompt,
    "dimensions": integer(1),
    "encoding_format": one_of("float", "base64"),
    "user": STRING,
}

# --- the Ollama API --------------------------------------------------------------------------

_OLLAMA_OPTIONS = fields({
    "temperature": number(0, 2),
    "top_p": number(0, 1, lo_open=True),
    "top_k": integer(-1),
    "min_p": number(0, 1),
    "seed": integer(),
    "stop": _string_or_strings,
    "num_predict": integer(-2),  # -1: until done, -2: fill the context
    "num_ctx": integer(1),
    "presence_penalty": _PENALTY,
    "frequency_penalty": _PENALTY,
    "repeat_penalty": number(0, lo_open=True),
})
_OLLAMA_COMMON: dict[str, Check] = {
    "options": _OLLAMA_OPTIONS,
    "stream": BOOLEAN,
    "keep_alive": of_type((str, int, float), "must be a duration string or a number of seconds"),
    "think": of_type((bool, str), "must be true, false, or a level"),
}
OLLAMA_CHAT = {
    **_OLLAMA_COMMON,
    "messages": _messages(("system", "user", "assistant", "tool"), STRING, non_empty=False),
    "tools": OBJECTS,
}
OLLAMA_GENERATE = {
    **_OLLAMA_COMMON,
    "prompt": STRING,
    "suffix": STRING,
    "system": STRING,
    "template": STRING,
    "raw": BOOLEAN,
    "images": list_of(STRING, "must be a list of base64 strings"),
}
OLLAMA_EMBED = {
    **_OLLAMA_COMMON,
    "input": _string_or_strings,
    "truncate": BOOLEAN,
    "dimensions": integer(1),
}
OLLAMA_EMBEDDINGS = {**_OLLAMA_COMMON, "prompt": STRING}  # the older /api/embeddings

# --- the Anthropic Messages API (model and max_tokens required: families/anthropic.py) ---------

# Claude Code (2.1) puts a "system" turn inside messages too; vLLM's Messages API takes it.
_ANTHROPIC_MESSAGE = fields({"role": one_of("user", "assistant", "system"), "content": _content},
                            "must be an object with 'role' and 'content'", required=("role", "content"))
_ANTHROPIC_PROMPT: dict[str, Check] = {
    "messages": list_of(_ANTHROPIC_MESSAGE, "must be a non-empty list", non_empty=True),
    "system": _content,
    "tools": OBJECTS,
    "tool_choice": OBJECT,
    "thinking": OBJECT,
}
ANTHROPIC_COUNT_TOKENS = _ANTHROPIC_PROMPT
ANTHROPIC_MESSAGES = {
    **_ANTHROPIC_PROMPT,
    "max_tokens": _MAX_TOKENS,
    "stream": BOOLEAN,
    "metadata": OBJECT,
    "stop_sequences": list_of(STRING, "must be a list of strings"),
    "temperature": number(0, 2),
    "top_p": number(0, 1, lo_open=True),
    "top_k": integer(-1),
}
