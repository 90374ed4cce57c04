"""`localai up`: the gateway and every managed vLLM server in one foreground process,
for hosts without systemd (laptops, containers, CI)."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from gateway.app.factory import SUPERVISOR
from gateway.app.runtime import announced
from gateway.app.server import serve
from gateway.config.schema import Config
from gateway.http.appkeys import LIFECYCLE, REGISTRY
from gateway.lifecycle.processes import Supervisor
from gateway.plan.placement import Placement, placements


async def run_up(cfg: Config, app: web.Application, stop: asyncio.Event,
                 here: list[Placement] | None = None, announce: bool = False) -> None:
    """Serve the gateway and supervise the model servers placed here (default: all of them)
    until `stop` is set; `announce`: leave the record the CLI finds it by (gateway/app/runtime.py)."""
    supervisor = Supervisor(cfg, app[REGISTRY], placements(cfg) if here is None else here)
    # load: on_demand models are the lifecycle's to start: it is built with it as the app starts.
    app[SUPERVISOR] = supervisor
    async with serve(app, cfg.gateway.host, cfg.gateway.port) as runner:
        with announced(runner.addresses[0], cfg.source, "up") if announce else contextlib.nullcontext():
            for name in supervisor.models:
                if not app[LIFECYCLE].manages(name):
                    supervisor.start(name)
            await stop.wait()
            await supervisor.stop_all()
