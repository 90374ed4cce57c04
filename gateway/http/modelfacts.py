"""What can be known about a model from its files on disk, without loading it.

The architecture, parameter count, size and dtype of a managed model, read from
its folder (config.json and the safetensors headers) or from the newest
snapshot of a hub model in the cache vLLM uses. Any API family that describes
models (Ollama's /api/tags and /api/show today) reads them here. The files are
read defensively (anything may be in them) and once per version of each file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.config.schema import Config, ManagedModel
from gateway.lifecycle.pull import hub_cache, repo_folder
from gateway.routing.backends import Backend


def hf_snapshot(repo_id: str, env: dict[str, str]) -> Path | None:
    """The newest local snapshot of a hub model, in the cache vLLM would use."""
    snapshots = repo_folder(hub_cache({**os.environ, **env}), repo_id) / "snapshots"
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


# What is read of a model's files. They are not trusted (a model folder or hub snapshot is
# anyone's upload): a fact that cannot be read is left out, never an error of the listing.
# A safetensors header is read up to this size (the format allows 100 MB; a shard of a large
# checkpoint has a few hundred KB), a tensor of more elements than this is not believed.
HEADER_LIMIT = 32 * 1024 * 1024
_MAX_ELEMENTS = 10**15

# What was read of each file, by path, with the version (mtime, size) it was read from: a file is
# read again only once it changed. Bounded: past _CACHED files the oldest entries go.
_CACHED = 1024
_read: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}


def _once_per_version(path: Path, read: Callable[[Path], Any]) -> Any:
    """read(path), or what it gave for this version of the file; None if the file is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    key, version = (str(path), read.__name__), (st.st_mtime_ns, st.st_size)
    hit = _read.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = read(path)
    _read.pop(key, None)
    _read[key] = (version, value)
    while len(_read) > _CACHED:
        del _read[next(iter(_read))]
    return value


def _config_facts(path: Path) -> dict:
    """Family and quantization from a config.json (HF's)."""
    try:
        config = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(config, dict):
        return {}
    facts = {}
    if isinstance(config.get("model_type"), str):
        facts["family"] = config["model_type"]
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and isinstance(quant.get("quant_method"), str):
        facts["quantization_level"] = quant["quant_method"]
    return facts


def _elements(tensor: object) -> int | None:
    """A tensor's element count from its header entry; None unless every dimension is a count."""
    shape = tensor.get("shape") if isinstance(tensor, dict) else None
    if not isinstance(shape, list):
        return None
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            return None
        count *= dim
        if count > _MAX_ELEMENTS:
            return None
    return count


def _safetensors_facts(path: Path) -> tuple[int, frozenset[str]] | None:
    """(parameter count, dtypes) from a .safetensors file's header; None if it cannot be read."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > HEADER_LIMIT:
                return None
            header = orjson.loads(f.read(length))
    except (OSError, orjson.JSONDecodeError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    params = 0
    dtypes: set[str] = set()
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = _elements(tensor)
        if count is None or not isinstance(tensor.get("dtype"), str):
            return None  # one tensor unreadable: the file tells nothing sure
        params += count
        dtypes.add(tensor["dtype"])
    return params, frozenset(dtypes)


def weights_facts(folder: str) -> dict:
    """Architecture, parameter count, size and dtype read from a model folder (config + safetensors headers)."""
    root = Path(folder)
    facts: dict = dict(_once_per_version(root / "config.json", _config_facts) or {})
    params = size = 0
    dtypes: set[str] = set()
    for path in sorted(root.glob("*.safetensors")):
        read = _once_per_version(path, _safetensors_facts)
        if read is None:
            continue
        params += read[0]
        dtypes |= read[1]
        try:
            size += path.stat().st_size
        except OSError:
            continue
    if params:
        facts["parameter_count"] = params
        facts["size"] = size
        if "quantization_level" not in facts and len(dtypes) == 1:
            facts["quantization_level"] = dtypes.pop()  # F32, BF16, F16 ... as Ollama names them
    try:
        facts["modified_at"] = datetime.fromtimestamp((root / "config.json").stat().st_mtime, UTC)
    except (OSError, OverflowError, ValueError):  # no file, or a date no datetime holds
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

