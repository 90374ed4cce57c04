"""What can be known about a model from its files on disk, without loading it.

The architecture, parameter count, size and dtype of a managed model, read from
its folder (config.json and the safetensors headers) or from the newest
snapshot of a hub model in the cache vLLM uses. Any API family that describes
models (Ollama's /api/tags and /api/show today) reads them here.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

from gateway.config.schema import Config, ManagedModel
from gateway.routing.backends import Backend


def hf_snapshot(repo_id: str, env: dict[str, str]) -> Path | None:
    """The newest local snapshot of a hub model, in the cache vLLM would use."""
    cache = env.get("HF_HUB_CACHE") or os.environ.get("HF_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
        cache = os.path.join(home, "hub")
    snapshots = Path(cache) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    try:
        found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return found[-1] if found else None


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


@functools.lru_cache(maxsize=64)
def weights_facts(folder: str) -> dict:
    """Architecture, parameter count, size and dtype read from a model folder (config + safetensors headers)."""
    facts: dict = {}
    root = Path(folder)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if isinstance(config.get("model_type"), str):
        facts["family"] = config["model_type"]
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and isinstance(quant.get("quant_method"), str):
        facts["quantization_level"] = quant["quant_method"]
    params = size = 0
    dtypes: set[str] = set()
    for path in root.glob("*.safetensors"):
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    continue
                header = json.loads(f.read(length))
            size += path.stat().st_size
        except (OSError, ValueError, struct.error):
            continue
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            count = 1
            for dim in tensor.get("shape", []):
                count *= dim
            params += count
            dtypes.add(str(tensor.get("dtype", "")))
    if params:
        facts["parameter_count"] = params
        facts["size"] = size
        if "quantization_level" not in facts and len(dtypes) == 1:
            facts["quantization_level"] = dtypes.pop()  # F32, BF16, F16 ... as Ollama names them
    try:
        facts["modified_at"] = datetime.fromtimestamp((root / "config.json").stat().st_mtime, UTC)
    except OSError:
        pass
    return facts


def model_facts(backend: Backend, cfg: Config) -> dict:
    model = backend.model
    if not isinstance(model, ManagedModel):
        return {}
    folder = Path(model.model)
    if not folder.is_dir():
        folder = hf_snapshot(model.model, {**cfg.vllm.env, **model.env}) or folder
    return weights_facts(str(folder)) if folder.is_dir() else {}

