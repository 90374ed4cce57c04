"""Model lifecycle: load: on_demand models brought onto their card when asked for, and off it
when idle past keep_alive or when another needs the room.

Rules, in the order they bite:
- What may be resident together is residency.py's answer (each model's share of its card).
- A model with requests in flight or queued for a slot is never evicted; of the idle ones
  the least recently used goes first, and only once it has been resident `min_residency`
  seconds (so two models that can't be resident together are served in turn, not thrashed).
- One swap at a time: models that share a card start in turn, as each takes its share at start.
- A request waits for room up to queue_timeout (then 503 with Retry-After); a failed wake or
  start answers 503 naming why and is tried again by the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp

from gateway.base.errors import ApiError
from gateway.base.observability import Metrics
from gateway.config.schema import Config
from gateway.lifecycle.processes import Supervisor
from gateway.lifecycle.swap import ProcessSwitch, SleepSwitch, SwapError, Switch, UnitSwitch, start_unit, until_state
from gateway.plan.placement import endpoints, sleep_level
from gateway.routing.backends import Backend, Registry, Residence, State

if TYPE_CHECKING:
    from gateway.lifecycle.units import SystemdUnits

log = logging.getLogger("localai.lifecycle")


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def residence_fields(b: Backend) -> dict:
    """What a model card says about a model's place on its card: how it loads, its share,
    since when it is resident and when keep_alive unloads it (null: never)."""
    r = b.residence
    if r is None:
        return {"load": "always"}
    return {"load": "on_demand", "vram_share": r.share, "resident_since": _iso(r.since),
            "expires_at": _iso(r.expires_at)}


class Lifecycle:
    def __init__(self, cfg: Config, registry: Registry, metrics: Metrics):
        self.gateway = cfg.gateway
        self.residency = cfg.residency()
        self.source = cfg.source
        self.registry = registry
        self.metrics = metrics
        self._levels = {m.name: sleep_level(m, endpoints(cfg, m.name)[0])
                        for m in cfg.managed_models if m.load == "on_demand"}
        # Under systemd: each model's unit instance (an on_demand model has one server).
        self._instances = {name: endpoints(cfg, name)[0].unit for name in self._levels}
        self._keep_alive = {m.name: -1.0 if m.keep_alive is None else m.keep_alive
                            for m in cfg.managed_models if m.load == "on_demand"}
        self._supervisor: Supervisor | None = None
        self._units: SystemdUnits | None = None
        self._switches: dict[str, Switch] = {}
        # Resident (or on the way in): counted against the card. Always models are, for good.
        self.resident: set[str] = {n.name for n in self.residency.always}
        self._users: Counter[str] = Counter()  # requests past the door: queued for a slot or in flight
        self._last_used: dict[str, float] = {}
        self._since: dict[str, float] = {}  # loop time it became ready
        self._draining: Counter[str] = Counter()  # waiters for room that need this model gone
        self._failed_at: dict[str, float] = {}
        self._next_keep_alive: dict[str, float] = {}  # a request's keep_alive, for when it goes idle
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()
        self._nudges: set[asyncio.Future[None]] = set()
        self._swap = asyncio.Lock()
        for name in self._levels:
            registry.backends[name].residence = Residence(self.residency.need(name).share)
            registry.backends[name].on_change.append(lambda _: self._nudge())  # waiters look again

    # --- wiring ---------------------------------------------------------------------

    def use_supervisor(self, supervisor: Supervisor) -> None:
        """Under `localai up`: models without sleep mode are stopped and started through it."""
        self._supervisor = supervisor

    def use_units(self, units: SystemdUnits) -> None:
        """Run by systemd (`localai gateway --units`): models are started and stopped as their units."""
        self._units = units

    def manages(self, name: str) -> bool:
        """Whether this model comes and goes (else it is served like a load: always one)."""
        return name in self._levels and (self._levels[name] is not None or self._supervisor is not None
                                         or self._units is not None)

    def start(self, session: aiohttp.ClientSession, poke: Callable[[str], None]) -> None:
        for name, level in self._levels.items():
            b = self.registry.backends[name]
            if level is not None:
                self._switches[name] = SleepSwitch(session, level, self.gateway.wake_timeout)
            elif self._supervisor is not None:
                self._switches[name] = ProcessSwitch(session, self._supervisor, poke, self.gateway.start_timeout)
                b.set_state(State.STOPPED, "stopped: starts on the first request")
            elif self._units is not None:
                self._switches[name] = UnitSwitch(session, self._units, self._instances[name], poke,
                                                  self.gateway.start_timeout)
                b.set_state(State.STOPPED, "stopped: starts on the first request")
            else:
                log.warning("model %s is load: on_demand, but this vLLM has no sleep mode and nothing here can "
                            "start or stop it (run the gateway with --units under systemd, or use `localai up`): "
                            "served as load: always", name, extra={"model": name})
            self._report(name)
        sleepers = [n for n in self._switches if isinstance(self._switches[n], SleepSwitch)]
        units = [n for n in self._switches if isinstance(self._switches[n], UnitSwitch)]
        if sleepers or units:
            self._spawn(self._boot(sleepers, units))

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._units is not None:
            await self._units.close()

    async def _boot(self, sleepers: list[str], units: list[str]) -> None:
        """Units left running by the gateway before this one (a restart, an upgrade) are kept,
        in config order, while they fit beside each other and answer, if they started after the
        config was last written (else they may run an old command line, holding more of the card
        than the plan says): the team's loaded model stays loaded. The others are stopped, so
        what is resident is what this process knows of. Sleep-mode models start in turn (each
        takes its share at start), then go to sleep."""
        written = self._config_written()
        for name in units:
            b = self.registry.backends[name]
            switch = self._switches[name]
            assert isinstance(switch, UnitSwitch)
            async with self._swap:
                if self.residency.fits(self.resident | {name}) and await switch.running(b, written):
                    self._kept(name)
                    continue
                try:
                    await switch.put_out(b)
                except SwapError as exc:
                    b.set_state(State.FAILED, f"could not stop it: {exc}")
        for name in sleepers:
            b = self.registry.backends[name]
            async with self._swap:
                self.resident.add(name)
                try:
                    if self._supervisor is not None:
                        self._supervisor.start(name)
                    elif self._units is not None:
                        await start_unit(self._units, self._instances[name], self.gateway.start_timeout)
                    await until_state(b, (State.READY,), self.gateway.start_timeout)
                    await self._evict(name, "sleeps until asked for")
                except (TimeoutError, SwapError) as exc:
                    self.resident.discard(name)
                    b.set_state(State.FAILED, f"could not start and put to sleep: {exc or 'timed out'}")

    def _config_written(self) -> float:
        """When the config file was last written (0 for one made in memory)."""
        try:
            return self.source.stat().st_mtime
        except OSError:
            return 0.0

    def _arrived(self, name: str) -> None:
        """Resident and serving from now: min_residency counts from here."""
        self._since[name] = self._last_used[name] = asyncio.get_running_loop().time()
        residence = self.registry.backends[name].residence
        assert residence is not None
        residence.since, residence.expires_at = time.time(), None

    def _kept(self, name: str) -> None:
        """A model found running at start is resident as if just brought in: keep_alive counts from now."""
        self.resident.add(name)
        self._arrived(name)
        self._expire_later(name, self._keep_alive[name])
        self._report(name)
        log.info("swap: kept %s: its unit was running when the gateway started", name,
                 extra={"model": name, "kind": "kept"})

    # --- requests -------------------------------------------------------------------

    def ready(self, b: Backend) -> bool:
        """Serving now: no waiting, no heartbeats needed."""
        return b.name in self.resident and b.state is State.READY and not self._draining[b.name]

    @contextlib.asynccontextmanager
    async def hold(self, b: Backend, keep_alive: float | None = None) -> AsyncIterator[None]:
        """Bring the model in if need be and keep it resident while the request lasts."""
        try:
            await self._ensure(b)
        except ApiError as exc:
            self.metrics.rejections.labels(b.name, exc.code).inc()
            raise
        name = b.name
        self._users[name] += 1  # no await since _ensure saw it ready: it can't have left meanwhile
        self._cancel_expiry(name)
        if keep_alive is not None:
            self._next_keep_alive[name] = keep_alive
        try:
            yield
        finally:
            self._users[name] -= 1
            self._last_used[name] = asyncio.get_running_loop().time()
            if not self._users[name]:
                self._expire_later(name, self._next_keep_alive.pop(name, self._keep_alive[name]))
                self._nudge()

    async def unload(self, b: Backend) -> None:
        """Unload now if idle, else as soon as its last request ends (Ollama's keep_alive 0)."""
        if self._users[b.name]:
            self._next_keep_alive[b.name] = 0.0
        else:
            await self._unload(b.name, "unloaded on request")

    async def _ensure(self, b: Backend) -> None:
        name = b.name
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + self.gateway.queue_timeout
        marked: set[str] = set()
        try:
            while not self.ready(b):
                async with self._swap:
                    if self.ready(b):
                        return
                    failed = self._failed_at.get(name)
                    if failed is not None and failed > arrived:
                        raise self._unavailable(b)  # tried (and failed) while this one waited
                    if name not in self.resident:
                        victims = self._victims(name)
                        if victims is not None:
                            await self._swap_in(b, victims)
                            continue
                now = loop.time()
                if name in self.resident and not self._draining[name]:
                    # On the card but not serving: its server crashed and `localai up` restarts it.
                    if now >= deadline:
                        raise self._unavailable(b)
                    await self._wait_nudge(deadline - now)
                    continue
                # No room yet: the models in the way are busy or were brought in moments ago.
                blockers, wake_at = self._blockers(name)
                self._draining.subtract(marked)
                marked = blockers
                self._draining.update(marked)
                if now >= deadline:
                    raise self._no_room(b, blockers)
                await self._wait_nudge(min(deadline, wake_at) - now)
        finally:
            self._draining.subtract(marked)
            self._draining += Counter()  # drop zeros
            if marked:
                self._nudge()

    def _victims(self, name: str) -> list[str] | None:
        """Which idle models to evict, least recently used first, so that `name` fits; None: can't."""
        want = self.resident | {name}
        if self.residency.fits(want):
            return []
        now = asyncio.get_running_loop().time()
        idle = sorted((n for n in self.resident if self._evictable(n, now)), key=lambda n: self._last_used.get(n, 0))
        chosen: list[str] = []
        for n in idle:
            chosen.append(n)
            if self.residency.fits(want - set(chosen)):
                # Keep any chosen one that turns out not to be needed (most recently used first).
                for keep in reversed(chosen[:-1]):
                    if self.residency.fits(want - set(chosen) | {keep}):
                        chosen.remove(keep)
                return chosen
        return None

    def _evictable(self, n: str, now: float) -> bool:
        return (n in self._switches and not self._users[n]
                and now - self._since.get(n, 0) >= self.gateway.min_residency)

    def _blockers(self, name: str) -> tuple[set[str], float]:
        """The busy models that must go for `name` to fit, once past their minimum residency (new
        requests for them now wait their turn), and the loop time the first young one may go."""
        now = asyncio.get_running_loop().time()
        others = [n for n in self.resident if n in self._switches and n != name]
        old = [n for n in others if now - self._since.get(n, 0) >= self.gateway.min_residency]
        young = [self._since[n] + self.gateway.min_residency for n in others if n not in old and n in self._since]
        want, needed = self.resident | {name}, set[str]()
        for n in sorted(old, key=lambda n: (self._users[n] > 0, self._last_used.get(n, 0))):
            if self.residency.fits(want - needed):
                break
            needed.add(n)
        return {n for n in needed if self._users[n]}, min(young, default=float("inf"))

    async def _swap_in(self, b: Backend, victims: list[str]) -> None:
        """Evict, then bring in; the swap lock is held."""
        name = b.name
        for v in victims:
            idle = asyncio.get_running_loop().time() - self._last_used.get(v, 0)
            await self._evict(v, f"least recently used idle model (idle {idle:.0f} s), to make room for {name}")
        switch = self._switches[name]
        self.resident.add(name)
        started = time.monotonic()
        try:
            await switch.bring_in(b)
        except SwapError as exc:
            self.resident.discard(name)
            self._failed_at[name] = asyncio.get_running_loop().time()
            with contextlib.suppress(SwapError):
                await switch.put_out(b)
            b.set_state(State.FAILED, f"{switch.into} failed: {exc}")
            self._report(name)
            log.error("could not bring in model %s (%s): %s", name, switch.into, exc,
                      extra={"model": name, "kind": switch.into})
            raise self._unavailable(b) from None
        took = time.monotonic() - started
        self._arrived(name)
        self._record(name, switch.into, took)
        log.info("swap: %s %s in %.1f s%s", switch.into, name, took,
                 f", after evicting {', '.join(victims)}" if victims else "",
                 extra={"model": name, "kind": switch.into, "duration_s": round(took, 3), "evicted": victims})

    async def _evict(self, name: str, why: str) -> None:
        b = self.registry.backends[name]
        switch = self._switches[name]
        self._cancel_expiry(name)
        self.resident.discard(name)
        started = time.monotonic()
        try:
            await switch.put_out(b)
        except SwapError:
            self.resident.add(name)  # still on the card
            raise
        took = time.monotonic() - started
        self._since.pop(name, None)
        assert b.residence is not None
        b.residence.since = b.residence.expires_at = None
        self._record(name, switch.out, took)
        log.info("swap: %s %s: %s", switch.out, name, why,
                 extra={"model": name, "kind": switch.out, "duration_s": round(took, 3), "why": why})

    # --- keep_alive ---------------------------------------------------------------------

    def _expire_later(self, name: str, keep_alive: float) -> None:
        b = self.registry.backends[name]
        if name not in self.resident or keep_alive < 0:
            return
        if keep_alive == 0:
            self._spawn(self._unload(name, "keep_alive 0: unloaded after its last request"))
            return
        assert b.residence is not None
        b.residence.expires_at = time.time() + keep_alive
        self._timers[name] = asyncio.get_running_loop().call_later(
            keep_alive, lambda: self._spawn(self._unload(name, f"idle for keep_alive {keep_alive:g} s")))

    def _cancel_expiry(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        b = self.registry.backends[name]
        if b.residence is not None:
            b.residence.expires_at = None

    async def _unload(self, name: str, why: str) -> None:
        async with self._swap:
            if name in self.resident and not self._users[name]:
                await self._evict(name, why)
        self._nudge()

    # --- bookkeeping --------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _nudge(self) -> None:
        """Something changed that may make room: wake every waiter to look again."""
        for fut in self._nudges:
            if not fut.done():
                fut.set_result(None)
        self._nudges.clear()

    async def _wait_nudge(self, at_most: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._nudges.add(fut)
        try:
            await asyncio.wait([fut], timeout=max(at_most, 0))
        finally:
            self._nudges.discard(fut)

    def _record(self, name: str, kind: str, took: float) -> None:
        self.metrics.swaps.labels(name, kind).inc()
        self.metrics.swap_duration.labels(kind).observe(took)
        self._report(name)

    def _report(self, name: str) -> None:
        self.metrics.resident.labels(name).set(1 if name in self.resident else 0)

    def _unavailable(self, b: Backend) -> ApiError:
        return ApiError(503, f"Model '{b.name}' is not available: {b.reason}. The next request tries again.",
                        code="model_unavailable", type="server_error", headers={"Retry-After": "10"})

    def _no_room(self, b: Backend, busy: set[str]) -> ApiError:
        why = (f"{', '.join(sorted(busy))} {'is' if len(busy) == 1 else 'are'} serving requests"
               if busy else "the models on its card were loaded moments ago")
        return ApiError(503, f"Model '{b.name}' is not loaded and there is no room for it on its card now: {why}; "
                             f"waited {self.gateway.queue_timeout:g} s.",
                        code="queue_timeout", type="server_error", headers={"Retry-After": "10"})
