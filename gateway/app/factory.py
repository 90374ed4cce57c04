"""The aiohttp application: one endpoint in front of every model, speaking several APIs.

The factory wires the parts: the middlewares every request passes
(gateway/http/middleware.py), the API families' routes (gateway/http/families/, thin
handlers over gateway/http/pipeline.py), the gateway's own endpoints, the shared
upstream session and health monitor, the lifecycle and the reloader.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from gateway.app.reload import RELOADER, Reloader
from gateway.app.switches import switches
from gateway.base.observability import Metrics
from gateway.config.schema import Config
from gateway.http.admin import add_routes as add_admin_routes
from gateway.http.appkeys import (
    ACCESS,
    CONFIG,
    LIFECYCLE,
    METRICS,
    MONITOR,
    REGISTRY,
    SESSION,
    UPSTREAM_TIMEOUT,
    USAGE,
)
from gateway.http.batch import add_routes as add_batch_routes
from gateway.http.families import add_all_routes
from gateway.http.middleware import (
    access_middleware,
    add_public_get,
    auth_middleware,
    error_middleware,
    limits_middleware,
    stamp_request_id,
)
from gateway.http.probes import health, metrics_handler, ready
from gateway.http.usage import add_routes as add_usage_routes
from gateway.keys.keyring import Access, keyring_of, load_keyring
from gateway.keys.usage import UsageStore
from gateway.lifecycle.manager import Lifecycle
from gateway.lifecycle.processes import Supervisor
from gateway.routing.backends import HealthMonitor, Registry

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
        middlewares=[access_middleware, error_middleware, auth_middleware, limits_middleware],
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
    app[ACCESS] = Access(keyring, cfg.gateway)
    if not keyring:
        # With a key source configured an empty keyring is an error (keys/keyring.py): here none is.
        how = "set gateway.api_key_file or LOCALAI_API_KEY" if api_keys is None else "it was given no key"
        log.warning("no API key configured: the gateway is OPEN to anyone who can reach %s:%s; %s",
                    cfg.gateway.host, cfg.gateway.port, how)
    app[RELOADER] = Reloader(app, cfg)
    app.cleanup_ctx.append(_usage_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.on_response_prepare.append(stamp_request_id)

    add_all_routes(app)
    add_usage_routes(app)
    add_admin_routes(app)
    add_batch_routes(app)  # after _upstream_ctx: its runner uses the registry and lifecycle
    add_public_get(app, "/health", health)
    add_public_get(app, "/ready", ready)
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


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The usage store for the app's lifetime (one, whatever reloads come: its file changes on
    restart), and the budgets' counters seeded from it; closed last, so every request's row is in."""
    gw = app[CONFIG].gateway
    if gw.usage_db is None:
        yield
        return
    store = UsageStore(gw.usage_db, gw.usage_keep_days, gw.usage_keep_hourly_days, app[METRICS])
    app[ACCESS].limiter.spending.seed(store.start())
    app[USAGE] = store
    try:
        yield
    finally:
        store.close()
