"""load: on_demand models under systemd (#13): the gateway starts and stops their units over D-Bus.

The container deployed by conftest.py is deployed again with three tiny on_demand models
that take 0.45 of the host's one "card" each (any two fit, never three); a request for the
third evicts the idle, least recently used one, and `systemctl` says so; a gateway restart
keeps the two loaded (their servers keep their PIDs). A polkit rule lets
the service user manage exactly the model units: asked for any other unit, systemd refuses.
The tests run in any order: the fixture notes what the deploy left, and each test first
brings the models to the state it starts from. At the end the tier's own config is deployed
again, for whichever module runs next.
"""

from __future__ import annotations

import json
import time

import container as ct
import pytest
import stage
import yaml
from test_deploy import GATEWAY, all_serving, gateway_log, http, model_states

pytestmark = pytest.mark.systemd

NAMES = ("coder", "general", "reviewer")
PORTS = {**stage.MODEL_PORTS, "reviewer": max(stage.MODEL_PORTS.values()) + 1}
CONFIG_IN = f"{stage.SRC_IN}/tests-systemd-swap.yaml"
START_S = 600  # a cold vLLM start in the container on a busy 2-core machine


def swap_config() -> dict:
    """The tier's config, every model on_demand at 0.45, and a third: the coder's weights under another name."""
    cfg = stage.test_config()
    cfg["gateway"].update({"min_residency": 0, "health_interval": 0.5})
    coder = next(m for m in cfg["models"] if m["name"] == "coder")
    reviewer = {**coder, "name": "reviewer", "aliases": [], "default": False, "port": PORTS["reviewer"],
                 "model": "/var/lib/localai/models/tiny-coder"}
    reviewer.pop("presets", None)
    cfg["models"].append(reviewer)
    for m in cfg["models"]:
        m.update({"load": "on_demand", "gpu_memory_utilization": 0.45})
    return cfg


def ask(box, model: str):
    """A chat that may wait for its model's unit to start."""
    return http("POST", f"{GATEWAY}/v1/chat/completions", box.api_key(),
                {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
                timeout=START_S)


def active(box, name: str) -> str:
    return box.sh(f"systemctl is-active localai-model@{name}.service", check=False).stdout.strip()


states = model_states


def all_stopped(box) -> bool:
    return [active(box, n) for n in NAMES] == ["inactive"] * 3 and states(box) == dict.fromkeys(NAMES, "stopped")


def deployed_state(box) -> dict:
    """What the deploy left once the gateway settled (or 120 s went by): the model units' states,
    the gateway's view and `localai status`."""
    try:
        box.wait(lambda: all_stopped(box), 120, "every model unit stopped, and listed stopped")
    except ct.ContainerError:
        pass  # the test that looks at it says what it found
    status = box.sh("/opt/localai/venv-gateway/bin/localai status --config /etc/localai/localai.yaml", check=False)
    return {"active": [active(box, n) for n in NAMES], "states": states(box), "status": status}


def start_fresh(box) -> None:
    """Back to what the deploy leaves: every model unit stopped and a gateway that found them so."""
    box.sh("systemctl stop 'localai-model@*.service' && systemctl restart localai-gateway")
    box.wait(lambda: all_stopped(box), 60, "every model unit stopped, and listed stopped")


def load(box, *names: str) -> None:
    """Exactly these models loaded (in this order, the first the least recently used), the others stopped."""
    if states(box) != {n: "ready" if n in names else "stopped" for n in NAMES}:
        start_fresh(box)
        for name in names:
            status, body = ask(box, name)
            assert status == 200, body
    box.wait(lambda: states(box) == {n: "ready" if n in names else "stopped" for n in NAMES}, 60,
             f"only {', '.join(names)} loaded")


@pytest.fixture(scope="module")
def swapbox(box):
    box.c.path(CONFIG_IN).write_text(yaml.safe_dump(swap_config(), sort_keys=False))
    try:
        started = time.monotonic()
        res, counts = box.install("-e", f"localai_config_file={CONFIG_IN}", log_name="install-swap")
        assert res.returncode == 0 and counts.get("failed") == 0, res.stdout[-3000:]
        print(f"deploying the on_demand config took {time.monotonic() - started:.0f} s")
        box.deployed = deployed_state(box)
        yield box
    finally:
        started = time.monotonic()
        res, counts = box.install(log_name="install-swap-restore")
        assert res.returncode == 0 and counts.get("failed") == 0, res.stdout[-3000:]
        all_serving(box)
        print(f"deploying the tier's config again took {time.monotonic() - started:.0f} s")


def test_on_demand_units_are_installed_not_enabled_and_stopped(swapbox):
    box = swapbox
    for name in NAMES:
        assert box.sh(f"systemctl is-enabled localai-model@{name}.service", check=False).stdout.strip() \
            == "disabled"
    # coder and general ran as load: always before: the restarted gateway stopped them.
    assert box.deployed["active"] == ["inactive"] * 3, box.deployed
    assert box.deployed["states"] == dict.fromkeys(NAMES, "stopped"), box.deployed
    assert box.sh("systemctl is-active localai.target").stdout.strip() == "active"
    # `localai status`: stopped on demand is their rest, not a fault (exit 0).
    res = box.deployed["status"]
    assert res.returncode == 0, res.stdout
    assert res.stdout.count("why: load: on_demand: the gateway starts it when a request asks for it") == 3, res.stdout


def test_the_third_model_evicts_the_idle_lru_unit(swapbox):
    box = swapbox
    start_fresh(box)
    for name in ("coder", "general"):
        started = time.monotonic()
        status, body = ask(box, name)
        assert status == 200, body
        print(f"{name}: started through its unit and answered in {time.monotonic() - started:.1f} s")
        assert active(box, name) == "active"
    assert active(box, "reviewer") == "inactive"
    started = time.monotonic()
    status, body = ask(box, "reviewer")
    assert status == 200, body
    print(f"reviewer: coder stopped, reviewer started and answered in {time.monotonic() - started:.1f} s")
    assert [active(box, n) for n in NAMES] == ["inactive", "active", "active"]
    assert states(box) == {"coder": "stopped", "general": "ready", "reviewer": "ready"}
    # systemd's view agrees: coder stopped cleanly (not failed), by a request, not by a crash.
    assert box.prop("localai-model@coder.service", "Result") == "success"
    swaps = [r for r in gateway_log(box) if r["msg"].startswith("swap: stop coder")]
    assert swaps and "to make room for reviewer" in swaps[-1]["msg"], swaps


def test_a_gateway_restart_keeps_the_loaded_models(swapbox):
    box = swapbox
    loaded = ("general", "reviewer")
    load(box, *loaded)
    pids = {n: box.prop(f"localai-model@{n}.service", "MainPID") for n in loaded}
    gateway_pid = box.prop("localai-gateway.service", "MainPID")
    box.sh("systemctl restart localai-gateway")
    box.wait(lambda: states(box) == {"coder": "stopped", "general": "ready", "reviewer": "ready"}, 60,
             "the restarted gateway to list the loaded models ready")
    started = time.monotonic()
    status, body = ask(box, "reviewer")
    assert status == 200, body
    print(f"reviewer answered {time.monotonic() - started:.2f} s after the gateway restart's check")
    assert {n: box.prop(f"localai-model@{n}.service", "MainPID") for n in loaded} == pids  # not restarted
    new_pid = box.prop("localai-gateway.service", "MainPID")
    assert new_pid != gateway_pid
    kept = {r["model"] for r in gateway_log(box, f"_PID={new_pid}") if r["msg"].startswith("swap: kept ")}
    assert kept == set(loaded), kept


# Run as the gateway's user, with the gateway's own D-Bus client: one verb on one unit, the answer as JSON.
AS_SERVICE_USER = """
import asyncio, json, sys
from gateway.lifecycle.units import SystemdUnits, UnitError

async def main(verb, unit):
    units = SystemdUnits()
    try:
        await getattr(units, verb)(unit)
        print(json.dumps({"ok": True}))
    except UnitError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
    await units.close()

asyncio.run(main(*sys.argv[1:]))
"""


def as_service_user(box, verb: str, unit: str) -> dict:
    res = box.c.run(["runuser", "-u", "localai", "--", "/opt/localai/venv-gateway/bin/python", "-c",
                     AS_SERVICE_USER, verb, unit], timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_service_user_may_manage_the_model_units_and_nothing_else(swapbox):
    box = swapbox
    assert box.sh("test -f /etc/polkit-1/rules.d/50-localai.rules && echo yes").stdout.strip() == "yes"
    gateway_pid = box.prop("localai-gateway.service", "MainPID")
    for verb, unit in (("stop", "localai-gateway.service"), ("start", "localai.target")):
        answer = as_service_user(box, verb, unit)
        assert not answer["ok"], f"{verb} {unit} was allowed"
        assert "Interactive authentication required" in answer["error"] or "Access denied" in answer["error"], answer
    assert box.prop("localai-gateway.service", "MainPID") == gateway_pid
    # A model unit: allowed (general runs: starting it again is a no-op job that ends "done").
    if active(box, "general") != "active":
        assert ask(box, "general")[0] == 200
    assert active(box, "general") == "active"
    assert as_service_user(box, "start", "localai-model@general.service") == {"ok": True}


def test_the_model_servers_user_is_outside_the_polkit_rule(swapbox):
    """#18: the units the gateway starts run as localai-model, which may start and stop none of them."""
    box = swapbox
    assert ask(box, "general")[0] == 200  # started by the gateway over D-Bus
    assert box.prop("localai-model@general.service", "User") == "localai-model"
    pid = box.prop("localai-model@general.service", "MainPID")
    for verb in ("stop", "start"):
        res = box.c.run(["runuser", "-u", "localai-model", "--", "/opt/localai/venv-gateway/bin/python", "-c",
                         AS_SERVICE_USER, verb, "localai-model@general.service"], timeout=120)
        answer = json.loads(res.stdout.strip().splitlines()[-1])
        assert not answer["ok"], f"the model servers' user could {verb} a model unit"
        assert "Interactive authentication required" in answer["error"] or "Access denied" in answer["error"], answer
    assert box.prop("localai-model@general.service", "MainPID") == pid
