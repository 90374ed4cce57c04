"""The whole plan as plain data: what `localai check` prints and `localai plan --json` gives
Ansible (each host's servers, shares, ports, the gateway's addresses and restart fingerprint)."""

from __future__ import annotations

from dataclasses import asdict
from ipaddress import ip_address
from urllib.parse import urlsplit

from gateway.config.schema import Config, ManagedModel, connect_host
from gateway.plan import memory
from gateway.plan.catalog import facts
from gateway.plan.placement import (
    Placement,
    accelerator,
    backend_url,
    endpoints,
    max_concurrency,
    placements,
    planned_concurrency,
    server_plan,
)
from gateway.plan.restart import restart_fingerprint


def full_plan(cfg: Config) -> dict:
    """The whole plan as plain data, for `localai check` / `localai plan --json`."""
    models = []
    for m in cfg.models:
        entry = {
            "name": m.name,
            "aliases": list(m.aliases),
            "default": m is cfg.default_model,
            "kind": "managed" if isinstance(m, ManagedModel) else "external",
            "url": backend_url(m, cfg.vllm),
            # The model's slots with every replica ready, and each replica's own.
            "max_concurrency": planned_concurrency(m),
            "replica_concurrency": max_concurrency(m),
            "task": m.task,
            "presets": {name: p.defaults() for name, p in m.presets.items()},
        }
        if isinstance(m, ManagedModel):
            known = facts(m.model)
            # The whole checkpoint (what a download takes), None for a model the catalog lacks.
            entry["weights_gib"] = known.weights_gib if known else None
            first = endpoints(cfg, m.name)[0]
            p = server_plan(m, cfg.vllm, first)
            entry.update(url=first.url, port=first.port, argv=p.argv, env=p.env, load=m.load,
                         share=first.share, replicas=m.replica_count, nodes=m.nodes)
            if m.load == "on_demand":
                entry.update(keep_alive=-1.0 if m.keep_alive is None else m.keep_alive,
                             swap=f"sleep level {p.sleep_level}" if p.sleep_level else "stop/start")
        models.append(entry)
    residency = cfg.residency()
    budgets = {b.unit: b for b in memory.budgets(cfg)}
    return {
        "config": str(cfg.source),
        # restart_fingerprint: what only a gateway restart applies, hashed (restart.py); the playbook
        # restarts the gateway when it differs from the running one's, and reloads it otherwise.
        "gateway": {**_gateway(cfg), "restart_fingerprint": restart_fingerprint(cfg)},
        "models": models,
        "hosts": _hosts(cfg),
        # Every server process: what `localai up` starts and what each host's units run.
        "placements": [_placement_entry(cfg, p, budgets) for p in placements(cfg)],
        # Which models can be resident at once: every always model, plus any one of these sets.
        "residency": {"always": residency.always_names, "on_demand_together": residency.together()},
    }


def _placement_entry(cfg: Config, p: Placement, budgets: dict[str, memory.Budget]) -> dict:
    m = cfg.model(p.model)
    assert isinstance(m, ManagedModel)
    server = server_plan(m, cfg.vllm, p)
    entry = asdict(p)
    # GPU memory of each of its cards (memory.py): what `localai check` and the playbook show.
    budget = budgets.get(p.unit)
    entry.update(load=m.load, argv=server.argv, env=server.env, memory=asdict(budget) if budget else None)
    return entry


def _loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gateway(cfg: Config) -> dict:
    """Where the gateway listens (systemd's ListenStream: an address, IPv6 in brackets), the URL
    it is reached at on its own host, its certificate (gateway.tls: HTTPS for the other hosts) and
    the port it opens to clients (none on loopback)."""
    gw = cfg.gateway
    return {"host": gw.host, "port": gw.port,
            "listen": _hostport("127.0.0.1" if gw.host == "localhost" else gw.host, gw.port),
            "url": f"http://{_hostport(connect_host(gw.host), gw.port)}",  # plain HTTP: this host's
            "tls": None if gw.tls is None else {"cert": str(gw.tls.cert), "key": str(gw.tls.key)},
            "ports": [] if _loopback(gw.host) else [{"port": gw.port, "from": "clients", "for": "localai gateway"}]}


def _ports(cfg: Config, host: str) -> list[dict]:
    """What this host opens: each server's port to the gateway (where the gateway reaches it over
    the network) and each head's master_port to its workers' node_ip (torch.distributed)."""
    out: list[dict] = []
    every = placements(cfg)
    for p in every:
        if p.host != host or p.role == "worker":
            continue
        if not _loopback(urlsplit(p.url).hostname or ""):
            out.append({"port": p.port, "from": "gateway", "for": f"localai model {p.unit}"})
        if p.role == "head":
            workers = [w.node_ip for w in every if (w.model, w.replica, w.role) == (p.model, p.replica, "worker")]
            out.append({"port": int(p.master.rsplit(":", 1)[1]), "from": workers,
                        "for": f"localai model {p.unit} master_port"})
    return out


def _hosts(cfg: Config) -> list[dict]:
    """Each host and, per card, the share each load: always model takes (on_demand ones take turns)."""
    residency = cfg.residency()
    out = []
    for h in cfg.host_list:
        cards: dict[str, dict[str, float]] = {}
        for need in residency.needs:
            if need.host == h.name:
                for card in sorted(need.cards):
                    held = cards.setdefault(card, {})
                    key = need.name + (" (on_demand)" if need.on_demand else "")
                    held[key] = round(held.get(key, 0.0) + need.share, 4)
        out.append({"name": h.name, "address": h.reach, "gpus": h.gpus if cfg.hosts else None,
                    "gpu_memory_gib": h.gpu_memory_gib or cfg.vllm.gpu_memory_gib,
                    "port_offset": h.port_offset, "node_ip": h.node_ip, "accelerator": accelerator(h),
                    "ports": _ports(cfg, h.name),
                    "cards": dict(sorted(cards.items(), key=lambda c: (len(c[0]), c[0])))})
    return out
