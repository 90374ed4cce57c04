"""Filters for the localai roles: profile choice, VRAM/RAM/disk budgets.

Pure functions of plain data (no Ansible imports beyond the plugin hook), so
tests/systemd/test_static.py calls them directly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re

GIB = 1024**3

# Bytes per parameter of the weights as they sit in GPU memory (4-bit
# quantised layers plus fp16 embeddings and scales; fp16/bf16; 8-bit).
_BYTES_PER_PARAM = {"4bit": 0.62, "8bit": 1.1, "16bit": 2.05}
# KV cache per token and per billion parameters when a model is not in the
# catalog: GQA models of 2024-25 sit at 4-14 KiB/B; take the top of that.
_KV_KIB_PER_TOKEN_PER_B = 16
_DEFAULT_CONTEXT = 32768
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


def _quant_class(entry: dict) -> str:
    text = " ".join(str(entry.get(k) or "") for k in ("quantization", "model")).lower()
    if re.search(r"awq|gptq|int4|4bit|4-bit|w4a16|bnb|gguf|q4", text):
        return "4bit"
    if re.search(r"fp8|int8|8bit|w8a8|w8a16", text):
        return "8bit"
    return "16bit"


def _params_b(model: str):
    m = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", model.split("/")[-1])
    return float(m.group(1)) if m else None


def model_estimate(entry: dict, catalog: dict) -> dict:
    """Weights (GiB), KV bytes per token and native context of one model entry.

    The catalog (localai_checks_model_catalog) wins; otherwise the size is read
    off the name ("...-7B-...") and the quantisation. `known` is False when
    neither worked; the check then says so instead of guessing.
    """
    model = str(entry.get("model", ""))
    info = dict((catalog or {}).get(model.lower()) or (catalog or {}).get(model) or {})
    params = info.get("params_b") or _params_b(model)
    out = {"model": model, "known": True, "source": "catalog" if info else "estimate"}
    if "weights_gib" in info:
        out["weights_gib"] = float(info["weights_gib"])
    elif params:
        out["weights_gib"] = round(params * 1e9 * _BYTES_PER_PARAM[_quant_class(entry)] / GIB, 2)
    else:
        out["weights_gib"] = 0.0
        out["known"] = False
    kv_kib = info.get("kv_kib_per_token") or ((params or 0) * _KV_KIB_PER_TOKEN_PER_B)
    out["kv_bytes_per_token"] = float(kv_kib) * 1024
    out["context"] = int(info.get("context") or _DEFAULT_CONTEXT)
    out["params_b"] = params or 0.0
    return out


def placements(plan, host=None) -> list:
    """The model servers `localai plan --json` places: all of them, or those on `host`.

    Each is the plan's dict: unit (the instance of localai-model@), model,
    replica, host ('local' when the config names no hosts), port, devices
    (CUDA_VISIBLE_DEVICES or None), role, url, share, and the argv/env that
    `localai run-model UNIT` execs.
    """
    return [p for p in (plan or {}).get("placements") or [] if host is None or p.get("host") == host]


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


def vram_report(servers, models, gpus, catalog, overhead_gib=1.0, overhead_gib_per_b=0.03, kv_sequences=2) -> dict:
    """Check that each model server on this host fits its share of its card.

    servers: this host's placements (see placements()); models: the config's
    entries, for what the weights estimate reads; gpus: [{index, name,
    memory_total_mib}]. Which card a server is on and which servers may be
    resident together is the plan's (the product's) decision; this adds what
    the product cannot know: how much memory the model needs. A share is
    the plan's share (every server has one: vLLM's 0.9 alone on a card, split
    where models share one) x card memory; it must hold the weights, a fixed
    runtime overhead (CUDA context, activations, graphs) and the KV cache of
    `kv_sequences` sequences of max_model_len tokens. vLLM itself refuses to
    start below one ("no available memory for the cache blocks"); the second
    is headroom. Returns {"ok": bool, "problems": [sentence], "lines": [summary]}.
    """
    by_index = {str(g["index"]): g for g in gpus or []}
    entries = {m.get("name"): m for m in models or []}
    problems, lines = [], []
    for server in servers or []:
        name, entry = server["unit"], entries.get(server["model"], {})
        # vLLM (one card, no tensor parallelism) runs on the first card it sees.
        dev = (str(server.get("devices") or "0").split(",")[0].strip()) or "0"
        gpu = by_index.get(dev)
        if gpu is None:
            problems.append(f"Model '{name}' is placed on GPU {dev}, but this host has no such GPU.")
            continue
        card_gib = float(gpu["memory_total_mib"]) / 1024
        util = float(server["share"])
        est = model_estimate(entry, catalog)
        if not est["known"]:
            lines.append(f"{name}: size of '{est['model']}' unknown (add it to localai_checks_model_catalog); "
                         f"VRAM not checked")
            continue
        ctx = int(entry.get("max_model_len") or est["context"])
        kv_gib = est["kv_bytes_per_token"] * ctx * int(kv_sequences) / GIB
        over = float(overhead_gib) + float(overhead_gib_per_b) * est["params_b"]
        need = est["weights_gib"] + over + kv_gib
        share = util * card_gib
        lines.append(f"{name}: {share:.1f} GiB of GPU {dev} ({util:.2f} x {card_gib:.1f}) for "
                     f"{est['weights_gib']:.1f} GiB weights + {over:.1f} GiB runtime + "
                     f"{kv_gib:.1f} GiB KV cache ({kv_sequences} x {ctx} tokens) = {need:.1f} GiB")
        if need > share:
            fit = need / card_gib + 0.01
            if fit <= 1.0:
                advice = (f"raise gpu_memory_utilization to {fit:.2f} (`localai check` then says whether the "
                          f"models still fit together), lower max_model_len, or pick a smaller model.")
            else:
                advice = "that is more than this card can give one model: lower max_model_len or pick a smaller model."
            problems.append(
                f"Model '{name}' ({est['model']}) needs about {need:.1f} GiB on GPU {dev} "
                f"({est['weights_gib']:.1f} weights, {over:.1f} runtime, {kv_gib:.1f} KV cache for "
                f"{kv_sequences} x {ctx} tokens) but gpu_memory_utilization {util:.2f} of "
                f"{card_gib:.1f} GiB gives it {share:.1f} GiB; {advice}")
    return {"ok": not problems, "problems": problems, "lines": lines}


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


def weights_gib(models, catalog) -> float:
    """Total download of the hub models in the list (GiB): managed ones, which the plan says."""
    return round(sum(model_estimate(m, catalog)["weights_gib"] for m in models or []
                     if is_hub_id(m.get("model"))), 2)


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
                     tls="false", tls_dir="/etc/localai/tls", usage_db=None) -> dict:
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
    - `gateway.usage_db` (the usage database in a folder of the gateway's user alone) unless the
      config says where (or `null`: none);
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
            "localai_model_estimate": model_estimate,
            "localai_vram_report": vram_report,
            "localai_ram_report": ram_report,
            "localai_mount_free_bytes": mount_free_bytes,
            "localai_weights_gib": weights_gib,
            "localai_effective_config": effective_config,
            "localai_tiny_model_dirs": tiny_model_dirs,
            "localai_placements": placements,
            "localai_node_mismatches": node_mismatches,
            "localai_server_fingerprint": server_fingerprint,
            "localai_firewall_rules": firewall_rules,
        }
