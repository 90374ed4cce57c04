"""Backends: the model servers behind the gateway, their state, and how a request finds one."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import aiohttp

from gateway.base.bounded import TooLarge, read_at_most
from gateway.base.errors import ApiError
from gateway.base.observability import Metrics
from gateway.config.schema import GLOB_CHARS, Config, ExternalModel, ManagedModel
from gateway.plan.placement import endpoints, max_concurrency
from gateway.routing.admission import ModelSlots, WaitingRoom
from gateway.routing.balancer import Balancer, Replica
from gateway.routing.states import LIFECYCLE_STATES, State, move, note

log = logging.getLogger("localai.backends")


@dataclass
class Residence:
    """A load: on_demand model's place on its card (lifecycle.py keeps it)."""

    share: float  # of its card (gpu_memory_utilization)
    since: float | None = None  # wall clock: resident since
    expires_at: float | None = None  # wall clock: keep_alive runs out; None = never


# A ready backend that misses this many health checks in a row is declared failed;
# one miss is often just a busy event loop in vLLM under load.
FAILED_AFTER_MISSES = 2

# Seconds one health check (of one replica) may take; a replica that stays silent that long missed it.
CHECK_TIMEOUT = 5.0

# The most of a backend's model list read (a hosted upstream's list of hundreds of models
# with descriptions is about 1 MB).
MODEL_LIST_LIMIT = 8 * 1024 * 1024


@dataclass
class Backend:
    name: str
    balancer: Balancer  # its replicas, and which one serves the next request
    model: ManagedModel | ExternalModel  # its config entry
    slots: ModelSlots
    served_id: str
    served_model_hint: str | None = None  # managed: the hub id / path it was started with
    api_key: str | None = None
    max_model_len: int | None = None
    state: State = State.LOADING
    reason: str | None = "starting"
    misses: int = 0
    residence: Residence | None = None  # set for load: on_demand models only
    on_change: list[Callable[[Backend], None]] = field(default_factory=list)

    def server_state(self, url: str, state: State, reason: str | None) -> None:
        """One of the model's servers started or crashed (its supervisor says so). With replicas
        that is its replica's state: the model serves on while another replica is ready."""
        replicas = self.balancer.replicas
        if len(replicas) > 1:
            for r in replicas:
                if r.url == url:
                    r.set_state(state, reason)
            self.fit_slots()
            if any(r.ready for r in replicas):
                return
        self.set_state(state, reason)

    def fit_slots(self) -> None:
        """Admission's slots: each ready replica's own (max_concurrency per server), so a replica
        that comes up adds its share and one that fails takes it away. A model that has none ready
        keeps one replica's worth: its requests then wait for one, or are told it is down."""
        per_replica = max_concurrency(self.model)
        replicas = self.balancer.replicas
        ready = sum(r.serving for r in replicas) if len(replicas) > 1 else 1
        if self.slots.limit != per_replica * max(ready, 1):
            self.slots.set_limit(per_replica * max(ready, 1))

    def replica(self, n: int) -> Replica:
        """Its replica number n (the plan's: unit NAME is 0, NAME.1 is 1). Raises ApiError 404."""
        replicas = self.balancer.replicas
        if not 0 <= n < len(replicas):
            raise ApiError(404, f"Model '{self.name}' has no replica {n}; its replicas are 0 to {len(replicas) - 1}.",
                           code="replica_not_found", param="replica")
        return replicas[n]

    def drain(self, n: int, force: bool = False) -> Replica:
        """Send replica n no new request (those in flight on it finish; its slots leave the model's)
        until `undrain`. A model's one replica has nowhere else to send them: refused (409), as is
        its last serving replica unless `force` (its requests then wait for a replica, or get 503).
        Raises ApiError."""
        r = self.replica(n)
        if len(self.balancer.replicas) == 1:
            raise ApiError(409, f"Model '{self.name}' has one replica: draining it would leave its requests nowhere "
                                "to go. Restart it as it is (its requests in flight fail), or give it replicas.",
                           code="last_replica", param="replica")
        if r.serving and not force and not any(o.serving for o in self.balancer.replicas if o is not r):
            raise ApiError(409, f"Replica {n} of model '{self.name}' is its last one serving: draining it would leave "
                                "the model none. Wait until another is ready, or force it.",
                           code="last_replica", param="replica")
        if not r.draining:
            r.draining = True
            log.info("replica %s of model %s drains", r.address, self.name,
                     extra={"model": self.name, "replica": r.address, "in_flight": r.in_flight})
            self.fit_slots()
        return r

    def undrain(self, n: int) -> Replica:
        """Replica n takes new requests again (once its health checks say it is ready). Raises ApiError."""
        r = self.replica(n)
        if r.draining:
            r.draining = False
            log.info("replica %s of model %s no longer drains", r.address, self.name,
                     extra={"model": self.name, "replica": r.address})
            self.fit_slots()
        return r

    def set_state(self, state: State, reason: str | None) -> None:
        """The one way the model's state changes (states.py: raises on a move it does not allow)."""
        if move(self, state, reason, f"model {self.name}"):
            log.info("model %s is %s", self.name, state.value,
                     extra={"model": self.name, "state": state.value, "reason": reason})
            for call in self.on_change:
                call(self)

    def note(self, reason: str) -> None:
        """Why it is still in its state (a loading model's latest failed check), without a log line."""
        note(self, reason)

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self.balancer.replicas

    @property
    def url(self) -> str:
        """Base URL (without /v1) for the gateway's own calls (token counts, a stored response,
        sleep and wake): a ready replica's, or the first one's."""
        replicas = self.balancer.replicas
        if len(replicas) == 1:
            return replicas[0].url
        return next((r.url for r in replicas if r.ready), replicas[0].url)

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


def _balancer(m: ManagedModel | ExternalModel, cfg: Config, old: tuple[Replica, ...]) -> Balancer:
    """The model's replicas as the plan places them; one that was there before (same URL) is kept
    with its health, breaker and requests in flight, which still hold it."""
    known = {r.url: r for r in old}
    replicas = []
    for p in endpoints(cfg, m.name):
        r = known.get(p.url) or Replica(p.host, p.url, urlsplit(p.url).netloc.rpartition("@")[2])
        r.host = p.host
        replicas.append(r)
    return Balancer(replicas, cfg.gateway.balance, max_concurrency(m))


def _read_key(model: ExternalModel) -> str | None:
    if model.api_key_file is None:
        return None
    return model.api_key_file.read_text().strip() or None


class Registry:
    """Every backend, and the map from what a client may call a model to its backend."""

    def __init__(self, cfg: Config, metrics: Metrics):
        self.room = WaitingRoom(cfg.gateway.max_queue, cfg.gateway.queue_timeout)
        self.metrics = metrics
        self.backends: dict[str, Backend] = {m.name: self._backend(m, cfg) for m in cfg.models}
        self._routes: dict[str, Route] = {}
        self._learned: dict[str, Route] = {}
        self._route(cfg)

    def _backend(self, m: ManagedModel | ExternalModel, cfg: Config) -> Backend:
        slots = ModelSlots(m.name, max_concurrency(m), self.room, self.metrics.queue_depth.labels(m.name),
                           low_share=cfg.gateway.batch_max_share, yield_idle=cfg.gateway.batch_yield == "idle",
                           quiet=cfg.gateway.batch_quiet)
        # Read at scrape time: the slots change as replicas come and go (Backend.fit_slots).
        self.metrics.capacity.labels(m.name).set_function(lambda: slots.limit)
        balancer = _balancer(m, cfg, ())
        if isinstance(m, ManagedModel):
            return Backend(m.name, balancer, m, slots, served_id=m.name,
                           served_model_hint=m.model, max_model_len=m.max_model_len)
        return Backend(m.name, balancer, m, slots, served_id=m.served_model or m.name,
                       api_key=_read_key(m), max_model_len=m.max_model_len)

    def _route(self, cfg: Config) -> None:
        """Configured names first (a model's name, aliases and presets; then the paths, hub ids and
        served_model the config names), then glob aliases, and last the ids learned from upstreams,
        where no configured name or glob matches: an upstream never takes a configured name."""
        self.default = self.backends[cfg.default_model.name]
        routes: dict[str, Route] = {}
        # Glob aliases, in config order: tried only when no exact name matches, first match wins.
        globs: list[tuple[str, Route]] = []
        for b in self.backends.values():
            for key in (b.name, *b.aliases):
                if key in b.aliases and any(c in key for c in GLOB_CHARS):
                    globs.append((key, Route(b, {})))
                else:
                    routes.setdefault(key, Route(b, {}))
            for preset, params in b.model.presets.items():
                routes[preset] = Route(b, params.defaults())
        for b in self.backends.values():
            for configured in (b.served_model_hint, getattr(b.model, "served_model", None)):
                if configured:
                    routes.setdefault(configured, Route(b, {}))
        self._routes, self._globs, self._learned = routes, globs, {}
        for b in self.backends.values():
            self.learn_served_id(b, b.served_id)

    def apply(self, old_cfg: Config, cfg: Config) -> list[str]:
        """A reloaded config (a Holder): models added and removed, entries, limits, routes and
        gateway.max_queue, queue_timeout and balance updated in place. Requests in flight keep
        the backend they hold. Nothing here needs a restart."""
        self.room.max_waiting, self.room.timeout = cfg.gateway.max_queue, cfg.gateway.queue_timeout
        new = {m.name: m for m in cfg.models}
        for name, m in new.items():
            old = self.backends.get(name)
            if old is not None and old.managed == isinstance(m, ManagedModel):
                if isinstance(m, ManagedModel) and m.max_model_len != old.model.max_model_len:
                    # The server restarted with the new window (or will): unset, it is learned again.
                    old.max_model_len = m.max_model_len
                old.model = m
                old.slots.set_batch(cfg.gateway.batch_max_share, cfg.gateway.batch_yield == "idle",
                                    cfg.gateway.batch_quiet)
                old.balancer = _balancer(m, cfg, old.replicas)
                old.fit_slots()
                if isinstance(m, ExternalModel):
                    old.api_key = _read_key(m)
                    old.served_id = m.served_model or old.served_id
                    old.max_model_len = m.max_model_len or old.max_model_len
                continue
            # New, or managed became external or the other way round: a backend of its own.
            self.backends[name] = self._backend(m, cfg)
        self.backends = {name: self.backends[name] for name in new}  # config order
        self._route(cfg)
        return []

    def learn_served_id(self, backend: Backend, served_id: str) -> None:
        """A model's id as its upstream reports it: a name for it only where nothing configured is."""
        if served_id not in self._routes:
            self._learned.setdefault(served_id, Route(backend, {}))

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
            route = self._learned.get(model)
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


def _unreachable(url: str, exc: BaseException) -> str:
    return f"not reachable at {url} ({type(exc).__name__}: {exc})" if str(exc) else \
        f"not reachable at {url} ({type(exc).__name__})"


def _listed_models(raw: bytes) -> list[dict]:
    """The entries of an OpenAI model list that have a string id; anything else in it is
    ignored (an upstream's list is not trusted to have the shape it should). Raises
    ValueError for a body that is not JSON."""
    body = json.loads(raw)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


class HealthMonitor:
    """Polls each backend so that ready models serve while others still load."""

    def __init__(self, registry: Registry, session: aiohttp.ClientSession, interval: float,
                 metrics: Metrics):
        self.registry = registry
        self.session = session
        self.interval = interval
        self.metrics = metrics
        self._tasks: dict[str, asyncio.Task] = {}
        self._checks: dict[str, dict[Replica, asyncio.Task]] = {}  # per model, each replica's check in flight
        self._wake: dict[str, asyncio.Event] = {}
        self._watched: dict[str, Backend] = {}
        self._unchecked = set(registry.backends)
        self._first_round = asyncio.Event()

    def start(self) -> None:
        for b in self.registry.backends.values():
            self.watch(b)

    def apply(self, old: Config, new: Config) -> list[str]:
        """A reload (a Holder), after the registry's: the new health_interval, and the backends
        it now holds watched (a model added, or one whose backend was made anew), no others."""
        self.interval = new.gateway.health_interval
        for name in [n for n, b in self._watched.items() if self.registry.backends.get(n) is not b]:
            self.unwatch(name)
        for name, b in self.registry.backends.items():
            if name not in self._watched:
                self.watch(b)
        return []

    async def first_round(self) -> None:
        """Until every backend was checked once: a gateway that starts serving then answers
        a ready model's requests at once, not with 503 model_loading."""
        await self._first_round.wait()

    def watch(self, b: Backend) -> None:
        self.unwatch(b.name)
        self._wake[b.name] = asyncio.Event()
        self._watched[b.name] = b
        self._tasks[b.name] = asyncio.create_task(self._watch(b), name=f"health-{b.name}")

    def unwatch(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            del self._wake[name], self._watched[name]
        for check in list(self._checks.pop(name, {}).values()):
            check.cancel()

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *(t for checks in self._checks.values() for t in checks.values())]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def poke(self, name: str) -> None:
        """Check this backend now (a request just failed to reach it)."""
        if name in self._wake:
            self._wake[name].set()

    async def _watch(self, b: Backend) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._round(b)
            except Exception:  # a bug of ours: logged, and the checks go on (the state must not freeze)
                log.exception("health check of model %s failed", b.name, extra={"model": b.name})
                self._record(b, False, "its health check failed in the gateway; see the gateway's log")
                self._unchecked.discard(b.name)
            wake = self._wake[b.name]
            try:
                # From the round's start: a round that waited out its gap for a silent replica's
                # check (`_round`) is not followed by another whole gap.
                await asyncio.wait_for(wake.wait(), max(0.0, self._gap(b) - (time.monotonic() - started)))
            except TimeoutError:
                pass
            wake.clear()

    def _gap(self, b: Backend) -> float:
        """Poll fast while waiting for a model to come up, slower once it serves."""
        return self.interval if b.state is State.READY else min(self.interval, 1.0)

    async def _round(self, b: Backend) -> None:
        """Check each of the model's replicas, and record what that says about the model.

        Each replica's check is a task of its own with its own timeout, recorded as it ends: a silent
        replica's check runs on to its timeout while its siblings' rounds go on (a model with replicas
        waits for its checks no longer than the gap to its next round; one whose check is still out
        is not asked again, and keeps what its last check said)."""
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        # vLLM's /health turns 503 when its engine dies; an external server is only
        # assumed to speak OpenAI, so its model list is the health check.
        probe = "/health" if b.managed else "/v1/models"
        headers = {"Authorization": f"Bearer {b.api_key}"} if b.api_key else {}  # a reload may change it
        replicas = b.replicas  # a reload may change them
        checks = self._checks.setdefault(b.name, {})
        started = []
        for r in replicas:
            if r not in checks:
                checks[r] = asyncio.create_task(self._check_replica(b, r, probe, timeout, headers, checks),
                                                name=f"health-{b.name}-{r.address}")
                started.append(checks[r])
        if started:
            await asyncio.wait(started, timeout=None if len(replicas) == 1 else self._gap(b))
        # The model serves while any replica does (its latest check passed); it is down with the
        # first one's reason.
        up = next((r for r in replicas if r.ready and not r.misses), None)
        healthy = up is not None
        detail = next((r.reason or "" for r in replicas if r.reason), "") if up is None else ""
        learn = b.state not in LIFECYCLE_STATES and (b.state is not State.READY or b.max_model_len is None)
        if up is not None and learn:
            try:
                await self._discover(b, up.url, timeout, headers)
            except TooLarge as exc:
                healthy, detail = False, f"its model list at {up.url} is {exc}"
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                healthy, detail = False, _unreachable(up.url, exc)
        self._record(b, healthy, detail)
        self._unchecked.discard(b.name)
        if not self._unchecked:
            self._first_round.set()

    async def _check_replica(self, b: Backend, r: Replica, probe: str, client_timeout: aiohttp.ClientTimeout,
                             headers: dict[str, str], checks: dict[Replica, asyncio.Task]) -> None:
        """One replica's check, recorded as it ends; `checks`: its model's checks in flight."""
        try:
            ok, why = await self._check(r, probe, client_timeout, headers)
            self._record_replica(b, r, ok, why)
            b.fit_slots()
        except Exception:  # a bug of ours: logged; the next round checks it again
            log.exception("health check of model %s's replica %s failed", b.name, r.address,
                          extra={"model": b.name, "replica": r.address})
        finally:
            checks.pop(r, None)

    async def _check(self, r: Replica, probe: str, client_timeout: aiohttp.ClientTimeout,
                     headers: dict[str, str]) -> tuple[bool, str]:
        """(healthy, why not) of one replica."""
        try:
            async with self.session.get(r.url + probe, timeout=client_timeout, headers=headers) as resp:
                return resp.status == 200, "" if resp.status == 200 else f"health check answered HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return False, _unreachable(r.url, exc)

    async def _discover(self, b: Backend, url: str, client_timeout: aiohttp.ClientTimeout,
                        headers: dict[str, str]) -> None:
        async with self.session.get(url + "/v1/models", timeout=client_timeout, headers=headers) as r:
            if r.status != 200:
                return
            listed = _listed_models(await read_at_most(r, MODEL_LIST_LIMIT))
        ids = [m["id"] for m in listed]
        if not b.managed and b.served_id not in ids and ids:
            b.served_id = ids[0]
        for entry in listed:
            if entry["id"] == b.served_id:
                window = entry.get("max_model_len")
                if b.max_model_len is None and isinstance(window, int) and not isinstance(window, bool) \
                        and window > 0:
                    b.max_model_len = window
                self.registry.learn_served_id(b, b.served_id)

    def _record_replica(self, b: Backend, r: Replica, healthy: bool, detail: str) -> None:
        """A replica's own state, by the same rules as the model's (`_record`); a passed check
        after the breaker's cool-down closes it (the half-open probe)."""
        if healthy:
            r.misses = 0
            r.set_state(State.READY, None)
            if r.breaker(time.monotonic()) == "half-open":
                r.succeeded()
        else:
            r.misses += 1
            if r.state == State.READY and r.misses >= FAILED_AFTER_MISSES:
                r.set_state(State.FAILED, detail)
            elif r.state != State.READY:
                r.set_state(r.state, detail)
        if len(b.replicas) > 1:
            label = (b.name, r.address)
            self.metrics.replica_up.labels(*label).set(1 if healthy else 0)
            self.metrics.replica_ready.labels(*label).set(1 if r.ready else 0)
            self.metrics.replica_capacity.labels(*label).set(max_concurrency(b.model) if r.serving else 0)

    def _record(self, b: Backend, healthy: bool, detail: str) -> None:
        self.metrics.backend_up.labels(b.name).set(1 if healthy else 0)
        if b.state in LIFECYCLE_STATES:
            pass
        elif healthy:
            b.misses = 0
            b.set_state(State.READY, None)
        else:
            b.misses += 1
            if b.state is State.READY and b.misses >= FAILED_AFTER_MISSES:
                b.set_state(State.FAILED, detail)
            elif b.state is State.LOADING:
                b.note(detail)
        self.metrics.backend_ready.labels(b.name).set(1 if b.state is State.READY else 0)
