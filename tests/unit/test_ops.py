"""Fast tier: the GPU metrics and the `localai status` / `localai logs` helpers, without a GPU or systemd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


def test_gpu_collector_with_and_without_cards():
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.base.gpu import GpuCollector

    cards = [{"index": 0, "name": "NVIDIA L4", "uuid": "GPU-1", "memory_used_bytes": 5 * 2**30,
              "memory_total_bytes": 24 * 2**30, "utilization_ratio": 0.25, "temperature_c": 50}]
    reg = CollectorRegistry()
    reg.register(GpuCollector(lambda: cards))
    text = generate_latest(reg).decode()
    assert 'localai_gpu_memory_used_bytes{gpu="0"} 5.36870912e+09' in text
    assert 'localai_gpu_memory_total_bytes{gpu="0"}' in text
    assert 'localai_gpu_utilization_ratio{gpu="0"} 0.25' in text
    empty = CollectorRegistry()
    empty.register(GpuCollector(lambda: None))
    assert "localai_gpu" not in generate_latest(empty).decode()


def test_gpu_reading_absent_cleanly_without_a_driver():
    from gateway.base import gpu

    if Path("/dev/nvidiactl").exists():
        pytest.skip("this host has an NVIDIA driver")
    assert gpu.read_gpus() is None
    assert gpu.nvml_unavailable_reason()


def test_log_records_unpack_the_gateway_json():
    from gateway.cli.ops import format_record, record

    entry = {"__REALTIME_TIMESTAMP": "1795398208000000", "_SYSTEMD_UNIT": "localai-gateway.service",
             "PRIORITY": "6", "MESSAGE": json.dumps({"level": "WARNING", "logger": "localai.gateway",
                                                      "msg": "queue full", "model": "coder", "ts": "x"})}
    rec = record(entry)
    assert rec["level"] == "WARNING" and rec["msg"] == "queue full" and rec["model"] == "coder"
    line = format_record(rec)
    assert "gateway" in line and "localai.gateway: queue full" in line and "model=coder" in line
    failed = {"level": "ERROR", "msg": "reload failed: invalid config\n/etc/localai/localai.yaml:3: typo: unknown key"}
    reload = record({**entry, "MESSAGE": json.dumps(failed)})
    assert format_record(reload).count("\n") == 0 and "typo: unknown key" in format_record(reload)
    plain = record({"UNIT": "localai-model@coder.service", "MESSAGE": [104, 105], "PRIORITY": "3"})
    assert plain["msg"] == "hi" and plain["level"] == "ERROR" and plain["unit"].endswith("coder.service")


def test_logs_resolve_aliases_to_units(tmp_path):
    from gateway.cli.ops import units_for

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"models": [
        {"name": "coder", "aliases": ["dev"], "default": True, "model": "/m", "port": 18001},
        {"name": "far", "url": "http://other:8000"}]}))
    assert units_for(None, cfg) == ["localai-*"]
    assert units_for("gateway", cfg) == ["localai-gateway.service"]
    assert units_for("dev", cfg) == ["localai-model@coder.service"]
    with pytest.raises(SystemExit):
        units_for("nope", cfg)


def test_readiness_words():
    from gateway.cli.ops import model_readiness

    assert model_readiness({"ActiveState": "active", "SubState": "running"}, 200, "u")[0] == "ready"
    assert model_readiness({"ActiveState": "activating", "SubState": "start-post"}, None, "u")[0] == "loading"
    assert model_readiness({"ActiveState": "activating", "SubState": "auto-restart", "Result": "signal"},
                           None, "u")[0] == "restarting"
    state, why = model_readiness({"ActiveState": "failed", "Result": "start-limit-hit"}, None, "no-such-unit")
    assert state == "failed" and "start limit" in why
    # A load: on_demand model's unit rests inactive (the gateway starts it): stopped, and why, not "not enabled".
    state, why = model_readiness({"ActiveState": "inactive", "UnitFileState": "disabled"}, None, "u", on_demand=True)
    assert (state, why) == ("stopped", "load: on_demand: the gateway starts it when a request asks for it")
    assert model_readiness({"ActiveState": "inactive", "UnitFileState": "disabled"}, None, "u")[1] == "not enabled"


def test_status_counts_a_stopped_on_demand_model_as_fine_and_a_stopped_always_one_not():
    from gateway.cli.ops import status_ok

    def st(on_demand: bool) -> dict:
        return {"systemd": True, "gateway": {"health": 200},
                "units": [{"unit": "localai-model@a.service", "active": "inactive", "on_demand": on_demand}],
                "models": [{"name": "a", "readiness": "stopped", "on_demand": on_demand}]}

    assert status_ok(st(on_demand=True)) and not status_ok(st(on_demand=False))
