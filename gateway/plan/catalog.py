"""What the plan knows of the models the shipped profiles serve: the one place their facts live.

The memory budget (memory.py) reads weights and KV cache per token from here; `localai check`,
`localai plan --json` and Ansible's checks all show that one reckoning. A model that is not
listed is served all the same: its budget is shown as unknown (add it here to have it checked).

KV cache per token = attention layers x KV heads x head dim x 2 (K and V) x bytes per element
(2 for bf16/fp16, 1 for an fp8 cache), from the model's config.json. Layers with a sliding
window (gpt-oss: every other one, 128 tokens) are counted as full ones: vLLM's pages for them
are few, and counting them keeps the budget on the safe side. `weights_gib` is the checkpoint's
size as loaded (its safetensors files; an estimate where the card says no more, noted in
`source`). Each entry names where its facts were read.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
# Bytes per KV element for vLLM's --kv-cache-dtype values (auto: the model's bf16/fp16).
KV_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class ModelFacts:
    params_b: float  # total parameters, billions
    active_b: float  # parameters per token (MoE); = params_b for a dense model
    weights_gib: float  # as loaded on the card
    layers: int  # attention layers holding KV cache
    kv_heads: int
    head_dim: int
    context: int  # native context (max_position_embeddings, no rope scaling)
    licence: str
    tool_call_parser: str | None  # vLLM's parser for its tool-call format
    source: str  # model card / config.json the facts come from

    def kv_bytes_per_token(self, kv_cache_dtype: str | None) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * KV_DTYPE_BYTES[kv_cache_dtype or "auto"]


def _qwen3_coder_30b(weights_gib: float, source: str) -> ModelFacts:
    return ModelFacts(params_b=30.5, active_b=3.3, weights_gib=weights_gib, layers=48, kv_heads=4, head_dim=128,
                      context=262144, licence="Apache-2.0", tool_call_parser="qwen3_coder", source=source)


def _qwen25_7b(source: str) -> ModelFacts:
    return ModelFacts(params_b=7.6, active_b=7.6, weights_gib=5.6, layers=28, kv_heads=4, head_dim=128, context=32768,
                      licence="Apache-2.0", tool_call_parser="hermes", source=source)


CATALOG: dict[str, ModelFacts] = {
    # --- 2026 profiles -------------------------------------------------------------------
    "qwen/qwen3-coder-30b-a3b-instruct-fp8": _qwen3_coder_30b(
        29.0, "https://huggingface.co/Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8 (card: 30.5B total, 3.3B "
               "activated, 48 layers, 4 KV heads, 262,144 native; head_dim 128 in config.json)"),
    "cpatonn/qwen3-coder-30b-a3b-instruct-gptq-4bit": _qwen3_coder_30b(
        15.5, "https://huggingface.co/Qwen/Qwen3-Coder-30B-A3B-Instruct (architecture); 4-bit experts with "
               "bf16 embeddings/attention: ~15.5 GiB, an estimate (a 4.06 bpw build of it is 15.2 GB)"),
    "qwen/qwen3-4b-instruct-2507-fp8": ModelFacts(
        params_b=4.0, active_b=4.0, weights_gib=4.2, layers=36, kv_heads=8, head_dim=128, context=262144,
        licence="Apache-2.0", tool_call_parser="hermes",
        source="https://huggingface.co/Qwen/Qwen3-4B-Instruct-2507-FP8 (card: 4.0B, 3.6B non-embedding, 36 "
               "layers, 32 Q / 8 KV heads, 262,144 native; head_dim 128 in its config; weights an estimate)"),
    "openai/gpt-oss-20b": ModelFacts(
        params_b=20.9, active_b=3.6, weights_gib=12.8, layers=24, kv_heads=8, head_dim=64, context=131072,
        licence="Apache-2.0", tool_call_parser="openai",
        source="https://huggingface.co/openai/gpt-oss-20b (card: 21B total, 3.6B active, MXFP4 MoE weights; "
               "config.json: 24 layers alternating sliding 128 / full, 8 KV heads, head_dim 64, 131,072)"),
    # --- 2024 profiles (etc/profiles/*-2024.yaml) -----------------------------------------
    "qwen/qwen2.5-coder-7b-instruct-awq": _qwen25_7b("https://huggingface.co/Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"),
    "qwen/qwen2.5-7b-instruct-awq": _qwen25_7b("https://huggingface.co/Qwen/Qwen2.5-7B-Instruct-AWQ"),
    "qwen/qwen2.5-14b-instruct-awq": ModelFacts(
        params_b=14.7, active_b=14.7, weights_gib=10.0, layers=48, kv_heads=8, head_dim=128, context=32768,
        licence="Apache-2.0", tool_call_parser="hermes", source="https://huggingface.co/Qwen/Qwen2.5-14B-Instruct-AWQ"),
    "qwen/qwen2.5-coder-32b-instruct-awq": ModelFacts(
        params_b=32.8, active_b=32.8, weights_gib=19.5, layers=64, kv_heads=8, head_dim=128, context=32768,
        licence="Apache-2.0", tool_call_parser="hermes",
        source="https://huggingface.co/Qwen/Qwen2.5-Coder-32B-Instruct-AWQ"),
}


def facts(model: str) -> ModelFacts | None:
    """The catalog's entry for a hub id (any case), or None."""
    return CATALOG.get(model.lower())
