"""GPU readings from NVML (PyPI `nvidia-ml-py`), for `localai status` and /metrics.

Everything here is optional: without the package, the driver or a GPU,
`read_gpus()` returns None, `nvml_unavailable_reason()` says why in a plain
sentence, and `GpuCollector` yields no samples (so /metrics has no
`localai_gpu_*` series at all rather than zeros).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client.core import GaugeMetricFamily

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "nvml": None, "reason": None}


def _nvml():
    """The initialised pynvml module, or None (and the reason recorded)."""
    with _lock:
        if _state["tried"]:
            return _state["nvml"]
        _state["tried"] = True
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            _state["reason"] = "the nvidia-ml-py package is not installed"
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            text = str(exc) or type(exc).__name__
            if "NotFound" in type(exc).__name__ or "not found" in text.lower():
                _state["reason"] = "no NVIDIA driver on this host (libnvidia-ml.so.1 not found)"
            else:
                _state["reason"] = f"the NVIDIA driver did not answer ({text})"
            return None
        _state["nvml"] = pynvml
        return pynvml


def nvml_unavailable_reason() -> str | None:
    """Why read_gpus() returns None, or None when NVML works."""
    _nvml()
    return _state["reason"]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus() -> list[dict] | None:
    """One dict per card: index, name, uuid, memory_used_bytes, memory_total_bytes,
    utilization_ratio (0..1, None when the card does not report it), temperature_c.
    None when NVML is unavailable (no package, driver or GPU)."""
    nv = _nvml()
    if nv is None:
        return None
    gpus = []
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception as exc:  # driver went away
        _state["reason"] = f"the NVIDIA driver did not answer ({exc})"
        return None
    for i in range(count):
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            entry = {
                "index": i,
                "name": _text(nv.nvmlDeviceGetName(h)),
                "uuid": _text(nv.nvmlDeviceGetUUID(h)),
                "memory_used_bytes": int(mem.used),
                "memory_total_bytes": int(mem.total),
                "utilization_ratio": None,
                "temperature_c": None,
            }
        except Exception:  # a card that fell off the bus: skip it, keep the others
            continue
        try:
            entry["utilization_ratio"] = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
        except Exception:
            pass
        try:
            entry["temperature_c"] = int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        except Exception:
            pass
        gpus.append(entry)
    return gpus


def driver_version() -> str | None:
    nv = _nvml()
    if nv is None:
        return None
    try:
        return _text(nv.nvmlSystemGetDriverVersion())
    except Exception:
        return None


class GpuCollector:
    """prometheus_client custom collector: localai_gpu_* per card (label `gpu`).

    Register it in the gateway's registry: `registry.register(GpuCollector())`.
    On a host without a GPU it yields nothing.
    """

    def __init__(self, reader=read_gpus):
        self._read = reader

    def describe(self):
        # Names only, so registering never touches NVML (and never fails).
        return [
            GaugeMetricFamily("localai_gpu_memory_used_bytes", "GPU memory in use, per card", labels=["gpu"]),
            GaugeMetricFamily("localai_gpu_memory_total_bytes", "GPU memory in all, per card", labels=["gpu"]),
            GaugeMetricFamily("localai_gpu_utilization_ratio",
                              "Share of the last sample period the GPU was busy (0-1), per card", labels=["gpu"]),
            GaugeMetricFamily("localai_gpu_info", "GPU model and UUID, per card (always 1)",
                              labels=["gpu", "name", "uuid"]),
        ]

    def collect(self):
        gpus = self._read()
        if not gpus:
            return
        used, total, util, info = self.describe()
        for g in gpus:
            label = str(g["index"])
            used.add_metric([label], g["memory_used_bytes"])
            total.add_metric([label], g["memory_total_bytes"])
            if g.get("utilization_ratio") is not None:
                util.add_metric([label], g["utilization_ratio"])
            info.add_metric([label, g.get("name", ""), g.get("uuid", "")], 1)
        yield used
        yield total
        if util.samples:
            yield util
        yield info
