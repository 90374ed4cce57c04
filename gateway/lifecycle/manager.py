"""Model lifecycle: load: on_demand models brought onto their card when asked for, and off it
when idle past keep_alive or when another needs the room.

Rules, in the order they bite:
- What may be resident together is residency.py's answer (each model's share of its card).
- A model with requests in flight or queued for a slot is never evicted; of the idle ones
  the least recently used goes first, and only once it has been resident `min_residency`
  seconds (so two models that can't be resident together are served in turn, not thrashed).
- A client's unload (Ollama's keep_alive 0, on a request or alone) waits out min_residency
  too; a client's keep_alive is held to gateway.max_keep_alive.
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
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

from gateway.base.errors import ApiError
from gateway.base.observability import Metrics
from gateway.config.schema import Config, ManagedModel
from gateway.lifecycle.swap import Boot, SwapError, Switch
from gateway.plan.restart import restart_changes
from gateway.routing.backends import Backend, Registry, Residence
from gateway.routing.states import State

log = logging.getLogger("localai.lifecycle")


def _iso(wall: float | None) -> str | None:
    """A wall-clock time as the listings show it; None (never) past what a date can say."""
    if wall is None:
        return None
    try:
        return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):  # an admin's keep_alive of a million years
        return None


def _keep_alive(m: ManagedModel) -> float:
    return -1.0 if m.keep_alive is None else m.keep_alive


def residence_fields(b: Backend) -> dict:
    """What a model card says about a model's place on its card: how it loads, its share,
    since when it is resident and when keep_alive unloads it (null: never)."""
    r = b.residence
    if r is None:
        return {"load": "always"}
    return {"load": "on_demand", "vram_share": r.share, "resident_since": _iso(r.since),
            "expires_at": _iso(r.expires_at)}


class Lifecycle:
    def __init__(self, cfg: Config, registry: Registry, metrics: Metrics, switches: Mapping[str, Switch]):
        """`switches`: how each load: on_demand model that comes and goes does (the app layer
        picks them: app/switches.py); one without is served as if it were load: always."""
        self.gateway = cfg.gateway
        self.residency = cfg.residency()
        self.source = cfg.source
        self.registry = registry
        self.metrics = metrics
        on_demand = [m for m in cfg.managed_models if m.load == "on_demand"]
        self._keep_alive = {m.name: _keep_alive(m) for m in on_demand}
        self._switches: dict[str, Switch] = dict(switches)
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
        for m in on_demand:
            registry.backends[m.name].residence = Residence(self.residency.need(m.name).share)
            registry.backends[m.name].on_change.append(lambda _: self._nudge())  # waiters look again

    def manages(self, name: str) -> bool:
        """Whether this model comes and goes (else it is served like a load: always one)."""
        return name in self._switches

    def apply(self, old: Config, new: Config) -> list[str]:
        """A reload (a Holder): gateway.queue_timeout, min_residency, wake_timeout, start_timeout
        and each model's keep_alive are in force from now (a model idle now counts its new
        keep_alive from its last request). Which models come and go, and how, is fixed when the
        gateway starts: plan/restart.py's "lifecycle" part, answered as needing a restart."""
        self.gateway = new.gateway
        for switch in self._switches.values():
            switch.gateway = new.gateway
        models = {m.name: m for m in new.managed_models if m.load == "on_demand"}
        loop = asyncio.get_running_loop()
        for name in self._keep_alive:
            m = models.get(name)
            if m is None or _keep_alive(m) == self._keep_alive[name]:
                continue
            self._keep_alive[name] = _keep_alive(m)
            if name in self._switches and name in self.resident and not self._users[name]:
                self._cancel_expiry(name)
                idle = loop.time() - self._last_used.get(name, loop.time())
                self._expire_later(name, self._keep_alive[name], idle)
        return restart_changes(old, new, "lifecycle")

    def start(self) -> None:
        for name, switch in self._switches.items():
            switch.at_start(self.registry.backends[name])
            self._report(name)
        if self._switches:
            self._spawn(self._boot())

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _boot(self) -> None:
        """Each model's switch, in config order, says where it stands (swap.Switch.boot): a server
        left running by the gateway before this one is kept while it fits beside the others (the
        team's loaded model stays loaded), a sleep-mode model starts (each takes its share at
        start) and then goes to sleep, the others wait, stopped."""
        written = self._config_written()
        for name, switch in self._switches.items():
            b = self.registry.backends[name]
            async with self._swap:
                room = self.residency.fits(self.resident | {name})
                self.resident.add(name)
                try:
                    boot = await switch.boot(b, written, room)
                    if boot is Boot.LOADED:
                        await self._evict(name, "sleeps until asked for")
                except (TimeoutError, SwapError) as exc:
                    self.resident.discard(name)
                    b.set_state(State.FAILED, str(exc) or "timed out")
                    continue
                if boot is Boot.KEPT:
                    self._kept(name)
                elif boot is Boot.OUT:
                    self.resident.discard(name)

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
        self._arrived(name)
        self._expire_later(name, self._keep_alive[name])
        self._report(name)
        log.info("swap: kept %s: its unit was running when the gateway started", name,
                 extra={"model": name, "kind": "kept"})

    # --- requests -------------------------------------------------------------------

    def ready(self, b: Backend) -> bool:
        """Serving now: no waiting, no heartbeats needed."""
        return b.name in self.resident and b.state is State.READY and not self._draining[b.name]

    def clamp_keep_alive(self, seconds: float) -> float:
        """A client's keep_alive held to gateway.max_keep_alive (-1 there: any, forever too)."""
        ceiling = self.gateway.max_keep_alive
        if ceiling < 0 or 0 <= seconds <= ceiling:
            return seconds
        return ceiling

    @contextlib.asynccontextmanager
    async def hold(self, b: Backend, keep_alive: float | None = None) -> AsyncIterator[None]:
        """Bring the model in if need be and keep it resident while the request lasts;
        `keep_alive`: the client's, from when the model goes idle (clamped by the caller)."""
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
                asked = self._next_keep_alive.pop(name, None)
                if asked is None:
                    self._expire_later(name, self._keep_alive[name])
                else:
                    self._expire_asked(name, asked)
                self._nudge()

    async def unload(self, b: Backend) -> None:
        """Unload once idle and resident min_residency (Ollama's keep_alive 0): now, or as soon as
        its last request ends, or once min_residency is out."""
        name = b.name
        if self._users[name]:
            self._next_keep_alive[name] = 0.0
        elif self._residency_left(name) > 0:
            self._cancel_expiry(name)
            self._expire_asked(name, 0.0)
        else:
            await self._unload(name, "unloaded on request")

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

    def _expire_later(self, name: str, keep_alive: float, idle: float = 0.0, why: str | None = None) -> None:
        """Unload once idle for keep_alive seconds (`idle`: idle that long already)."""
        b = self.registry.backends[name]
        if name not in self.resident or keep_alive < 0:
            return
        if keep_alive == 0:
            self._spawn(self._unload(name, "keep_alive 0: unloaded after its last request"))
            return
        left = max(keep_alive - idle, 0.0)
        assert b.residence is not None
        b.residence.expires_at = time.time() + left
        why = why or f"idle for keep_alive {keep_alive:g} s"
        self._timers[name] = asyncio.get_running_loop().call_later(left, lambda: self._spawn(self._unload(name, why)))

    def _residency_left(self, name: str) -> float:
        """Seconds until a model in on the card has been resident min_residency (0: it has)."""
        since = self._since.get(name)
        if since is None or name not in self.resident:
            return 0.0
        return max(since + self.gateway.min_residency - asyncio.get_running_loop().time(), 0.0)

    def _expire_asked(self, name: str, keep_alive: float) -> None:
        """A client's keep_alive, counted from now: no sooner than min_residency after the model came in,
        so loads and unloads asked for in turn can't thrash it."""
        left = self._residency_left(name)
        if 0 <= keep_alive < left:
            log.info("unload of %s asked for: deferred %.0f s, until it has been resident min_residency %g s",
                     name, left, self.gateway.min_residency, extra={"model": name, "kind": "deferred"})
            self._expire_later(name, left, why=f"asked to unload, after min_residency {self.gateway.min_residency:g} s")
        else:
            self._expire_later(name, keep_alive)

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
