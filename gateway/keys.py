"""Typed keys for what the app and each request carry."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .accounting import Account
from .backends import HealthMonitor, Registry
from .config import Config
from .lifecycle import Lifecycle
from .observability import Metrics

CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", Metrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_TIMEOUT = web.AppKey("upstream_timeout", aiohttp.ClientTimeout)
MONITOR = web.AppKey("monitor", HealthMonitor)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
API_KEYS = web.AppKey("api_keys", list)
ACCOUNT = web.RequestKey("account", Account)
REQUEST_ID = web.RequestKey("request_id", str)
# Ollama's keep_alive of this request, in seconds (-1: never unload).
KEEP_ALIVE = web.RequestKey("keep_alive", float)
