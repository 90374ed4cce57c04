"""Filters for the localai roles: profile choice, RAM/disk budgets, the plan's GPU budget shown.

Pure functions of plain data (no Ansible imports beyond the plugin hook), so
tests/systemd/test_static.py calls them directly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re

GIB = 1024**3
_VLLM_CPU_DEFAULT_KV_GIB = 4.0


def is_hub_id(model) -> bool:
    """'Org/Name' (a hub repository) rather than a local path."""
    if not isinstance(model, str):
        return False
    if model.startswith(("/", "./", "../", "~")):
        return False
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model))


def hub_cache_dirname(model: str) -> str:
    """The folder huggingface_hub keeps a repository in, under $HF_HOME/hub."""
    return "models--" + model.replace("/", "--")


def parse_nvidia_smi(lines) -> list:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,driver_version
    --format=csv,noheader,nounits` as dicts."""
    gpus = []
    for line in lines or []:
        f = [x.strip() for x in str(line).split(",")]
        if len(f) >= 4 and f[0].isdigit():
            try:
                mib = int(float(f[2]))
            except ValueError:
                continue
            gpus.append({"index": int(f[0]), "name": f[1], "memory_total_mib": mib, "driver_version": f[3]})
    return gpus


def select_profile(vram_mib, floors: dict) -> str:
    """The largest profile whose floor (MiB) the card meets, or '' below all."""
    best, best_floor = "", -1
    for name, floor in floors.items():
        if float(vram_mib) >= float(floor) and float(floor) > best_floor:
            best, best_floor = name, float(floor)
    return best


def placements(plan, host=None) -> list:
    """The model servers `localai plan --json` places: all of them, or those on `host`.

    Each is the plan's dict: unit (the instance of localai-model@), model,
    replica, host ('local' when the config names no hosts), port, devices
    (CUDA_VISIBLE_DEVICES or None), role, url, share, and the argv/env that
    `localai run-model UNIT` execs.
    """
    return [p for p in (plan or {}).get("placements") or [] if host is None or p.get("host") == host]


def rolling_servers(plan, servers, restart, active, host) -> list:
    """This host's servers that restart one replica at a time (roles/localai_models/tasks/rolling.yml):
    those of `servers` (this host's placements) due a restart (`restart`: unit names) and running
    now (`active`: unit names), of a load: always model that has other replicas (in the whole
    plan) to serve meanwhile; a replica spanning hosts (nodes > 1) is several units and restarts
    as before. Each: {host (the inventory's), unit, model, replica, server (the placement)}."""
    counts: dict = {}
    for p in placements(plan):
        if p.get("role") == "server":
            counts[p["model"]] = counts.get(p["model"], 0) + 1
    return [{"host": host, "unit": p["unit"], "model": p["model"], "replica": p["replica"], "server": p}
            for p in servers or []
            if p.get("role") == "server" and p.get("load", "always") == "always" and counts.get(p["model"], 0) > 1
            and p["unit"] in (restart or ()) and p["unit"] in (active or ())]


def node_mismatches(plan, versions) -> list:
    """Sentences for each model spanning hosts (nodes > 1) whose nodes have different vLLMs.

    versions: {inventory host: the vLLM version installed there, '' for none}."""
    spans: dict = {}
    for p in placements(plan):
        if int(p.get("nodes") or 1) > 1:
            spans.setdefault((p["model"], p["replica"]), []).append(p["host"])
    out = []
    for (model, replica), hosts in spans.items():
        seen = {h: (versions or {}).get(h) or "none" for h in hosts}
        if len(set(seen.values())) > 1:
            which = ", ".join(f"{h} {v}" for h, v in seen.items())
            out.append(f"Model '{model}' (replica {replica}) spans hosts whose vLLM differ ({which}); its nodes "
                       f"run one engine and need the same vLLM: run the playbook on all of them.")
    return out


def memory_lines(servers) -> list:
    """The plan's GPU memory budget of each of these servers, one sentence each (gateway/plan/memory.py
    reckons it against the card size the play wrote into the config, and refuses a config whose
    share cannot hold one max_model_len sequence)."""
    return [f"{s['unit']}: {s['memory']['card']}: {s['memory']['summary']}" for s in servers or [] if s.get("memory")]


def missing_cards(servers, gpus) -> list:
    """Sentences for each server pinned (CUDA_VISIBLE_DEVICES) to a card this host lacks: a config
    without `hosts:` does not say how many cards its one host has, so the plan cannot tell."""
    have = {str(g["index"]) for g in gpus or []}
    out = []
    for server in servers or []:
        for dev in str(server.get("devices") or "").split(","):
            if dev.strip() and dev.strip() not in have:
                out.append(f"Model '{server['unit']}' is placed on GPU {dev.strip()}, but this host has no such GPU.")
    return out


def ram_report(servers, memtotal_mb, overhead_gib=3.0) -> dict:
    """CPU build: each server on this host holds VLLM_CPU_KVCACHE_SPACE GiB of KV cache plus its runtime.

    servers: this host's placements, whose env is what the plan gives the server."""
    problems, lines, need = [], [], 0.0
    for server in servers or []:
        kv = float((server.get("env") or {}).get("VLLM_CPU_KVCACHE_SPACE") or _VLLM_CPU_DEFAULT_KV_GIB)
        one = kv + float(overhead_gib)
        need += one
        lines.append(f"{server['unit']}: about {one:.1f} GiB RAM ({kv:g} GiB KV cache + runtime)")
    have = float(memtotal_mb) / 1024
    if need > have * 0.9:
        problems.append(f"The model servers on this host need about {need:.1f} GiB of RAM together but it has "
                        f"{have:.1f} GiB: serve fewer models or lower VLLM_CPU_KVCACHE_SPACE.")
    return {"ok": not problems, "problems": problems, "lines": lines}


def mount_free_bytes(mounts, path: str) -> int:
    """Free bytes of the mount holding path (longest mount point that prefixes it)."""
    best, best_len = None, -1
    for m in mounts or []:
        mp = m.get("mount", "")
        if (path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/") and len(mp) > best_len:
            best, best_len = m, len(mp)
    return int(best.get("size_available", 0)) if best else 0


def weights_gib(models, plan) -> float:
    """Total download of the hub models in the list (GiB), as the plan's catalog says (0 for one it lacks)."""
    sizes = {m["name"]: m.get("weights_gib") or 0.0 for m in (plan or {}).get("models") or []}
    return round(sum(sizes.get(m.get("name"), 0.0) for m in models or [] if is_hub_id(m.get("model"))), 2)


def _deep_merge(base, over):
    out = dict(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def effective_config(source, tiny=(), models_dir="/var/lib/localai/models", vllm_python=None,
                     api_key_file=None, webui_dir=None, gateway_host="", gateway_port=0,
                     overrides=None, all_tiny=False, hosts=None, vllm_host="", accelerator="",
                     tls="false", tls_dir="/etc/localai/tls", gpu_memory_gib=0, usage_db=None,
                     batch_dir=None, admin_keys=()) -> dict:
    """The config the host gets: the chosen source plus what the roles own.

    - models listed in `tiny` (every managed one with all_tiny) point at
      models_dir/tiny-<name>, where the role generates them;
    - vllm.python is the venv the role built; the API key file and the WebUI
      are the ones the role installs; gateway host/port knobs when set;
    - `hosts` (a deploy over several hosts: one entry per inventory host, its
      GPUs and accelerator from its facts) and the address the model servers listen on;
    - `accelerator` of a single host (vllm.accelerator): the vLLM build the play
      installs (cuda, cpu). Said outright, the plan (what sleep_mode: auto means,
      among others) is the same before vLLM is installed;
    - `gpu_memory_gib` of a single host (vllm.gpu_memory_gib): its card's memory, which the plan
      budgets weights and KV cache against (with hosts, each host's entry says its own);
    - `gateway.usage_db` (the usage database in a folder of the gateway's user alone) unless the
      config says where (or `null`: none), and `gateway.batch_dir` (the Batch API's files) likewise;
    - `gateway.admin_keys` (the key the role generates: its holder deployed the service) unless the
      config names its own;
    - then `overrides`, merged recursively;
    - last, `gateway.tls` (the certificate the role installs in tls_dir) when `tls` is true, or
      auto and the gateway listens beyond loopback, unless the config names a certificate itself.
    """
    cfg = _deep_merge({}, source or {})
    tiny = set(tiny or ())
    models = []
    for entry in cfg.get("models") or []:
        entry = dict(entry)
        # The weights path of an entry that has one (a managed model's; the plan says which are).
        if "model" in entry and (all_tiny or entry.get("name") in tiny):
            entry["model"] = f"{models_dir.rstrip('/')}/tiny-{entry.get('name')}"
        models.append(entry)
    cfg["models"] = models
    vllm = dict(cfg.get("vllm") or {})
    if vllm_python:
        vllm["python"] = vllm_python
    if vllm_host:
        vllm["host"] = vllm_host
    if accelerator and not hosts:
        vllm["accelerator"] = accelerator
    if float(gpu_memory_gib or 0) > 0 and not hosts:
        vllm["gpu_memory_gib"] = round(float(gpu_memory_gib), 2)
    cfg["vllm"] = vllm
    gw = dict(cfg.get("gateway") or {})
    if api_key_file:
        gw["api_key_file"] = api_key_file
    if webui_dir:
        gw["webui_dir"] = webui_dir
    if gateway_host:
        gw["host"] = gateway_host
    if int(gateway_port or 0):
        gw["port"] = int(gateway_port)
    if usage_db and "usage_db" not in gw:
        gw["usage_db"] = usage_db
    if batch_dir and "batch_dir" not in gw:
        gw["batch_dir"] = batch_dir
    if admin_keys and "admin_keys" not in gw:
        gw["admin_keys"] = list(admin_keys)
    cfg["gateway"] = gw
    if hosts:
        cfg["hosts"] = [dict(h) for h in hosts]
    cfg = _deep_merge(cfg, overrides or {})
    gw = cfg["gateway"]
    mode = str(tls).lower()
    if "tls" not in gw and (mode == "true" or (mode == "auto" and not _loopback(str(gw.get("host", "127.0.0.1"))))):
        gw["tls"] = {"cert": f"{tls_dir.rstrip('/')}/gateway.pem", "key": f"{tls_dir.rstrip('/')}/gateway.key"}
    # A stable key order: gateway, vllm, hosts, models, then anything else.
    first = ["gateway", "vllm", "hosts", "models"]
    return {k: cfg[k] for k in [*first, *sorted(set(cfg) - set(first))] if k in cfg}


def tiny_model_dirs(models, models_dir="/var/lib/localai/models") -> list:
    """[{name, path}] for the models of the list the role generates (their path is under models_dir/tiny-*)."""
    prefix = models_dir.rstrip("/") + "/tiny-"
    return [{"name": m["name"], "path": m["model"]} for m in models or []
            if str(m.get("model", "")).startswith(prefix)]


def firewall_rules(ports, gateway_sources) -> list:
    """[{port, source, comment}]: one rule per port the plan opens on a host and per source.

    ports: the plan's hosts[].ports ({port, from, for}); `from` is "gateway" (the
    gateway host's addresses: gateway_sources) or the addresses of the other nodes."""
    rules = []
    for entry in ports or []:
        sources = gateway_sources if entry["from"] == "gateway" else entry["from"]
        rules += [{"port": entry["port"], "source": s, "comment": entry["for"]} for s in sources]
    return rules


def server_fingerprint(server) -> str:
    """What decides whether a model server must restart: the argv and env its unit execs.

    An alias, preset or gateway edit leaves it alone (the gateway reloads for
    those); a new max_model_len, port, device or vllm.env changes it."""
    text = json.dumps({"argv": server.get("argv") or [], "env": server.get("env") or {}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class FilterModule:
    def filters(self):
        return {
            "localai_is_hub_id": is_hub_id,
            "localai_hub_cache_dirname": hub_cache_dirname,
            "localai_select_profile": select_profile,
            "localai_parse_nvidia_smi": parse_nvidia_smi,
            "localai_memory_lines": memory_lines,
            "localai_missing_cards": missing_cards,
            "localai_ram_report": ram_report,
            "localai_mount_free_bytes": mount_free_bytes,
            "localai_weights_gib": weights_gib,
            "localai_effective_config": effective_config,
            "localai_tiny_model_dirs": tiny_model_dirs,
            "localai_placements": placements,
            "localai_node_mismatches": node_mismatches,
            "localai_rolling_servers": rolling_servers,
            "localai_server_fingerprint": server_fingerprint,
            "localai_firewall_rules": firewall_rules,
        }
