"""Every error the gateway itself makes, in OpenAI's shape, and the other shapes API families register.

Handlers raise ApiError; the error middleware (app.py) makes the OpenAI-shaped
response, then hands it to the reshaper an API family registered for the
request's path prefix (Ollama's {"error": "..."}, Anthropic's typed errors).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web


class ApiError(Exception):
    """Raised anywhere on the request path; the error middleware turns it into a response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.message, code=self.code, type=self.type,
                              param=self.param, headers=self.headers)


def error_response(status: int, message: str, *, code: str, type: str = "invalid_request_error",
                   param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


def message_of(raw: bytes) -> str | None:
    """The message in an error body: OpenAI's shape, a bare string, vLLM's older {"message"} or
    FastAPI's {"detail"}; None when it has none."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    for key in ("message", "detail"):
        if isinstance(body.get(key), str):
            return body[key]
    return None


def error_event(message: str, *, code: str, type: str = "server_error", param: str | None = None) -> bytes:
    """An error as the last SSE event of a stream whose status line left already."""
    return b"data: " + orjson.dumps({"error": {"message": message, "type": type, "param": param,
                                               "code": code}}) + b"\n\n"


def error_message(response: web.Response) -> str:
    """The message of an error response: ours, a backend's (OpenAI-, Anthropic- or FastAPI-shaped), or its text."""
    raw = response.body if isinstance(response.body, bytes) else b""
    return message_of(raw) or raw.decode(errors="replace").strip() or response.reason or f"HTTP {response.status}"


def reshaped_headers(response: web.StreamResponse) -> dict[str, str]:
    """An error response's headers (Retry-After, Allow...) for its reshaped copy."""
    return {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}


# aiohttp's own HTTP exceptions (no route, wrong method, body too large) mapped to codes.
HTTP_CODES = {
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error"),
    415: ("unsupported_media_type", "invalid_request_error"),
}


# An API family's error shape: an OpenAI-shaped error response in, the family's own out.
Reshape = Callable[[web.Response], web.Response]
# Whether a request under the prefix speaks the family's API (e.g. sends its version header).
Speaks = Callable[[web.Request], bool]
ERROR_SHAPES = web.AppKey("error_shapes", list)


def register_error_shape(app: web.Application, prefix: str, reshape: Reshape, when: Speaks | None = None) -> None:
    """Errors on paths under `prefix` leave in this family's shape (the longest prefix wins),
    for every request there or only those `when` picks out."""
    shapes: list[tuple[str, Reshape, Speaks | None]] = app.setdefault(ERROR_SHAPES, [])
    shapes.append((prefix, reshape, when))
    shapes.sort(key=lambda entry: len(entry[0]), reverse=True)


def shape_error(request: web.Request, response: web.Response, app: web.Application | None = None) -> web.Response:
    """`app`: for a request that was never routed (the connection handler's refusals)."""
    for prefix, reshape, when in (app or request.app).get(ERROR_SHAPES, ()):
        if request.path.startswith(prefix) and (when is None or when(request)):
            return reshape(response)
    return response
