"""The aiohttp application: one endpoint in front of every model, speaking several APIs.

Middlewares wrap every request: an id and one access log line with its
metrics (access), errors in the shape of the client's API (errors), and the
API key check (auth).  Inside, pipeline.py carries the request path itself:
parse, route, prepare, guard, admit, proxy.  The API families
(gateway/families/) add thin handlers over it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app.reload import RELOADER, Reloader
from gateway.app.switches import switches
from gateway.base.errors import HTTP_CODES, ApiError, error_response, shape_error
from gateway.base.observability import Metrics, request_id_var
from gateway.config.schema import Config
from gateway.http.accounting import Account, account
from gateway.http.appkeys import (
    ACCESS,
    ACCOUNT,
    CONFIG,
    KEY_NAME,
    LIFECYCLE,
    METRICS,
    MONITOR,
    REGISTRY,
    REQUEST_ID,
    SESSION,
    UPSTREAM_TIMEOUT,
)
from gateway.http.families import add_all_routes
from gateway.http.pipeline import json_response
from gateway.keys.auth import check_key
from gateway.keys.keyring import Access, keyring_of, load_keyring
from gateway.lifecycle.manager import Lifecycle
from gateway.lifecycle.processes import Supervisor
from gateway.routing.backends import HealthMonitor, Registry, State

if TYPE_CHECKING:
    from gateway.lifecycle.units import SystemdUnits

log = logging.getLogger("localai.gateway")

# What runs load: on_demand models' servers here, when the gateway does: `localai up`'s
# supervisor, or their systemd units (`localai gateway --units`); set before the app starts.
SUPERVISOR = web.AppKey("supervisor", Supervisor)
UNITS: web.AppKey[SystemdUnits] = web.AppKey("units")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The WebUI bundle: built into webui/dist in a source tree, shipped as package data in a wheel.
_SOURCE_WEBUI = Path(__file__).resolve().parents[2] / "webui" / "dist"
_PACKAGED_WEBUI = Path(__file__).resolve().parents[1] / "webui_dist"

# Paths that need a key. Health and readiness probes and the WebUI's static files don't.
_PROTECTED_PREFIXES = ("/v1/", "/api/", "/metrics", "/v2/rerank", "/rerank", "/score", "/tokenize",
                       "/detokenize")


# --- middlewares -------------------------------------------------------------


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
        account(request, acct, status, rid, request.app[METRICS], request.get(KEY_NAME))
        request_id_var.reset(token)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON in the shape of the client's API; no traceback reaches a client."""
    response = await _json_errors(request, handler)
    if response.status >= 400 and isinstance(response, web.Response) and not response.prepared:
        return shape_error(request, response)
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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keyring = request.app[ACCESS].keyring
    if keyring and request.path.startswith(_PROTECTED_PREFIXES):
        request[KEY_NAME] = check_key(keyring, request)
    return await handler(request)


# --- service handlers ------------------------------------------------------------


def _holds_key(request: web.Request) -> bool:
    keyring = request.app[ACCESS].keyring
    if not keyring:
        return True  # an open gateway shows everything to everyone
    try:
        check_key(keyring, request)
    except ApiError:
        return False
    return True


async def health(request: web.Request) -> web.Response:
    """Liveness and each model's state, for probes that carry no key. Why a model is down
    (backend URLs, exception text) only for a caller that could read /v1/models anyway."""
    registry = request.app[REGISTRY]
    if _holds_key(request):
        models = {name: b.describe() for name, b in registry.backends.items()}
    else:
        models = {name: {"state": b.state.value} for name, b in registry.backends.items()}
    return json_response({"status": "ok", "models": models})


async def ready(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    ready_models = [n for n, b in registry.backends.items() if b.state is State.READY]
    # load: on_demand models off the card serve too: a request brings them in.
    on_demand = [n for n, b in registry.backends.items() if b.state in (State.SLEEPING, State.STOPPED)]
    serving = ready_models or on_demand
    return json_response({"status": "ready" if serving else "not ready", "ready": ready_models,
                          "on_demand": on_demand}, status=200 if serving else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- factory -----------------------------------------------------------------------


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # On prepare, so streamed answers (whose headers leave before the handler returns) carry it too.
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-ID"] = rid


def webui_root(cfg: Config) -> Path:
    if cfg.gateway.webui_dir is not None:
        return cfg.gateway.webui_dir
    return _SOURCE_WEBUI if _SOURCE_WEBUI.is_dir() else _PACKAGED_WEBUI


def create_app(cfg: Config, *, api_keys: list[bytes] | None = None,
               units: SystemdUnits | None = None) -> web.Application:
    """The gateway for this config. `units`: load: on_demand models are started and stopped as
    their systemd units (`localai gateway --units`); `localai up` puts its supervisor in
    app[SUPERVISOR] before the app starts (up.py). The lifecycle is built as the app starts,
    with a switch per model (app/switches.py)."""
    app = web.Application(
        middlewares=[access_middleware, error_middleware, auth_middleware],
        client_max_size=cfg.gateway.max_body_bytes,
    )
    app[CONFIG] = cfg
    gw = cfg.gateway
    app[UPSTREAM_TIMEOUT] = aiohttp.ClientTimeout(total=None, sock_connect=gw.connect_timeout,
                                                  sock_read=gw.read_timeout)
    app[METRICS] = Metrics()
    app[REGISTRY] = Registry(cfg, app[METRICS])
    if units is not None:
        app[UNITS] = units
    keyring = keyring_of(api_keys) if api_keys is not None else load_keyring(cfg.gateway.api_key_file)
    app[ACCESS] = Access(keyring, cfg.gateway.key_limits)
    if not keyring:
        log.warning("no API key configured: the gateway is OPEN to anyone who can reach %s:%s; "
                    "set gateway.api_key_file or LOCALAI_API_KEY", cfg.gateway.host, cfg.gateway.port)
    app[RELOADER] = Reloader(app, cfg)
    app.cleanup_ctx.append(_upstream_ctx)
    app.on_response_prepare.append(_stamp_request_id)

    add_all_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_handler)
    if cfg.gateway.webui:
        from gateway.http.webui import add_webui_routes

        # A missing bundle (an install without it) serves a page that says so.
        add_webui_routes(app, webui_root(cfg))
    return app


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """One shared upstream pool for the app's lifetime, and the health monitor on it."""
    # limit=0: admission (per-model max_concurrency) is what bounds open streams;
    # aiohttp's default of 100 connections would silently cap them below that.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    # DummyCookieJar: backends set no cookie worth keeping, and the default jar filters every request.
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                    json_serialize=lambda o: orjson.dumps(o).decode())
    app[SESSION] = session
    monitor = HealthMonitor(app[REGISTRY], session, app[CONFIG].gateway.health_interval, app[METRICS])
    app[MONITOR] = monitor
    monitor.start()
    cfg = app[RELOADER].config  # the one in force (a reload may have come first)
    units = app.get(UNITS)
    lifecycle = app[LIFECYCLE] = Lifecycle(cfg, app[REGISTRY], app[METRICS], switches(
        cfg, session, monitor.poke, supervisor=app.get(SUPERVISOR), units=units))
    lifecycle.start()
    yield
    await lifecycle.close()
    if units is not None:
        await units.close()
    await monitor.stop()
    await session.close()
