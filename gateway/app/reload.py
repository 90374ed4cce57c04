"""Reload on SIGHUP (`systemctl reload localai-gateway`): new keys, config and WebUI
without a restart, and without touching a request in flight.

What applies live: the key file, gateway.key_limits, models (added, removed, their
aliases, presets, default, max_concurrency, context settings, external URLs and
keys, the replicas balanced over), max_queue, queue_timeout, health_interval,
log_level, and a new WebUI build. What a running process cannot change (where it
listens, the body limit, upstream timeouts, whether the WebUI is served, how vLLM
servers are started, servers the plan adds or drops) is logged as "needs restart",
naming each server's unit and host. A config or key file with errors changes
nothing: the gateway keeps what it has and logs why, FILE:LINE.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.app.machine import on_this_machine
from gateway.config.schema import Config, ConfigError, ManagedModel
from gateway.http.appkeys import ACCESS, MONITOR, REGISTRY
from gateway.http.webui import WEBUI
from gateway.keys.keyring import load_keyring
from gateway.plan.placement import placements, server_plan
from gateway.plan.validate import load_config

log = logging.getLogger("localai.reload")

# Gateway settings a running process keeps until it restarts.
_RESTART_SETTINGS = ("host", "port", "max_body_bytes", "connect_timeout", "read_timeout", "webui")


class Reloader:
    """Holds the config in force; reload() reads the file again and applies what it can."""

    def __init__(self, app: web.Application, cfg: Config):
        self.app = app
        self.config = cfg

    def reload(self) -> bool:
        """True when the new config (and key file) are in force."""
        old = self.config
        log.info("reloading %s", old.source)
        try:
            new = on_this_machine(load_config(old.source)) if old.source.name != "<memory>" else old
            keyring = load_keyring(new.gateway.api_key_file)
        except ConfigError as exc:
            log.error("reload failed; keeping the running config and keys:\n%s", exc,
                      extra={"config": str(old.source)})
            return False
        needs_restart = _needs_restart(old, new)
        app = self.app
        access = app[ACCESS]
        access.keyring = keyring
        access.limiter.apply(new.gateway.key_limits)
        added, removed = app[REGISTRY].apply(new)
        monitor = app.get(MONITOR)
        if monitor is not None:  # None before the app started
            monitor.interval = new.gateway.health_interval
            for b in removed:
                monitor.unwatch(b.name)
            for b in added:
                monitor.watch(b)
        logging.getLogger().setLevel(new.gateway.log_level.upper())
        if WEBUI in app:
            app[WEBUI].load()
        self.config = new
        for what in needs_restart:
            log.warning("%s changed: needs restart (the running one stays as it is)", what, extra={"setting": what})
        log.info("reloaded %s: %d keys, models %s", new.source, len(keyring.names),
                 ", ".join(app[REGISTRY].backends),
                 extra={"keys": len(keyring.names), "added": [b.name for b in added],
                        "removed": [b.name for b in removed], "needs_restart": needs_restart})
        return True


def _needs_restart(old: Config, new: Config) -> list[str]:
    """What changed that this process cannot apply."""
    changed = [f"gateway.{name}" for name in _RESTART_SETTINGS
               if getattr(old.gateway, name) != getattr(new.gateway, name)]
    if old.gateway.webui and old.gateway.webui_dir != new.gateway.webui_dir:
        changed.append("gateway.webui_dir")
    # How a vLLM server is started belongs to its own unit (or `localai up`): restart that. The
    # gateway balances over a changed set of replicas at once; starting or stopping them is not its job.
    before = {p.unit: p for p in placements(old)}
    known = {m.name for m in old.managed_models}  # a new model's servers are started with it, not by us
    for p in placements(new):
        # Placements are of managed models only.
        m, was = new.model(p.model), before.pop(p.unit, None)
        assert isinstance(m, ManagedModel)
        where = f" on host {p.host}" if new.hosts is not None else ""
        if was is None:
            if p.model in known:
                changed.append(f"model {p.model}'s new server localai-model@{p.unit}{where} (start it)")
            continue
        old_m = old.model(was.model)
        assert isinstance(old_m, ManagedModel)
        if server_plan(old_m, old.vllm, was) != server_plan(m, new.vllm, p):
            changed.append(f"model {p.model}'s vLLM server localai-model@{p.unit}{where} (restart it)")
    for unit, was in before.items():
        if any(m.name == was.model for m in new.managed_models):  # a model removed is simply no longer routed to
            where = f" on host {was.host}" if old.hosts is not None else ""
            changed.append(f"model {was.model}'s server localai-model@{unit}{where}, no longer planned (stop it)")
    return changed


RELOADER = web.AppKey("reloader", Reloader)
