"""Typed keys for what the app and each request carry."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.base.observability import Metrics
from gateway.config.schema import Config
from gateway.http.accounting import Account
from gateway.keys.keyring import Access
from gateway.keys.usage import UsageStore
from gateway.lifecycle.manager import Lifecycle
from gateway.routing.backends import HealthMonitor, Registry

CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", Metrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_TIMEOUT = web.AppKey("upstream_timeout", aiohttp.ClientTimeout)
MONITOR = web.AppKey("monitor", HealthMonitor)
ACCESS = web.AppKey("access", Access)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
USAGE = web.AppKey("usage", UsageStore)  # absent with gateway.usage_db: null
ACCOUNT = web.RequestKey("account", Account)
REQUEST_ID = web.RequestKey("request_id", str)
KEY_NAME = web.RequestKey("key_name", str)  # the API key's name, never the key
# Set when the rest of a request's body may still come on its connection, which then cannot carry
# another request: its answer closes it.
UNREAD_BODY = web.RequestKey("unread_body", bool)
# Set on a batch line's request (docs/batch.md): admission's low lane, vLLM's batch priority.
BATCH_LANE = web.RequestKey("batch_lane", bool)
# The secret the batch runner proves its requests with (one per process, never leaves it).
BATCH_TOKEN = web.AppKey("batch_token", bytes)
# Ollama's keep_alive of this request, in seconds (-1: never unload).
KEEP_ALIVE = web.RequestKey("keep_alive", float)
# The replica (base URL) this request must go to: the one holding the stored response it reads
# or continues (the Responses API's ids live in one vLLM server's memory).
PINNED_REPLICA = web.RequestKey("pinned_replica", str)
