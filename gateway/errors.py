"""Every error the gateway itself makes, in OpenAI's shape."""

from __future__ import annotations

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


# aiohttp's own HTTP exceptions (no route, wrong method, body too large) mapped to codes.
HTTP_CODES = {
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error"),
    415: ("unsupported_media_type", "invalid_request_error"),
}
