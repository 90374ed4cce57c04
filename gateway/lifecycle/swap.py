"""How a load: on_demand model leaves its card and comes back.

Two mechanisms, chosen per model by the plan (plan.sleep_level):
- vLLM sleep mode (CUDA builds): POST /sleep?level=N puts it out, POST /wake_up brings it
  back in seconds; level 2 drops the weights, so they are reloaded and the prefix cache reset.
- stop/start (the CPU build, which has no sleep mode): through `localai up`'s supervisor, or, for
  the gateway run by systemd (`localai gateway --units`), by starting and stopping the model's
  unit over D-Bus (units.py; on another host through `systemctl -H`), so `systemctl status`
  shows what is loaded.
Either way one tiny request warms the model up before the waiting requests are let through:
the first request after a wake is otherwise several times slower. A model with replicas comes
and goes whole: each of its servers is woken or started (at once, each on its own host), put to
sleep or stopped; one that fails fails the swap, and the lifecycle puts the others out again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import aiohttp

from gateway.base.bounded import TooLarge, read_at_most
from gateway.config.schema import GatewaySettings
from gateway.routing.backends import Backend
from gateway.routing.states import State

if TYPE_CHECKING:
    from gateway.lifecycle.processes import Supervisor
    from gateway.lifecycle.units import Units

# While a started server loads, ask the health monitor this often whether it is up.
_POKE_S = 0.25
# A unit found active: its server answered /health at start; one that stays silent this long is
# stopped (and started afresh by the next request), not waited for as if it were loading.
_RUNNING_CHECK_S = 15.0


class SwapError(Exception):
    """A model could not be brought in or put out; the message says why."""


class Boot(Enum):
    """Where a model stands once its switch has looked at it when the gateway starts."""

    KEPT = "kept"  # its server, left running by the gateway before this one, serves: resident
    OUT = "out"  # off the card (stopped)
    LOADED = "loaded"  # started so that it can be put out (sleep mode): the lifecycle puts it to sleep


class Switch(Protocol):
    """How one load: on_demand model comes and goes; the app layer picks one per model."""

    into: str  # the kind of bringing in, for metrics and logs: "wake" or "start"
    out: str  # and of putting out: "sleep" or "stop"
    gateway: GatewaySettings  # its timeouts (a reload puts new ones here)

    def at_start(self, b: Backend) -> None:
        """Its state before anything is known: a model that starts on request is STOPPED."""

    async def boot(self, b: Backend, written: float, room: bool) -> Boot:
        """At the gateway's start (with the swap lock held): keep a server found running when
        there is `room` and it started after the config was `written`, else bring the model to
        where it waits for requests. Raises SwapError (or TimeoutError) saying why it could not."""
        ...

    async def bring_in(self, b: Backend) -> None:
        """Make it serve (state READY) or raise SwapError."""

    async def put_out(self, b: Backend) -> None:
        """Free its share of the card (state SLEEPING or STOPPED) or raise SwapError."""


async def until_state(b: Backend, states: tuple[State, ...], within: float,
                      poke: Callable[[], None] | None = None) -> None:
    """Wait until the backend is in one of these states (TimeoutError past `within` seconds)."""
    if b.state in states:
        return
    reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def changed(backend: Backend) -> None:
        if backend.state in states and not reached.done():
            reached.set_result(None)

    b.on_change.append(changed)
    try:
        async with asyncio.timeout(within):
            while not reached.done():
                if poke is not None:
                    poke()
                await asyncio.wait([reached], timeout=_POKE_S)
    finally:
        b.on_change.remove(changed)


async def together(jobs: list[Awaitable[None]]) -> None:
    """Run these at once (one per replica) and wait for all; the first SwapError (or timeout) is raised."""
    errors = [e for e in await asyncio.gather(*jobs, return_exceptions=True) if e is not None]
    for e in errors:
        if not isinstance(e, (SwapError, TimeoutError)):
            raise e
    if errors:
        raise errors[0]


async def warm_up(session: aiohttp.ClientSession, b: Backend, within: float) -> None:
    """One tiny request to each serving replica, so the first real one does not pay for cold
    caches and kernels."""
    body: dict[str, object]
    if b.model.task == "embed":
        path, body = "/v1/embeddings", {"model": b.served_id, "input": "warm up"}
    else:
        path, body = "/v1/completions", {"model": b.served_id, "prompt": "warm up", "max_tokens": 1}
    urls = [r.url for r in b.replicas if r.ready] or [b.url]
    await together([_post(session, url, path, body, within, "the warm-up request") for url in urls])


async def _said(r: aiohttp.ClientResponse) -> str:
    """The start of an error answer (its server runs model code: it is read with a bound)."""
    try:
        return (await read_at_most(r, 65536)).decode(errors="replace")[:200]
    except TooLarge:
        return "(an answer of over 64 KiB)"


async def _post(session: aiohttp.ClientSession, url: str, path: str, body: dict | None, within: float,
                what: str) -> None:
    try:
        async with session.post(url + path, json=body, timeout=aiohttp.ClientTimeout(total=within)) as r:
            if r.status != 200:
                raise SwapError(f"{what} answered HTTP {r.status}: {await _said(r)}")
    except TimeoutError:
        raise SwapError(f"{what} took longer than {within:g} s") from None
    except aiohttp.ClientError as exc:
        raise SwapError(f"{what} failed ({type(exc).__name__}: {exc})") from None


class SleepSwitch:
    """vLLM sleep mode: the server stays up, its weights (level 1: to CPU RAM) and KV cache leave the card."""

    into, out = "wake", "sleep"

    def __init__(self, session: aiohttp.ClientSession, level: int, gateway: GatewaySettings,
                 launch: Callable[[], Awaitable[None]] | None = None):
        self.session = session
        self.level = level
        self.gateway = gateway
        # Starts its server at the gateway's start; None: something else does (an always-on unit).
        self.launch = launch

    @property
    def timeout(self) -> float:
        return self.gateway.wake_timeout

    def at_start(self, b: Backend) -> None:
        pass  # its server starts with the gateway: loading

    async def boot(self, b: Backend, written: float, room: bool) -> Boot:
        """Started (each in turn takes its share at start), then the lifecycle puts it to sleep."""
        try:
            if self.launch is not None:
                await self.launch()
            await until_state(b, (State.READY,), self.gateway.start_timeout)
        except (TimeoutError, SwapError) as exc:
            raise SwapError(f"could not start and put to sleep: {exc or 'timed out'}") from None
        return Boot.LOADED

    async def put_out(self, b: Backend) -> None:
        path = f"/sleep?level={self.level}"
        await together([_post(self.session, r.url, path, None, self.timeout, f"POST {path}") for r in b.replicas])
        b.set_state(State.SLEEPING, f"asleep (sleep mode level {self.level})")

    async def bring_in(self, b: Backend) -> None:
        b.set_state(State.WAKING, f"waking from sleep level {self.level}")
        if self.level == 1:
            steps: list[tuple[str, dict | None]] = [("/wake_up", None)]
        else:  # the weights were dropped: bring the memory back, reload them, then the KV cache
            steps = [("/wake_up?tags=weights", None), ("/collective_rpc", {"method": "reload_weights"}),
                     ("/wake_up?tags=kv_cache", None), ("/reset_prefix_cache", None)]
        async def wake(url: str) -> None:
            for path, body in steps:
                await _post(self.session, url, path, body, self.timeout, f"POST {path}")

        await together([wake(r.url) for r in b.replicas])
        await warm_up(self.session, b, self.timeout)
        b.set_state(State.READY, None)


class _StopStart:
    """A model whose server is stopped to leave the card and started to come back."""

    into, out = "start", "stop"

    def __init__(self, session: aiohttp.ClientSession, poke: Callable[[str], None], gateway: GatewaySettings):
        self.session = session
        self.poke = poke  # asks the health monitor to look now
        self.gateway = gateway

    @property
    def timeout(self) -> float:
        return self.gateway.start_timeout

    def at_start(self, b: Backend) -> None:
        b.set_state(State.STOPPED, "stopped: starts on the first request")


class ProcessSwitch(_StopStart):
    """Stop and start the model's server through `localai up`'s supervisor."""

    def __init__(self, session: aiohttp.ClientSession, supervisor: Supervisor, poke: Callable[[str], None],
                 gateway: GatewaySettings):
        super().__init__(session, poke, gateway)
        self.supervisor = supervisor

    async def boot(self, b: Backend, written: float, room: bool) -> Boot:
        return Boot.OUT  # `localai up` starts none of them: nothing runs

    async def put_out(self, b: Backend) -> None:
        await self.supervisor.stop(b.name)
        b.set_state(State.STOPPED, "stopped: starts on the next request")

    async def bring_in(self, b: Backend) -> None:
        b.set_state(State.LOADING, "starting")
        try:
            self.supervisor.start(b.name)
        except RuntimeError as exc:  # `localai up` is shutting down
            raise SwapError(str(exc)) from None
        try:
            await until_state(b, (State.READY, State.FAILED), self.timeout, lambda: self.poke(b.name))
        except TimeoutError:
            raise SwapError(f"did not start within {self.timeout:g} s") from None
        if b.state is State.FAILED:  # the lifecycle stops it: no restart loop, the next request tries again
            raise SwapError((b.reason or "failed").split("; restarting in")[0])
        await warm_up(self.session, b, self.timeout)


async def start_units(servers: list[tuple[Units, str]], within: float) -> None:
    """Start localai-model@INSTANCE of each server (its host's manager, its instance) at once and
    return once all are active: each one's ExecStartPost saw its vLLM answer /health."""
    await together([_unit_job(units.start, instance, within, "start") for units, instance in servers])


async def _unit_job(job: Callable[[str], Awaitable[None]], instance: str, within: float, verb: str) -> None:
    # units.py (and its D-Bus library) is imported when used: a gateway that swaps nothing
    # through systemd does not load it.
    from gateway.lifecycle.units import UnitError, model_unit

    try:
        async with asyncio.timeout(within):
            await job(model_unit(instance))
    except TimeoutError:
        raise SwapError(f"{model_unit(instance)} did not {verb} within {within:g} s") from None
    except UnitError as exc:
        raise SwapError(str(exc)) from None


class UnitSwitch(_StopStart):
    """Stop and start the model's systemd units (localai-model@NAME.service, one per replica) over
    D-Bus, on this host or, through `systemctl -H`, on the host the plan puts each on."""

    def __init__(self, session: aiohttp.ClientSession, servers: list[tuple[Units, str]],
                 poke: Callable[[str], None], gateway: GatewaySettings):
        super().__init__(session, poke, gateway)
        self.servers = servers  # each replica's: its host's manager and the plan's unit instance name

    async def boot(self, b: Backend, written: float, room: bool) -> Boot:
        """Units left running by the gateway before this one (a restart, an upgrade) are kept
        while they fit and answer, if they started after the config was last written (else they
        may run an old command line, holding more of the card than the plan says); the others
        are stopped, so what is resident is what this process knows of."""
        if room and await self.running(b, written):
            return Boot.KEPT
        try:
            await self.put_out(b)
        except SwapError as exc:
            raise SwapError(f"could not stop it: {exc}") from None
        return Boot.OUT

    async def running(self, b: Backend, since: float) -> bool:
        """Whether its units (every replica's) are active with servers started after `since`
        (when the config was written: so they run this config's command line), for the gateway
        before this one (a restart, an upgrade), and it answers; then it can be kept, not stopped
        and started again."""
        from gateway.lifecycle.units import UnitError, model_unit

        for units, instance in self.servers:
            try:
                started = await units.running_since(model_unit(instance))
            except UnitError:
                return False
            if started is None or started < since:
                return False
        b.set_state(State.LOADING, "its unit was running when the gateway started: checking it")
        try:
            await until_state(b, (State.READY,), min(self.timeout, _RUNNING_CHECK_S), lambda: self.poke(b.name))
        except TimeoutError:
            return False
        return True

    async def put_out(self, b: Backend) -> None:
        await together([_unit_job(units.stop, instance, self.timeout, "stop") for units, instance in self.servers])
        b.set_state(State.STOPPED, "stopped: starts on the next request")

    async def bring_in(self, b: Backend) -> None:
        b.set_state(State.LOADING, "starting its unit")
        await start_units(self.servers, self.timeout)
        try:  # then the health monitor's own look (it also learns the served model's limits)
            await until_state(b, (State.READY,), self.timeout, lambda: self.poke(b.name))
        except TimeoutError:
            raise SwapError(f"its unit is active, but it did not answer within {self.timeout:g} s") from None
        await warm_up(self.session, b, self.timeout)
