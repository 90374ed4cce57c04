"""A reload (SIGHUP) reaches every holder of state made from the config: each puts the new
config in force or answers that it needs a restart, and the reload's log line says what they
answered. The lifecycle is one such holder: a new keep_alive and queue_timeout are in force
at once. Whatever a reload reports as needing a restart is what the plan's restart
fingerprint (plan/restart.py) hashes, so the playbook restarts exactly then."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.app.reload import RELOADER
from gateway.config.schema import Config
from gateway.plan.document import full_plan
from gateway.plan.restart import restart_fingerprint
from tests.harness import make_config, wait_until
from tests.unit.test_lifecycle import asleep, cards, chat, on_demand


def edited(cfg: Config, gateway: dict | None = None, **models: dict) -> Config:
    """The config with these gateway settings and model fields changed (as a reloaded file would be)."""
    return cfg.model_copy(update={
        "gateway": cfg.gateway.model_copy(update=gateway or {}),
        "models": [m.model_copy(update=models.get(m.name, {})) for m in cfg.models]})


def reload(s, monkeypatch, new: Config) -> dict:
    """Reload the stack's gateway into `new`; the "reloaded" log record."""
    monkeypatch.setattr("gateway.app.reload.load_config", lambda _source: new)
    assert s.app[RELOADER].reload()
    return next(r for r in reversed(s.log_lines()) if r.get("msg", "").startswith("reloaded"))


async def test_a_new_keep_alive_is_in_force_after_a_reload(stack, monkeypatch):
    s = await stack({"b": on_demand("b", 0.4, keep_alive="10m")}, wait=False, min_residency=0)
    await asleep(s, "b")
    assert (await chat(s, "b"))[0] == 200
    expires = (await cards(s))["b"]["expires_at"]
    assert expires is not None and expires > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 500))
    record = reload(s, monkeypatch, edited(s.app[RELOADER].config, b={"keep_alive": 0.3}))
    assert record["needs_restart"] == []
    await asleep(s, "b")  # idle past its new keep_alive: put to sleep, not in 10 minutes
    assert s.fakes["b"].sleep_calls[-1] == "/sleep?level=1"


async def test_a_new_queue_timeout_is_in_force_after_a_reload(stack, monkeypatch):
    # a and b can't be resident together, and a may not be evicted yet: b waits for room.
    s = await stack({"a": on_demand("a", 0.6), "b": on_demand("b", 0.6)}, wait=False,
                    min_residency=60, queue_timeout=10)
    await asleep(s, "a", "b")
    assert (await chat(s, "a"))[0] == 200
    reload(s, monkeypatch, edited(s.app[RELOADER].config, {"queue_timeout": 0.3}))
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(5):
        status, body = await chat(s, "b")
    assert status == 503 and body["error"]["code"] == "queue_timeout"
    assert "waited 0.3 s" in body["error"]["message"]
    assert asyncio.get_running_loop().time() - started < 3


async def test_the_reload_log_line_says_what_needs_a_restart_and_nothing_else(stack, monkeypatch):
    s = await stack({"b": on_demand("b", 0.4)}, wait=False, min_residency=0)
    await asleep(s, "b")
    old = s.app[RELOADER].config
    record = reload(s, monkeypatch, edited(old, {"port": old.gateway.port + 1, "min_residency": 5},
                                           b={"gpu_memory_utilization": 0.5}))
    assert record["needs_restart"][:2] == ["model b's load: on_demand", "gateway.port"]
    assert "needs restart: model b's load: on_demand; gateway.port" in record["msg"]
    assert s.app[RELOADER].config.gateway.min_residency == 5
    record = reload(s, monkeypatch, edited(s.app[RELOADER].config, {"log_level": "debug"}))
    assert record["needs_restart"] == [] and "all of it in force" in record["msg"]


async def test_a_reload_watches_a_model_it_adds_and_forgets_one_it_drops(stack, monkeypatch):
    from gateway.app.factory import MONITOR, REGISTRY
    from tests.fakebackend import FakeBackend

    s = await stack({"m": FakeBackend("fake-m"), "n": FakeBackend("fake-n")})
    old = s.app[RELOADER].config
    only_m = old.model_copy(update={"models": [old.model("m")]})
    reload(s, monkeypatch, only_m)
    assert list(s.app[REGISTRY].backends) == ["m"] and set(s.app[MONITOR]._watched) == {"m"}
    record = reload(s, monkeypatch, old)
    assert record["added"] == ["n"] and set(s.app[MONITOR]._watched) == {"m", "n"}
    await wait_until(lambda: s.app[REGISTRY].backends["n"].state.value == "ready")


def _config(**gateway) -> Config:
    return make_config([{"name": "a", "model": "/m/a", "port": 9001, "gpu_memory_utilization": 0.4, "default": True},
                        {"name": "b", "model": "/m/b", "port": 9002, "gpu_memory_utilization": 0.4,
                         "load": "on_demand", "keep_alive": "10m"}], port=8080, **gateway)


@pytest.mark.parametrize(("gateway", "models", "restart"), [
    ({"port": 8081}, {}, True),
    ({"max_body_bytes": 4096}, {}, True),
    ({"read_timeout": 5.0}, {}, True),
    ({"webui": True}, {}, True),
    ({}, {"b": {"gpu_memory_utilization": 0.3}}, True),
    ({}, {"b": {"load": "always"}}, True),
    ({"queue_timeout": 2.0}, {}, False),
    ({"min_residency": 1.0, "wake_timeout": 5.0, "start_timeout": 9.0}, {}, False),
    ({"log_level": "debug", "health_interval": 9.0, "max_queue": 3}, {}, False),
    ({}, {"b": {"keep_alive": 3.0}}, False),
    ({}, {"a": {"aliases": ["x"]}}, False),
])
def test_the_restart_fingerprint_changes_exactly_when_a_reload_needs_a_restart(gateway, models, restart):
    from gateway.app.reload import _PROCESS
    from gateway.plan.restart import restart_changes

    old = _config()
    new = edited(old, gateway, **models)
    reported = _PROCESS.apply(old, new) + restart_changes(old, new, "lifecycle")
    assert bool(reported) == restart
    assert (restart_fingerprint(old) != restart_fingerprint(new)) == restart


def test_the_plan_carries_the_restart_fingerprint():
    plan = full_plan(_config())
    assert plan["gateway"]["restart_fingerprint"] == restart_fingerprint(_config())
    assert len(plan["gateway"]["restart_fingerprint"]) == 16
