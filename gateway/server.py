"""Running the app: one place that sets how aiohttp serves it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket

from aiohttp import web

from . import sdnotify
from .keys import MONITOR

log = logging.getLogger("localai.gateway")

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at this descriptor


def listen_socket() -> socket.socket | None:
    """The listening socket systemd passes (socket activation: LISTEN_FDS), or None to bind our own.

    With localai-gateway.socket holding the port, connections made while the gateway
    restarts wait in its backlog instead of being refused."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.set_inheritable(False)
    return sock


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str, port: int):
    # handler_cancellation: a client that disconnects cancels its handler, which
    # closes the upstream request, which makes vLLM stop generating (aiohttp's
    # default since 3.9 is to let the handler run on).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    # Connections that waited in systemd's socket during a restart are served as soon as we
    # listen: know which models are ready first (a few ms; bounded for a hung backend).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3.0):
            await app[MONITOR].first_round()
    inherited = listen_socket()
    site: web.BaseSite
    if inherited is not None:
        site = web.SockSite(runner, inherited)
        host, port = inherited.getsockname()[:2]
    else:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    # What exists now (modules, config, app, metrics: ~50,000 objects) lives as long as the
    # process: freeze it out of the cyclic collector's walks, which took 17% of the CPU at
    # 1,000 requests/s. Requests allocate containers by the thousand per second, so the
    # young generation is collected every 20,000 allocations rather than every 700.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    log.info("gateway listening on http://%s:%d%s", host, port, " (socket from systemd)" if inherited else "",
             extra={"host": host, "port": port, "socket_activated": inherited is not None})
    sdnotify.notify("READY=1\nSTATUS=serving")
    watchdog = asyncio.create_task(sdnotify.watchdog())
    try:
        yield runner
    finally:
        sdnotify.notify("STOPPING=1")
        watchdog.cancel()
        await runner.cleanup()
