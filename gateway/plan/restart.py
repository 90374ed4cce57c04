"""What a running gateway takes from its config only when it starts: the one list of it.

A reload (SIGHUP) applies everything else; these it reports as "needs restart". The same facts,
hashed, are the plan's `gateway.restart_fingerprint` (`localai plan --json`): the playbook
restarts the gateway when the fingerprint it runs with differs from the new one, and reloads
it otherwise. Two parts, each answered by the holder that keeps it (app/reload.py):
- "gateway": where it listens, its certificate (gateway.tls), its body limit, upstream timeouts,
  the bounds on client connections and on upstream answers, whether (and from where) the WebUI
  is served: fixed in the aiohttp application and its socket.
- "lifecycle": which models are load: on_demand and how each comes and goes (its share of the
  card, sleep mode or stop/start, its unit): the lifecycle is built with them.
"""

from __future__ import annotations

import hashlib
import json

from gateway.config.schema import Config
from gateway.plan.placement import endpoints, sleep_level

# Gateway settings a running process keeps until it restarts.
GATEWAY_SETTINGS = ("host", "port", "max_body_bytes", "connect_timeout", "read_timeout", "webui",
                    "header_timeout", "idle_timeout", "max_connections_per_client", "max_upstream_body_bytes",
                    "max_upstream_event_bytes", "response_headers_timeout", "first_token_timeout",
                    "usage_keep_days", "usage_keep_hourly_days",
                    # The batch runner's (http/batch.py), read from the config it started with.
                    "batch_max_file_bytes", "batch_max_key_bytes", "batch_max_lines", "batch_parallel",
                    "batch_priority", "batch_retries")


def restart_facts(cfg: Config) -> dict[str, dict[str, object]]:
    """Part -> setting -> value (plain JSON data) of what only a restart changes."""
    gw = cfg.gateway
    gateway: dict[str, object] = {f"gateway.{name}": getattr(gw, name) for name in GATEWAY_SETTINGS}
    if gw.tls is not None:  # and the certificate files: read once, as it starts
        gateway["gateway.tls"] = {"cert": str(gw.tls.cert), "key": str(gw.tls.key)}
    if gw.webui:
        gateway["gateway.webui_dir"] = None if gw.webui_dir is None else str(gw.webui_dir)
    # The usage store is opened once, as the app starts (app/factory.py).
    gateway["gateway.usage_db"] = None if gw.usage_db is None else str(gw.usage_db)
    # So are the batch store and its runner (http/batch.py).
    gateway["gateway.batch_dir"] = None if gw.batch_dir is None else str(gw.batch_dir)
    residency = cfg.residency()
    lifecycle: dict[str, object] = {}
    for m in cfg.managed_models:
        if m.load == "on_demand":
            level = sleep_level(m, endpoints(cfg, m.name)[0])
            lifecycle[f"model {m.name}'s load: on_demand"] = {
                "share": residency.need(m.name).share, "swap": f"sleep level {level}" if level else "stop/start",
                "unit": endpoints(cfg, m.name)[0].unit}
    return {"gateway": gateway, "lifecycle": lifecycle}


def restart_changes(old: Config, new: Config, part: str) -> list[str]:
    """The settings of this part that differ (added, dropped or changed) between two configs."""
    before, after = restart_facts(old)[part], restart_facts(new)[part]
    return [name for name in dict.fromkeys([*before, *after]) if before.get(name) != after.get(name)]


def restart_fingerprint(cfg: Config) -> str:
    """A hash of every part's facts: equal for two configs exactly when a reload is enough between them."""
    text = json.dumps(restart_facts(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
