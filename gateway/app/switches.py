"""Which switch (lifecycle/swap.py) brings each load: on_demand model in and out, given what
runs the model servers here: `localai up`'s supervisor, systemd units (`localai gateway
--units`), or neither (servers run by something else: only sleep mode can swap them)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from gateway.config.schema import Config
from gateway.lifecycle.processes import Supervisor
from gateway.lifecycle.swap import ProcessSwitch, SleepSwitch, Switch, UnitSwitch, start_units
from gateway.plan.placement import endpoints, sleep_level

if TYPE_CHECKING:
    from gateway.lifecycle.units import SystemdUnits, Units

log = logging.getLogger("localai.lifecycle")


def switches(cfg: Config, session: aiohttp.ClientSession, poke: Callable[[str], None], *,
             supervisor: Supervisor | None = None, units: SystemdUnits | None = None) -> dict[str, Switch]:
    """Each on_demand model's switch, in config order; one nothing here can swap is left out
    (served as load: always) and the log says why."""
    out: dict[str, Switch] = {}
    gw = cfg.gateway
    for m in cfg.managed_models:
        if m.load != "on_demand":
            continue
        name, placed = m.name, endpoints(cfg, m.name)  # one server per replica; they come and go together
        levels = {sleep_level(m, p) for p in placed}  # each replica's host's build may differ
        level = levels.pop() if len(levels) == 1 else None
        servers = [(units.on(p.host), p.unit) for p in placed] if units is not None else []
        if level is not None:
            out[name] = SleepSwitch(session, level, gw, _launcher(name, servers, gw.start_timeout, supervisor))
        elif supervisor is not None:
            out[name] = ProcessSwitch(session, supervisor, poke, gw)
        elif units is not None:
            out[name] = UnitSwitch(session, servers, poke, gw)
        else:
            log.warning("model %s is load: on_demand, but this vLLM has no sleep mode and nothing here can "
                        "start or stop it (run the gateway with --units under systemd, or use `localai up`): "
                        "served as load: always", name, extra={"model": name})
    return out


def _launcher(name: str, servers: list[tuple[Units, str]], within: float,
              supervisor: Supervisor | None) -> Callable[[], Awaitable[None]] | None:
    """How a sleep-mode model's servers are started when the gateway starts (None: not by it)."""
    if supervisor is not None:
        async def supervised() -> None:
            supervisor.start(name)
        return supervised
    if servers:
        def unit() -> Awaitable[None]:
            return start_units(servers, within)
        return unit
    return None
