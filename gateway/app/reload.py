"""Reload on SIGHUP (`systemctl reload localai-gateway`): new keys, config and WebUI
without a restart, and without touching a request in flight.

Every holder of state made from the config (config/holder.py) takes the new one or answers
what only a restart applies; the log line says both, from their answers. What applies live:
the key file, gateway.key_limits, models (added, removed, their aliases, presets, default,
max_concurrency, context settings, external URLs and keys, the replicas balanced over),
max_queue, queue_timeout, balance, health_interval, log_level, the lifecycle's
min_residency, wake_timeout, start_timeout and each model's keep_alive, and a new WebUI
build. What a running process cannot change (plan/restart.py: where it listens, the body limit,
upstream timeouts, the bounds on client connections and upstream answers, whether the WebUI is
served, which models are load: on_demand and how they swap; and how vLLM servers are started,
servers the plan adds or drops) is logged as "needs restart", naming each server's unit and host.
A config or key file with errors changes nothing: the gateway keeps what it has and logs why,
FILE:LINE, at ERROR; so does a reload that would leave a gateway with keys without any (a key
file emptied, api_key_file removed).
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.app.machine import on_this_machine
from gateway.config.holder import Holder
from gateway.config.schema import Config, ConfigError, ManagedModel
from gateway.http.appkeys import ACCESS, LIFECYCLE, MONITOR, REGISTRY
from gateway.http.webui import WEBUI
from gateway.keys.keyring import load_keyring
from gateway.plan.placement import placements, server_plan
from gateway.plan.restart import restart_changes
from gateway.plan.validate import load_config

log = logging.getLogger("localai.reload")


class Reloader:
    """Holds the config in force; reload() reads the file again and hands it to every holder of
    state made from it (config/holder.py), each of which applies it or answers what needs a restart."""

    def __init__(self, app: web.Application, cfg: Config):
        self.app = app
        self.config = cfg

    def holders(self) -> list[Holder]:
        """In the order they apply: the registry before the health monitor that watches its backends."""
        app = self.app
        found: list[Holder | None] = [app[ACCESS].limiter, app[REGISTRY], app.get(MONITOR), app.get(LIFECYCLE),
                                      app.get(WEBUI), _LOG_LEVEL, _PROCESS]
        return [h for h in found if h is not None]  # the monitor and the lifecycle: once the app started

    def reload(self) -> bool:
        """True when the new config (and key file) are in force."""
        old = self.config
        log.info("reloading %s", old.source)
        try:
            new = on_this_machine(load_config(old.source)) if old.source.name != "<memory>" else old
            keyring = load_keyring(new.gateway.api_key_file)
            if not keyring and self.app[ACCESS].keyring:
                raise ConfigError(new.source, [(None, "gateway", "no key source (api_key_file, $LOCALAI_API_KEY): "
                                                "the reload would leave no key and open the gateway to anyone; "
                                                "restart it to run without keys")])
        except ConfigError as exc:
            log.error("reload failed; keeping the running config and keys:\n%s", exc,
                      extra={"config": str(old.source)})
            return False
        registry = self.app[REGISTRY]
        before = dict(registry.backends)
        self.app[ACCESS].keyring = keyring
        needs_restart = [what for holder in self.holders() for what in holder.apply(old, new)]
        self.config = new
        added = [n for n, b in registry.backends.items() if before.get(n) is not b]
        removed = [n for n, b in before.items() if registry.backends.get(n) is not b]
        for what in needs_restart:
            log.warning("%s changed: needs restart (the running one stays as it is)", what, extra={"setting": what})
        log.info("reloaded %s: %d keys, models %s; %s", new.source, len(keyring.names), ", ".join(registry.backends),
                 f"needs restart: {'; '.join(needs_restart)}" if needs_restart else "all of it in force",
                 extra={"keys": len(keyring.names), "added": added, "removed": removed,
                        "needs_restart": needs_restart})
        return True


class _LogLevel:
    """gateway.log_level: the root logger's level."""

    def apply(self, old: Config, new: Config) -> list[str]:
        logging.getLogger().setLevel(new.gateway.log_level.upper())
        return []


class _Process:
    """What the running process took from its config when it started: where it listens, its body
    limit, upstream timeouts, the WebUI served or not (plan/restart.py's "gateway" part); and how
    each vLLM server is started, which is its own unit's (or `localai up`'s) to restart."""

    def apply(self, old: Config, new: Config) -> list[str]:
        return restart_changes(old, new, "gateway") + _servers_changed(old, new)


_LOG_LEVEL, _PROCESS = _LogLevel(), _Process()


def _servers_changed(old: Config, new: Config) -> list[str]:
    """The model servers to start, restart or stop: the gateway balances over a changed set of
    replicas at once; starting or stopping them is not its job."""
    changed: list[str] = []
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
