"""What each model server needs of its card: weights, runtime and the KV cache of its window.

The one reckoning of GPU memory: `localai check` prints it, `localai plan --json` gives it to
Ansible (which writes the card's real size into the config first), and the plan refuses a
model whose share cannot hold one sequence of its max_model_len — vLLM would refuse to start
("no available memory for the cache blocks", or a max_model_len larger than the cache).

A server's share of its card (gpu_memory_utilization, resolved by the seating) holds:
weights (the catalog's, split over the cards it spans) + runtime (CUDA context, activations,
graphs: RUNTIME_GIB + RUNTIME_GIB_PER_B per billion parameters, as the playbook has measured it)
+ KV cache. The KV cache holds `full_sequences` sequences of max_model_len at once; vLLM runs
up to max_num_seqs, sharing that cache among shorter ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config.schema import Config, ManagedModel
from gateway.plan.catalog import GIB, facts
from gateway.plan.placement import VLLM_DEFAULT_MAX_NUM_SEQS, Placement, last_flag, placements

RUNTIME_GIB = 1.0
RUNTIME_GIB_PER_B = 0.03


@dataclass(frozen=True)
class Budget:
    """One server's memory on each of its cards (GiB); None where the plan can't know."""

    unit: str
    name: str  # the config's model name
    model: str  # what it serves (hub id or path)
    card: str  # "GPU 0", "GPUs 0,1 (each)", "host gpu1 GPU 0", "its card" (unpinned)
    card_gib: float | None  # the config's gpu_memory_gib (None: not said)
    share: float
    weights_gib: float | None  # on each card
    runtime_gib: float | None
    kv_bytes_per_token: int | None  # on each card
    kv_cache_dtype: str
    max_model_len: int | None
    max_num_seqs: int
    kv_gib: float | None = None  # what the share leaves for KV cache
    full_sequences: int | None = None  # max_model_len sequences that fit at once
    summary: str = ""

    @property
    def sequence_gib(self) -> float | None:
        if self.kv_bytes_per_token is None or self.max_model_len is None:
            return None
        return self.kv_bytes_per_token * self.max_model_len / GIB


def _spread(m: ManagedModel, p: Placement) -> int:
    """Cards one server's weights and KV cache are split over (tensor x pipeline parallel)."""
    per_node = len(p.devices.split(",")) if p.devices else 1
    tp = int(last_flag(m.extra_args, ("--tensor-parallel-size", "-tp")) or per_node)
    pp = int(last_flag(m.extra_args, ("--pipeline-parallel-size", "-pp")) or p.nodes)
    return max(1, tp * pp)


def _card_gib(cfg: Config, p: Placement) -> float | None:
    if cfg.hosts is not None:
        return cfg.host(p.host).gpu_memory_gib or cfg.vllm.gpu_memory_gib
    return cfg.vllm.gpu_memory_gib


def budgets(cfg: Config) -> list[Budget]:
    """Each GPU server's budget. A CPU host's KV cache is VLLM_CPU_KVCACHE_SPACE, not a share: its
    servers have none, unless the config names a card size (a GPU profile checked on a CPU machine)."""
    out = []
    for p in placements(cfg):
        m = cfg.model(p.model)
        if p.role == "worker" or not isinstance(m, ManagedModel) or m.task != "generate":
            continue
        if p.accelerator == "cpu" and _card_gib(cfg, p) is None:
            continue
        out.append(_budget(cfg, m, p))
    return out


def _card_label(cfg: Config, p: Placement) -> str:
    if p.devices is None:
        where = "its card"
    else:
        where = f"GPUs {p.devices} (each)" if "," in p.devices else f"GPU {p.devices}"
    return f"host {p.host} {where}" if cfg.hosts is not None else where


def _budget(cfg: Config, m: ManagedModel, p: Placement) -> Budget:
    known = facts(m.model)
    dtype = m.kv_cache_dtype or "auto"
    seqs = m.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
    label, card_gib = _card_label(cfg, p), _card_gib(cfg, p)
    if known is None:
        return Budget(p.unit, m.name, m.model, label, card_gib, p.share, None, None, None, dtype, m.max_model_len, seqs,
                      summary=f"{m.model} is not in the plan's catalog (gateway/plan/catalog.py): memory not reckoned")
    spread = _spread(m, p)
    window = m.max_model_len or known.context
    weights = known.weights_gib / spread
    runtime = RUNTIME_GIB + RUNTIME_GIB_PER_B * known.params_b / spread
    per_token = math.ceil(known.kv_bytes_per_token(m.kv_cache_dtype) / spread)
    kv_text = f"{per_token / 1024:g} KiB/token ({'fp8' if dtype.startswith('fp8') else 'bf16'})"
    seq_gib = per_token * window / GIB
    need = f"{weights:.1f} GiB weights + {runtime:.1f} runtime + KV {seq_gib:.1f} per {window}-token sequence " \
           f"at {kv_text}"
    if card_gib is None:
        return Budget(p.unit, m.name, m.model, label, None, p.share, weights, runtime, per_token, dtype, window, seqs,
                      summary=f"{need}; card size unknown (vllm.gpu_memory_gib): not checked")
    share_gib = p.share * card_gib
    kv = share_gib - weights - runtime
    full = max(0, math.floor(kv / seq_gib)) if seq_gib else 0
    summary = (f"{share_gib:.1f} GiB ({p.share:g} x {card_gib:g}) = {weights:.1f} weights + {runtime:.1f} runtime "
               f"+ {kv:.1f} KV cache at {kv_text}: {full} x {window} tokens at full length, "
               f"{min(full, seqs)} of max_num_seqs {seqs}")
    return Budget(p.unit, m.name, m.model, label, card_gib, p.share, weights, runtime, per_token, dtype, window, seqs,
                  kv, full, summary)


def problems(cfg: Config) -> list[tuple[str, str, str]]:
    """(model name, key, message) for each server whose share cannot hold one full-length sequence,
    and each max_model_len past the model's native context (vLLM refuses it)."""
    out = []
    for b in budgets(cfg):
        m = cfg.model(b.name)
        assert isinstance(m, ManagedModel)
        known = facts(m.model)
        if known is not None and m.max_model_len and m.max_model_len > known.context:
            out.append((m.name, "max_model_len", f"{m.max_model_len} is past {m.model}'s native context of "
                                                 f"{known.context} tokens (vLLM refuses it)"))
            continue
        if b.full_sequences is None or b.full_sequences >= 1 or b.kv_gib is None:
            continue
        assert b.weights_gib is not None and b.runtime_gib is not None and b.kv_bytes_per_token is not None
        assert b.card_gib is not None and b.max_model_len is not None and b.sequence_gib is not None
        fit_share = (b.weights_gib + b.runtime_gib + b.sequence_gib) / b.card_gib
        tokens = max(0, int(b.kv_gib * GIB / b.kv_bytes_per_token)) // 1024 * 1024
        advice = [f"gpu_memory_utilization {math.ceil(fit_share * 100) / 100:.2f}" if fit_share <= 0.95 else "",
                  f"max_model_len {tokens}" if tokens >= 1024 else "",
                  # An FP8 cache halves the sequence: advised only where that is enough.
                  "kv_cache_dtype: fp8" if not b.kv_cache_dtype.startswith("fp8") and b.kv_gib >= b.sequence_gib / 2
                  else ""]
        advice = [a for a in advice if a] or ["a smaller model or a larger card"]
        out.append((m.name, "max_model_len" if m.max_model_len else "gpu_memory_utilization",
                    f"model '{m.name}' ({m.model}) on {b.card}: its share {b.share:g} x {b.card_gib:g} GiB = "
                    f"{b.share * b.card_gib:.1f} GiB holds {b.weights_gib:.1f} GiB weights + {b.runtime_gib:.1f} "
                    f"runtime and leaves {b.kv_gib:.1f} GiB of KV cache, less than one sequence of max_model_len "
                    f"{b.max_model_len} ({b.sequence_gib:.1f} GiB); it needs: " + " or ".join(advice)))
    return out

