"""The plan: what runs where.

`placements()` says where every managed model's servers run: which host, port and
cards, as which systemd instance (computed once per config; the seats come from
residency.py). `server_plan()` is the only place a placement becomes a vLLM command
line. `localai up`, `localai run-model` (the systemd unit's ExecStart), `localai check`,
`localai plan --json`, the gateway (`endpoints()`) and Ansible all read them, and every fact
derived from the config is said here once for all of them: each server's share of its card
(residency.py resolves the unset ones), how an on_demand model leaves its card (from its host's
accelerator: the config's fact, never a look at this machine), where the gateway listens and is
reached, and which ports each host opens to whom.

Unit (instance) names: a model's replica 0 is `NAME`, replica i is `NAME.i`; the
workers of a model spanning hosts (`nodes: N`) add `.nodeK` for node K (1..N-1), e.g.
`big`, `big.node1`, `big.1`, `big.1.node1`. They are unique across all hosts, so
`localai run-model UNIT` finds its placement without being told the host.
Ports: replica k of a model on one host (counting from 0 on each host) listens on
`port + port_offset + k`; workers have no HTTP port (0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.schema import Config, ExternalModel, Host, ManagedModel, VllmSettings, connect_host, derived

VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
# A worker node of a server spanning hosts: `vllm serve --headless`, which the entrypoint above
# can't run (see the script).
VLLM_HEADLESS_SCRIPT = Path(__file__).resolve().parent.parent / "vllm_venv" / "headless.py"

# vLLM's own default when the entry leaves max_num_seqs out.
VLLM_DEFAULT_MAX_NUM_SEQS = 256
EXTERNAL_DEFAULT_CONCURRENCY = 64
# vLLM keeps Responses API answers only with this set, and without them there is no retrieve
# and no previous_response_id. It keeps them in memory for the server's life (vLLM warns of
# that at start); a config's env may set it to "0".
_RESPONSES_STORE = {"VLLM_ENABLE_RESPONSES_API_STORE": "1"}


@dataclass(frozen=True)
class Placement:
    """One model server process on one host."""

    model: str  # model name
    replica: int  # 0-based
    host: str  # host name ("local" without hosts:; the URL's host for an external model)
    port: int  # on that host (port_offset applied; replica k on one host: port + k); 0 for a worker
    devices: str | None  # CUDA_VISIBLE_DEVICES for it (None = not pinned)
    role: str  # "server", "head" or "worker" (nodes > 1); "external" for an external model's endpoint
    unit: str  # the systemd instance name: localai-model@{unit}.service on that host
    url: str  # http://address:port the gateway uses (head/server only; "" for a worker)
    bind: str = ""  # the address vLLM listens on
    node: int = 0  # node rank (0: server or head)
    nodes: int = 1
    master: str = ""  # head's node_ip:master_port for nodes > 1
    node_ip: str = ""  # VLLM_HOST_IP for nodes > 1
    share: float = 0.0  # gpu_memory_utilization of each of its cards (residency.py resolves an unset one)
    accelerator: str = ""  # its host's vLLM build: cuda, rocm or cpu


@dataclass(frozen=True)
class ServerPlan:
    name: str
    url: str
    argv: list[str]
    env: dict[str, str]  # added to the inherited environment
    sleep_level: int | None = None  # vLLM sleep mode level when evicted; None: stopped instead
    unit: str = ""  # the placement's unit (instance) name: NAME, NAME.1, NAME.node1 ...


# The vLLM builds with sleep mode (vLLM's docs: CUDA and ROCm; the CPU build has none).
_SLEEPS_ON = ("cuda", "rocm")


def accelerator(host: Host) -> str:
    """A host's vLLM build: what the config says (Ansible writes the fact it gathered; `localai`
    fills in its own machine's), else cpu for a host without GPUs and cuda for one with."""
    return host.accelerator or ("cpu" if host.gpus == 0 else "cuda")


def sleep_level(model: ManagedModel, where: Placement) -> int | None:
    """How this model leaves the card when evicted: a sleep level, or None (stopped)."""
    if model.load != "on_demand" or model.sleep_mode == "off":
        return None
    if model.sleep_mode == "auto":
        return 1 if where.accelerator in _SLEEPS_ON else None
    return 2 if model.sleep_mode == "level2" else 1


def _unit(name: str, replica: int, node: int) -> str:
    return name + (f".{replica}" if replica else "") + (f".node{node}" if node else "")


def placements(cfg: Config) -> list[Placement]:
    """Every managed model's server processes on every host, in config order (computed once)."""
    return list(derived(cfg, "placements", lambda: _place(cfg)))


def _place(cfg: Config) -> tuple[Placement, ...]:
    models = {m.name: m for m in cfg.managed_models}
    named = cfg.hosts is not None
    per_host: dict[tuple[str, str], int] = {}
    heads: dict[tuple[str, int], str] = {}
    out = []
    for seat in cfg.seating().seats:
        m, host = models[seat.name], cfg.host(seat.host)
        role = "server" if m.nodes == 1 else ("head" if seat.node == 0 else "worker")
        # Where vLLM listens: vllm.host when the config sets it or has one host; on a named
        # host its address, which the gateway and the other nodes use.
        bind = host.reach if named and "host" not in cfg.vllm.model_fields_set else cfg.vllm.host
        node_ip = (host.node_ip or host.reach) if m.nodes > 1 else ""
        port, url = 0, ""
        if role != "worker":
            k = per_host.get((seat.name, seat.host), 0)
            per_host[(seat.name, seat.host)] = k + 1
            port = m.port + host.port_offset + k
            url = f"http://{connect_host(bind) if not named else host.reach}:{port}"
        if role == "head":
            heads[(seat.name, seat.replica)] = f"{node_ip}:{m.head_port + host.port_offset}"
        out.append(Placement(seat.name, seat.replica, seat.host, port, seat.devices, role,
                             _unit(seat.name, seat.replica, seat.node), url, bind, seat.node, m.nodes,
                             "", node_ip, seat.share, accelerator(host)))
    # Seats come head first within a replica, so every worker's head is known by now.
    return tuple(p if p.nodes == 1 else replace(p, master=heads[(p.model, p.replica)]) for p in out)


def endpoints(cfg: Config, model: str) -> list[Placement]:
    """What the gateway balances over for this model: its servers (or heads); an external
    model is its one URL."""
    return list(derived(cfg, f"endpoints {model}", lambda: _endpoints(cfg, model)))


def _endpoints(cfg: Config, model: str) -> tuple[Placement, ...]:
    m = cfg.model(model)
    if isinstance(m, ExternalModel):
        url = backend_url(m, cfg.vllm)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return (Placement(m.name, 0, parts.hostname or "", port, None, "external", "", url),)
    return tuple(p for p in placements(cfg) if p.model == model and p.role != "worker")


def placement(cfg: Config, unit: str) -> Placement:
    """The placement a systemd instance (or `localai run-model UNIT`) runs; KeyError if none."""
    for p in placements(cfg):
        if p.unit == unit:
            return p
    raise KeyError(unit)


def server_plan(model: ManagedModel, vllm: VllmSettings, where: Placement) -> ServerPlan:
    """The argv and environment of one placement of a model."""
    launch = [str(VLLM_HEADLESS_SCRIPT)] if where.role == "worker" else ["-m", VLLM_ENTRYPOINT]
    argv = [
        str(vllm.python), *launch,
        "--model", model.model,
        # The gateway routes by name; the backend answers to the same id.
        "--served-model-name", model.name,
    ]
    if where.role != "worker":
        argv += ["--host", where.bind, "--port", str(where.port)]
    # The gateway writes one access log line per request; vLLM's would double it.
    argv.append("--disable-uvicorn-access-log")
    options = {
        "--gpu-memory-utilization": where.share,
        "--max-model-len": model.max_model_len,
        "--max-num-seqs": model.max_num_seqs,
        "--max-num-batched-tokens": model.max_num_batched_tokens,
        "--dtype": model.dtype,
        "--quantization": model.quantization,
        "--kv-cache-dtype": model.kv_cache_dtype,
    }
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if model.task == "embed":
        argv += ["--runner", "pooling", "--convert", "embed"]
    elif model.task == "score":
        # A cross-encoder as is; a causal LM turned into one (its classification head as `score`).
        argv += ["--runner", "pooling", "--convert", "classify"]
    if model.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", model.tool_call_parser]
    if model.reasoning_parser:
        argv += ["--reasoning-parser", model.reasoning_parser]
    if model.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if model.enable_prefix_caching else "--no-enable-prefix-caching")
    store = _RESPONSES_STORE if model.task == "generate" else {}
    env = {**store, **vllm.env, **model.env}
    if where.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = where.devices
    if where.nodes > 1:
        argv += _multinode_args(where)
        env["VLLM_HOST_IP"] = where.node_ip
    level = sleep_level(model, where)
    if level is not None:
        # The /sleep, /wake_up and /is_sleeping endpoints exist only in dev mode. The server
        # listens on vllm.host (loopback by default) and the gateway never forwards them.
        argv.append("--enable-sleep-mode")
        env["VLLM_SERVER_DEV_MODE"] = "1"
    argv += model.extra_args
    return ServerPlan(model.name, where.url, argv, env, level, where.unit)


def last_flag(args: list[str], names: tuple[str, ...]) -> str | None:
    """The value vLLM takes for a flag given as `--flag V` or `--flag=V` (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in names:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
    return value


def _multinode_args(where: Placement) -> list[str]:
    """vLLM's multiprocessing multi-node launch (vLLM docs, "Running vLLM with MultiProcessing"):
    every node gets --nnodes/--node-rank and the head's torch.distributed address; the workers
    run --headless (no API server). Pipeline parallel across the nodes, tensor parallel over each
    node's own cards: what vLLM's docs advise when the hosts have no fast interconnect between
    them. A model's extra_args come after these, so they may say otherwise."""
    addr, port = where.master.rsplit(":", 1)
    per_node = len(where.devices.split(",")) if where.devices else 1
    # mp said outright: where Ray is installed and running, vLLM would otherwise pick Ray, which
    # refuses --nnodes.
    argv = ["--distributed-executor-backend", "mp", "--nnodes", str(where.nodes), "--node-rank", str(where.node),
            "--master-addr", addr, "--master-port", port,
            "--pipeline-parallel-size", str(where.nodes), "--tensor-parallel-size", str(per_node)]
    return argv + (["--headless"] if where.role == "worker" else [])


def backend_url(model: ManagedModel | ExternalModel, vllm: VllmSettings) -> str:
    if isinstance(model, ExternalModel):
        return model.url.rstrip("/").removesuffix("/v1")
    return f"http://{connect_host(vllm.host)}:{model.port}"


def max_concurrency(model: ManagedModel | ExternalModel) -> int:
    """Requests one server of the model takes at once (each replica's own slots)."""
    if model.max_concurrency:
        return model.max_concurrency
    if isinstance(model, ManagedModel):
        return model.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
    return EXTERNAL_DEFAULT_CONCURRENCY


def planned_concurrency(model: ManagedModel | ExternalModel) -> int:
    """The model's slots with every replica ready: each replica adds its own (the gateway counts
    only the ready ones: routing/backends.py Backend.fit_slots)."""
    return max_concurrency(model) * (model.replica_count if isinstance(model, ManagedModel) else 1)
