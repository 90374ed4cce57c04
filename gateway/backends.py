"""Backends: the model servers behind the gateway, their state, and how a request finds one."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

import aiohttp

from .admission import ModelSlots, WaitingRoom
from .config import GLOB_CHARS, Config, ExternalModel, ManagedModel
from .errors import ApiError
from .observability import Metrics
from .plan import backend_url, max_concurrency

log = logging.getLogger("localai.backends")


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


# A ready backend that misses this many health checks in a row is declared failed;
# one miss is often just a busy event loop in vLLM under load.
FAILED_AFTER_MISSES = 2


@dataclass
class Backend:
    name: str
    url: str  # base URL, without /v1
    model: ManagedModel | ExternalModel  # its config entry
    slots: ModelSlots
    served_id: str
    served_model_hint: str | None = None  # managed: the hub id / path it was started with
    api_key: str | None = None
    max_model_len: int | None = None
    state: State = State.LOADING
    reason: str | None = "starting"
    misses: int = 0

    def set_state(self, state: State, reason: str | None) -> None:
        if state != self.state or reason != self.reason:
            log.info("model %s is %s", self.name, state.value,
                     extra={"model": self.name, "state": state.value, "reason": reason})
            self.state, self.reason = state, reason

    @property
    def managed(self) -> bool:
        return isinstance(self.model, ManagedModel)

    @property
    def aliases(self) -> list[str]:
        return list(self.model.aliases)

    def describe(self) -> dict:
        return {"state": self.state.value, "reason": self.reason}


@dataclass(frozen=True)
class Route:
    """Where a request goes, and the preset defaults its model name carries."""

    backend: Backend
    defaults: dict


def _read_key(model: ExternalModel) -> str | None:
    if model.api_key_file is None:
        return None
    return model.api_key_file.read_text().strip() or None


class Registry:
    """Every backend, and the map from what a client may call a model to its backend."""

    def __init__(self, cfg: Config, metrics: Metrics):
        self.room = WaitingRoom(cfg.gateway.max_queue, cfg.gateway.queue_timeout)
        self.backends: dict[str, Backend] = {}
        for m in cfg.models:
            slots = ModelSlots(m.name, max_concurrency(m), self.room,
                               metrics.queue_depth.labels(m.name))
            if isinstance(m, ManagedModel):
                b = Backend(m.name, backend_url(m, cfg.vllm), m, slots, served_id=m.name,
                            served_model_hint=m.model, max_model_len=m.max_model_len)
            else:
                b = Backend(m.name, backend_url(m, cfg.vllm), m, slots, served_id=m.served_model or m.name,
                            api_key=_read_key(m), max_model_len=m.max_model_len)
            self.backends[m.name] = b
        self.default = self.backends[cfg.default_model.name]
        self._routes: dict[str, Route] = {}
        # Glob aliases, in config order: tried only when no exact name matches, first match wins.
        self._globs: list[tuple[str, Route]] = []
        for b in self.backends.values():
            for key in (b.name, *b.aliases, b.served_model_hint):
                if key and key in b.aliases and any(c in key for c in GLOB_CHARS):
                    self._globs.append((key, Route(b, {})))
                elif key:
                    self._routes.setdefault(key, Route(b, {}))
            for preset, params in b.model.presets.items():
                self._routes[preset] = Route(b, params.defaults())

    def learn_served_id(self, backend: Backend, served_id: str) -> None:
        self._routes.setdefault(served_id, Route(backend, {}))

    def presets(self) -> list[tuple[str, Route]]:
        return [(name, r) for name, r in self._routes.items() if name in r.backend.model.presets]

    def resolve(self, model: object) -> Route:
        """Route by name, alias, preset, served id or glob alias; no model means the default.
        Raises ApiError."""
        if model is None or model == "":
            return Route(self.default, {})
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string.", code="invalid_type", param="model")
        route = self._routes.get(model)
        if route is None:
            route = next((r for pattern, r in self._globs if fnmatchcase(model, pattern)), None)
        if route is None:
            known = ", ".join(sorted(self.backends))
            raise ApiError(404, f"The model '{model}' does not exist. Available models: {known}.",
                           code="model_not_found", param="model")
        return route

    def check_serving(self, backend: Backend) -> None:
        """Loading and failed models answer 503 before anything is queued."""
        if backend.state is State.READY:
            return
        if backend.state is State.LOADING:
            raise ApiError(503, f"Model '{backend.name}' is still loading; retry shortly.",
                           code="model_loading", type="server_error", headers={"Retry-After": "10"})
        raise ApiError(503, f"Model '{backend.name}' is unavailable: {backend.reason}.",
                       code="model_unavailable", type="server_error", headers={"Retry-After": "30"})


class HealthMonitor:
    """Polls each backend so that ready models serve while others still load."""

    def __init__(self, registry: Registry, session: aiohttp.ClientSession, interval: float,
                 metrics: Metrics):
        self.registry = registry
        self.session = session
        self.interval = interval
        self.metrics = metrics
        self._tasks: list[asyncio.Task] = []
        self._wake: dict[str, asyncio.Event] = {}

    def start(self) -> None:
        for b in self.registry.backends.values():
            self._wake[b.name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._watch(b), name=f"health-{b.name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def poke(self, name: str) -> None:
        """Check this backend now (a request just failed to reach it)."""
        if name in self._wake:
            self._wake[name].set()

    async def _watch(self, b: Backend) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        headers = {"Authorization": f"Bearer {b.api_key}"} if b.api_key else {}
        # vLLM's /health turns 503 when its engine dies; an external server is only
        # assumed to speak OpenAI, so its model list is the health check.
        probe = "/health" if b.managed else "/v1/models"
        while True:
            try:
                async with self.session.get(b.url + probe, timeout=timeout, headers=headers) as r:
                    healthy = r.status == 200
                    detail = f"health check answered HTTP {r.status}"
                if healthy and (b.state is not State.READY or b.max_model_len is None):
                    await self._discover(b, timeout, headers)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                healthy = False
                detail = f"not reachable at {b.url} ({type(exc).__name__}: {exc})" if str(exc) else \
                    f"not reachable at {b.url} ({type(exc).__name__})"
            self._record(b, healthy, detail)
            wake = self._wake[b.name]
            # Poll fast while waiting for a model to come up, slower once it serves.
            delay = self.interval if b.state is State.READY else min(self.interval, 1.0)
            try:
                await asyncio.wait_for(wake.wait(), delay)
            except TimeoutError:
                pass
            wake.clear()

    async def _discover(self, b: Backend, client_timeout: aiohttp.ClientTimeout, headers: dict[str, str]) -> None:
        async with self.session.get(b.url + "/v1/models", timeout=client_timeout, headers=headers) as r:
            if r.status != 200:
                return
            data = (await r.json()).get("data") or []
        ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if not b.managed and b.served_id not in ids and ids:
            b.served_id = ids[0]
        for entry in data:
            if entry.get("id") == b.served_id:
                if b.max_model_len is None and isinstance(entry.get("max_model_len"), int):
                    b.max_model_len = entry["max_model_len"]
                self.registry.learn_served_id(b, b.served_id)

    def _record(self, b: Backend, healthy: bool, detail: str) -> None:
        self.metrics.backend_up.labels(b.name).set(1 if healthy else 0)
        if healthy:
            b.misses = 0
            b.set_state(State.READY, None)
        else:
            b.misses += 1
            if b.state is State.READY and b.misses >= FAILED_AFTER_MISSES:
                b.set_state(State.FAILED, detail)
            elif b.state is State.LOADING:
                b.reason = detail
        self.metrics.backend_ready.labels(b.name).set(1 if b.state is State.READY else 0)
