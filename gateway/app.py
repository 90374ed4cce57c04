"""The aiohttp application: one OpenAI-compatible endpoint in front of every model.

Middlewares wrap every request: an id and one access log line with its
metrics (account), OpenAI- or Ollama-shaped errors, and the API key check
(auth).  Inside, pipeline.py carries the request path itself: parse, route,
prepare, guard, admit, proxy.  Handlers stay thin.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import check_key, load_api_keys
from .backends import Backend, HealthMonitor, Registry, Route, State
from .config import Config
from .errors import HTTP_CODES, ApiError, error_response
from .keys import ACCOUNT, API_KEYS, CONFIG, METRICS, MONITOR, REGISTRY, REQUEST_ID, SESSION, UPSTREAM_TIMEOUT
from .observability import Metrics, request_id_var
from .ollama import add_ollama_routes, ollama_error
from .pipeline import openai_handler
from .proxy import Account
from .responses import PROTECTED_PATHS
from .responses import add_routes as add_responses_routes

log = logging.getLogger("localai.gateway")


WEBUI_DIST = Path(__file__).resolve().parent.parent / "webui" / "dist"

# Paths that need a key. Health and readiness probes and the WebUI's static files don't.
_PROTECTED_PREFIXES = ("/v1/", "/api/", "/metrics", *PROTECTED_PATHS)
_PROBE_PATHS = ("/health", "/ready")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# --- middlewares -------------------------------------------------------------


@web.middleware
async def access_middleware(request: web.Request, handler):
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
        # The client went away (handler cancelled) or something broke mid-stream.
        status = 499
        raise
    finally:
        _account(request, acct, status, rid)
        request_id_var.reset(token)


def _account(request: web.Request, acct: Account, status: int, rid: str) -> None:
    elapsed = time.monotonic() - acct.started
    metrics = request.app[METRICS]
    if acct.model is not None:
        # The route's pattern (/v1/responses/{response_id}), so ids don't become metric labels.
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else request.path
        metrics.child(metrics.requests, acct.model, endpoint, str(status)).inc()
        metrics.child(metrics.latency, acct.model, endpoint).observe(elapsed)
        if acct.ttft is not None:
            metrics.child(metrics.ttft, acct.model).observe(acct.ttft)
        if acct.prompt_tokens:
            metrics.child(metrics.prompt_tokens, acct.model).inc(acct.prompt_tokens)
        if acct.completion_tokens:
            metrics.child(metrics.completion_tokens, acct.model).inc(acct.completion_tokens)
    elif request.path.startswith(_PROTECTED_PREFIXES) and request.path != "/metrics":
        metrics.requests.labels("", request.path, str(status)).inc()
    fields = {
        "request_id": rid, "method": request.method, "path": request.path, "status": status,
        "latency_ms": round(elapsed * 1000, 2),
    }
    for name, value in (("model", acct.model), ("backend", acct.backend),
                        ("prompt_tokens", acct.prompt_tokens),
                        ("completion_tokens", acct.completion_tokens)):
        if value is not None:
            fields[name] = value
    if acct.ttft is not None:
        fields["ttft_ms"] = round(acct.ttft * 1000, 2)
    if acct.queue_wait:
        fields["queue_wait_ms"] = round(acct.queue_wait * 1000, 2)
    if acct.error:
        fields["error"] = acct.error
    # Probes come every few seconds from systemd, load balancers and our own UI:
    # at info level they would drown the lines that matter.
    level = logging.DEBUG if request.path in _PROBE_PATHS and status == 200 else logging.INFO
    log.log(level, "%s %s %s", request.method, request.path, status, extra=fields)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error leaves as OpenAI-shaped JSON (Ollama-shaped on /api/); no traceback reaches a client."""
    response = await _json_errors(request, handler)
    if response.status >= 400 and request.path.startswith("/api/"):
        response = ollama_error(response)  # Ollama clients read {"error": "message"}
    return response


async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
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
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise  # the client left mid-stream; nothing to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal error in the gateway; see its log for this request id.",
                              code="internal_error", type="server_error")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    keys = request.app[API_KEYS]
    if keys and request.path.startswith(_PROTECTED_PREFIXES):
        check_key(keys, request)
    return await handler(request)


# --- handlers --------------------------------------------------------------------


def model_card(b: Backend, default: bool) -> dict:
    window = b.max_model_len
    return {
        "id": b.name,
        "object": "model",
        "created": 0,
        "owned_by": "localai",
        "aliases": b.aliases,
        "default": default,
        "task": b.model.task,
        "max_model_len": window,
        # Prompt tokens the gateway lets through (before max_tokens); clients can budget with it.
        "context_limit": int(window * b.model.context_limit) if window else None,
        "state": b.state.value,
        "state_reason": b.reason,
    }


def preset_card(name: str, route: Route) -> dict:
    # Presets are shown like models, saying which model they use and with what defaults.
    return {**model_card(route.backend, False), "id": name, "aliases": [],
            "preset_of": route.backend.name, "defaults": route.defaults}


async def list_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    data = [model_card(b, b is registry.default) for b in registry.backends.values()]
    data += [preset_card(name, route) for name, route in registry.presets()]
    return _json({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one card, by name, alias or preset (404 model_not_found otherwise)."""
    registry = request.app[REGISTRY]
    name = request.match_info["model"]
    route = registry.resolve(name)
    if name in route.backend.model.presets:
        return _json(preset_card(name, route))
    return _json(model_card(route.backend, route.backend is registry.default))


async def health(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return _json({"status": "ok",
                  "models": {name: b.describe() for name, b in registry.backends.items()}})


async def ready(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    ready_models = [n for n, b in registry.backends.items() if b.state is State.READY]
    return _json({"status": "ready" if ready_models else "not ready", "ready": ready_models},
                 status=200 if ready_models else 503)


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
    return cfg.gateway.webui_dir or WEBUI_DIST


def create_app(cfg: Config, *, api_keys: list[bytes] | None = None) -> web.Application:
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
    app[API_KEYS] = api_keys if api_keys is not None else load_api_keys(cfg.gateway.api_key_file)
    if not app[API_KEYS]:
        log.warning("no API key configured: the gateway is OPEN to anyone who can reach %s:%s; "
                    "set gateway.api_key_file or LOCALAI_API_KEY", cfg.gateway.host, cfg.gateway.port)
    app.cleanup_ctx.append(_upstream_ctx)
    app.on_response_prepare.append(_stamp_request_id)

    # Clients differ on the trailing slash; both spellings work.
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, openai_handler)
        app.router.add_post(path + "/", openai_handler)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)  # ids may hold slashes (Qwen/...)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_handler)
    add_ollama_routes(app)
    add_responses_routes(app)
    root = webui_root(cfg)
    if cfg.gateway.webui and (root / "index.html").is_file():
        from .webui import add_webui_routes

        add_webui_routes(app, root)
    return app


async def _upstream_ctx(app: web.Application):
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
    yield
    await monitor.stop()
    await session.close()
