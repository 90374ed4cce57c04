"""What the benchmark runs against: its ports, key and paths, the full and quick plans,
the gateway configs it writes, and the versions it records."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PORT_GATEWAY = 18500
PORT_GATEWAY_REAL = 18501
PORT_GATEWAY_REPLICAS = 18504  # + 0 / + 1: the same replicas, balanced by each policy (REPLICA_POLICIES)
PORT_MOCK = 18510          # A; B = +1, C = +2; the replica servers from +3 (REPLICA_SERVERS)
# The replicas phase: model `pair` on a fast and a slow server (mock_upstream's SECONDSxSLOTS: a
# server doing SLOTS requests at a time, SECONDS each: 400/s and 100/s of capacity), model `flaky`
# on a fast one and one that closes every request's connection unanswered, `solo` on that fast one.
# The scale-out phase (bench/scaleout.py): three equal servers from +7, 4 requests at a time, 0.2 s each.
REPLICA_SERVERS = ("0.01x4", "0.04x4", "0.001x64", "closing", "0.2x4", "0.2x4", "0.2x4")
SCALEOUT_PORT = 18517  # PORT_MOCK + 3 + 4: the first of the scale-out phase's servers
REPLICA_POLICIES = ("round_robin", "least_outstanding")
PORT_VLLM = 18520
PORT_GATEWAY_USAGE = 18506  # + 0: usage store off, + 1: on (the usage phase)
USAGE_MODES = ("off", "on")
PORT_GATEWAY_SWAP = 18502  # `localai up` of the swap phase; its two models on 18530, 18531
PORT_SWAP_MODELS = 18530
API_KEY = "sk-bench-0123456789abcdef"
LOCALAI_HOME = Path(os.environ.get("LOCALAI_HOME", Path.home() / ".cache" / "localai"))
VLLM_PYTHON = Path(os.environ.get("LOCALAI_VLLM_PYTHON", LOCALAI_HOME / "vllm-venv" / "bin" / "python"))
TINY_MODELS = LOCALAI_HOME / "models"
TINY_MODEL = TINY_MODELS / "tiny-coder"

FULL = dict(
    rounds=3, warmup=True,
    seq_s=3.0,
    open_rates=[100, 500, 1000, 2000, 3000, 5000], open_s=4.0, open_warm_s=1.0, open_timeout=1.0,
    stream_conc=[1, 16, 64, 256, 1000], stream_s=5.0, stream_stagger=1.0,
    held_users=1000, held_s=3.0,
    replica_rate=300, replica_s=4.0, replica_conversations=64, retry_s=3.0,
    scaleout_s=5.0, hung_s=30.0,
    real=True, real_conc=[1, 4, 16], real_s=6.0, real_tokens=32,
    swap_resident=5, swap_rounds=4,
    usage_rate=1000, usage_s=4.0, usage_rounds=5,
)
QUICK = dict(
    rounds=1, warmup=True,
    seq_s=1.0,
    open_rates=[1000, 3000], open_s=2.0, open_warm_s=0.5, open_timeout=1.0,
    stream_conc=[16, 1000], stream_s=0.0, stream_stagger=1.0,
    held_users=500, held_s=0.0,
    replica_rate=300, replica_s=2.0, replica_conversations=64, retry_s=1.0,
    scaleout_s=3.0, hung_s=20.0,
    real=False, real_conc=[1, 4], real_s=4.0, real_tokens=16,
    swap_resident=3, swap_rounds=2,
    usage_rate=1000, usage_s=2.0, usage_rounds=2,
)



def write_replica_configs(out: Path, keys: Path) -> list[Path]:
    """One gateway config per balancing policy, over the same replica servers (two hosts on this
    machine, the second's ports one higher)."""
    pair, flaky = PORT_MOCK + 3, PORT_MOCK + 5
    paths = []
    for i, policy in enumerate(REPLICA_POLICIES):
        path = out / f"gateway-replicas-{policy}.yaml"
        path.write_text(
            f"# Replicas phase, balance: {policy}.\n"
            f"gateway:\n  host: {HOST}\n  port: {PORT_GATEWAY_REPLICAS + i}\n  api_key_file: {keys}\n"
            f"  max_queue: 20000\n  webui: false\n  health_interval: 0.5\n  balance: {policy}\n"
            f"  max_connections_per_client: 0\n  usage_db: null\n"
            f"hosts:\n  - {{name: one, address: {HOST}, gpus: 0}}\n"
            f"  - {{name: two, address: {HOST}, gpus: 0, port_offset: 1}}\n"
            f"models:\n"
            + "".join(f"  - {{name: {name}, model: mock, port: {port}, hosts: [one, two], max_concurrency: 4096,"
                      f" gpu_memory_utilization: 0.4}}\n" for name, port in (("pair", pair), ("flaky", flaky)))
            + f"  - {{name: solo, url: 'http://{HOST}:{flaky}/v1', served_model: mock, max_concurrency: 4096,"
              f" default: true}}\n")
        paths.append(path)
    return paths


def write_usage_configs(out: Path, keys: Path) -> list[Path]:
    """The usage phase: the same gateway on mock A without and with the usage store."""
    paths = []
    for i, mode in enumerate(USAGE_MODES):
        path = out / f"gateway-usage-{mode}.yaml"
        db = "null" if mode == "off" else str(out / "usage.db")
        path.write_text(
            f"# Usage phase, store {mode}.\n"
            f"gateway:\n  host: {HOST}\n  port: {PORT_GATEWAY_USAGE + i}\n  api_key_file: {keys}\n"
            f"  max_queue: 20000\n  max_connections_per_client: 0\n  webui: false\n  usage_db: {db}\n"
            f"models:\n  - {{name: mock-a, url: 'http://{HOST}:{PORT_MOCK}/v1', served_model: mock, "
            f"max_concurrency: 4096}}\n")
        paths.append(path)
    return paths


def write_configs(out: Path) -> tuple[Path, Path]:
    keys = out / "api-keys"
    keys.write_text(API_KEY + "\n")
    keys.chmod(0o600)
    # max_connections_per_client: 0, as behind a reverse proxy: the load generator is 1,000 clients on one address.
    common = (f"  host: {HOST}\n  api_key_file: {keys}\n  max_queue: 20000\n  queue_timeout: 60\n"
              f"  max_connections_per_client: 0\n  usage_db: {out / 'usage-main.db'}\n"
              f"  webui: false\n  # log_level: info (the default, as in production)\n")
    synth = out / "gateway.yaml"
    synth.write_text(
        "# Gateway under test: production settings, external models pointing at the mock upstream.\n"
        f"gateway:\n  port: {PORT_GATEWAY}\n{common}models:\n" + "".join(
            f"  - name: mock-{p.lower()}\n"
            + ("    default: true\n" if p == "A" else "")
            + f"    url: http://{HOST}:{PORT_MOCK + i}/v1\n    served_model: mock\n    max_concurrency: 4096\n"
            for i, p in enumerate("ABC")))
    real = out / "gateway-real.yaml"
    real.write_text(
        "# Real-backend mode: one vLLM (CPU) server on the generated tiny model, started with\n"
        "# `localai run-model coder`, and the gateway in front of it (as under systemd).\n"
        f"vllm:\n  python: {VLLM_PYTHON}\n  env:\n    VLLM_CPU_KVCACHE_SPACE: \"1\"\n"
        f"    VLLM_CPU_OMP_THREADS_BIND: nobind\n"
        f"gateway:\n  port: {PORT_GATEWAY_REAL}\n{common}"
        f"models:\n  - name: coder\n    model: {TINY_MODEL}\n    port: {PORT_VLLM}\n"
        f"    max_model_len: 2048\n    max_num_seqs: 16\n    dtype: float32\n    extra_args: [--enforce-eager]\n")
    return synth, real


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "kernel": platform.release()}
    for dist in ("localai", "aiohttp", "uvloop", "orjson", "prometheus-client", "python-json-logger",
                 "multidict", "yarl"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                          if line.startswith("model name"))
    except (OSError, StopIteration):
        out["cpu"] = platform.processor()
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip()
        out["gateway_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "gateway"], cwd=REPO,
                                                   capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    vllm_site = list(VLLM_PYTHON.parent.parent.glob("lib/python*/site-packages/vllm*.dist-info"))
    out["vllm"] = vllm_site[0].name.removesuffix(".dist-info").split("-", 1)[1] if vllm_site else None
    return out
