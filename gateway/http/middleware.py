"""The middlewares every request passes, outermost first: an id and one access log line with
its metrics (access), errors in the shape of the client's API (errors), the API key check
(auth: every route but those added with add_public_get) and the key's limits (limits); and the
request id stamped on every response as its headers leave."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.base.errors import HTTP_CODES, ApiError, error_response, shape_error
from gateway.base.observability import request_id_var
from gateway.http.accounting import Account, account, endpoint_label, family_of
from gateway.http.appkeys import (
    ACCESS,
    ACCOUNT,
    BATCH_LANE,
    BATCH_TOKEN,
    CONFIG,
    KEY_NAME,
    METRICS,
    REQUEST_ID,
    UNREAD_BODY,
    USAGE,
)
from gateway.keys.auth import check_key
from gateway.keys.usage import Row

log = logging.getLogger("localai.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

# Deny by default: the routes that answer without a key (health and readiness probes, the WebUI's
# files) are added with add_public_get; every other route, present or future, and whatever no
# route answers (a 404, a 405) needs a key once one is configured.
PUBLIC_RESOURCES: web.AppKey[set[web.AbstractResource]] = web.AppKey("public_resources")


def add_public_get(app: web.Application, path: str, handler: Handler) -> None:
    """A GET (and HEAD) route that answers without a key."""
    resource = app.router.add_get(path, handler).resource
    assert resource is not None  # a route the router made has its resource
    public = app.get(PUBLIC_RESOURCES)
    if public is None:
        public = app[PUBLIC_RESOURCES] = set()
    public.add(resource)
# The mark of a handler that spends none of a key's limits (free_of_key_limits).
_FREE = "localai_free_of_key_limits"
# The mark of a handler a key over its token budget may still call (open_past_budget).
_PAST_BUDGET = "localai_open_past_budget"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in and out, one JSON log line and the request metrics per request."""
    rid = request.headers.get("X-Request-ID")
    if not rid or len(rid) > 128 or not rid.isprintable():
        rid = os.urandom(16).hex()  # a quarter of uuid4().hex's cost
    token = request_id_var.set(rid)
    request[REQUEST_ID] = rid
    acct = request[ACCOUNT] = Account(started=time.monotonic())
    status = 500
    try:
        response = await handler(request)
        # A stream that began as 200 and was broken off by its backend counts as a 502.
        status = 502 if acct.error else response.status
        return response
    except web.HTTPException as exc:  # only from handlers that prepared a stream already
        status = exc.status
        raise
    except BaseException:
        # The client went away (handler cancelled) or something broke mid-stream; a client
        # that hangs up after the stream's final event had its whole answer.
        status = 200 if acct.answered else 499
        raise
    finally:
        key = request.get(KEY_NAME)
        account(request, acct, status, rid, request.app[METRICS], key)
        if acct.model is not None and not acct.discarded:
            record_usage(request, acct, acct.model, status, key)
        request_id_var.reset(token)


def record_usage(request: web.Request, acct: Account, model: str, status: int, key: str | None) -> None:
    """A request that reached a model: its tokens count against its key's budgets at once (in
    memory), and its row goes to the usage store's queue (written by the store's own thread)."""
    prompt, completion = acct.prompt_tokens or 0, acct.completion_tokens or 0
    name = key or ""
    app = request.app
    if prompt or completion:
        app[ACCESS].limiter.spending.add(name, prompt + completion)
        if key is not None:
            metrics = app[METRICS]
            metrics.child(metrics.key_tokens, key).inc(prompt + completion)
    store = app.get(USAGE)
    if store is not None:
        store.record(Row(time.time(), name, model, family_of(request.path), endpoint_label(request), status,
                         prompt, completion, acct.cached_tokens or 0, time.monotonic() - acct.started, acct.ttft,
                         acct.slot_seconds))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON in the shape of the client's API; no traceback reaches a client."""
    response = await _json_errors(request, handler)
    if response.status >= 400 and isinstance(response, web.Response) and not response.prepared:
        response = shape_error(request, response)
        if request.get(UNREAD_BODY):  # the rest of its body may still come on this connection
            response.force_close()
    return response


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, kind = HTTP_CODES.get(exc.status, ("http_error", "invalid_request_error"))
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"No such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            limit = request.app[CONFIG].gateway.max_body_bytes
            message = f"Request body is larger than the limit of {limit} bytes."
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, code=code, type=kind, headers=headers)
    except (RequestPayloadError, HttpProcessingError):
        # The body broke off mid-way (bad chunk framing or Content-Encoding): the client's fault.
        return error_response(400, "The request body could not be read: its chunked framing or "
                                   "Content-Encoding is invalid.", code="malformed_request")
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise  # the client left mid-stream; nothing to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal error in the gateway; see its log for this request id.",
                              code="internal_error", type="server_error")


def _is_public(request: web.Request) -> bool:
    return request.match_info.route.resource in request.app.get(PUBLIC_RESOURCES, ())


# A batch line's request from the gateway's own batch runner (http/batch.py): the runner's secret
# and the name of the key that made the batch, which the line then runs as.
BATCH_TOKEN_HEADER = "X-LocalAI-Batch-Token"
BATCH_KEY_HEADER = "X-LocalAI-Batch-Key"


def _batch_line(request: web.Request) -> bool:
    """A batch line (its key's name set on the request), or False; a wrong token is a 401."""
    token = request.headers.get(BATCH_TOKEN_HEADER)
    if token is None:
        return False
    secret = request.app.get(BATCH_TOKEN)
    if secret is None or not hmac.compare_digest(token.encode(), secret):
        raise ApiError(401, "Incorrect batch token.", code="invalid_api_key", type="authentication_error")
    name = request.headers.get(BATCH_KEY_HEADER, "")
    keyring = request.app[ACCESS].keyring
    if keyring and name not in keyring.key_names():
        # The key was taken out of the key file since the batch was made.
        raise ApiError(401, f"The key '{name}' that made this batch is no longer valid.",
                       code="invalid_api_key", type="authentication_error")
    if keyring:
        request[KEY_NAME] = name
        request.app[ACCESS].limiter.check_expiry(name)
    request[BATCH_LANE] = True
    return True


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keyring = request.app[ACCESS].keyring
    if _batch_line(request):
        return await handler(request)
    if keyring and not _is_public(request):
        key = request[KEY_NAME] = check_key(keyring, request)
        request.app[ACCESS].limiter.check_expiry(key)
    return await handler(request)


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The key's limits (gateway.key_limits), before the handler reads a byte of the body, tokenizes
    or waits for a model: a key over its concurrency or rate gets its 429 here. Every request that
    needs a key counts (generating, retrieve, cancel, load, unload, ...) but for handlers marked
    free_of_key_limits; its concurrency is held until its answer is written."""
    match = request.match_info
    if _is_public(request) or match.http_exception is not None or is_free_of_key_limits(match.handler):
        return await handler(request)
    key = request.get(KEY_NAME, "")  # "" on an open gateway: the default limits hold for everyone together
    limiter = request.app[ACCESS].limiter
    try:
        if request.get(BATCH_LANE):
            limiter.admit_batch_line(key)
            return await handler(request)
        limiter.admit(key, budget=not getattr(match.handler, _PAST_BUDGET, False))
    except ApiError as exc:
        request.app[METRICS].rejections.labels("", exc.code).inc()  # no model yet: the body is unread
        raise
    try:
        return await handler(request)
    finally:
        limiter.done(key)


def is_admin(request: web.Request) -> bool:
    """Whether the request's key is one of gateway.admin_keys (GET /v1/usage/team, /v1/admin/...)."""
    access = request.app[ACCESS]
    # An open gateway (no keys) tells no caller from another: everyone may do everything there.
    return not access.keyring or request.get(KEY_NAME, "") in access.limiter.admin_keys


def free_of_key_limits(handler: H) -> H:
    """Mark a handler that answers from the gateway's own memory (model listings, metrics):
    requests to it spend none of their key's limits."""
    setattr(handler, _FREE, True)
    return handler


def open_past_budget(handler: H) -> H:
    """Mark a handler that spends a key's concurrency and rate but is open to a key past its token
    budget (reading its own usage)."""
    setattr(handler, _PAST_BUDGET, True)
    return handler


def is_free_of_key_limits(handler: object) -> bool:
    return getattr(handler, _FREE, False)


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # On prepare, so streamed answers (whose headers leave before the handler returns) carry it too.
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-ID"] = rid
