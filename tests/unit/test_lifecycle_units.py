"""Model lifecycle under systemd (#13), fast: the gateway (`localai gateway --units`) starts and
stops load: on_demand models' units over D-Bus. systemd is a stand-in (tests/fakesystemd.py) on a
real dbus-daemon, its units run the fake backend through `localai run-model`; the systemd tier
does the same against the real systemd and polkit (tests/systemd/test_dbus_swap.py)."""

from __future__ import annotations

import contextlib
import os
import time

import aiohttp
import yaml

from gateway.lifecycle import swap
from gateway.lifecycle.units import SystemdUnits, model_unit
from gateway.plan.placement import placements
from gateway.plan.validate import load_config
from tests.fakesystemd import Unit, fake_systemd, private_bus, run_model
from tests.harness import free_port, serving, standin_python, wait_until
from tests.unit.test_lifecycle_process import KEY, chat, model, states, until_states


@contextlib.asynccontextmanager
async def gateway(tmp_path, models: list[dict], running: tuple[str, ...] = (), silent: tuple[str, ...] = (),
                  written_after: bool = False):
    """The stand-in systemd with one unit per model, and the gateway run as its unit runs it.
    Found when it starts: the units of `running` started (as by a gateway before this one), those
    of `silent` active with nothing answering on their port; with `written_after`, the config
    file written (again) after they started."""
    config = tmp_path / "localai.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"port": free_port(), "health_interval": 0.05, "min_residency": 0, "webui": False},
        "vllm": {"python": str(standin_python(tmp_path))}, "models": models}))
    cfg = load_config(config)
    units = {model_unit(p.unit): Unit(run_model(p.unit, config), f"http://127.0.0.1:{p.port}/health")
             for p in placements(cfg)}
    async with private_bus(tmp_path) as address, fake_systemd(address, units) as systemd:
        earlier = SystemdUnits(address)
        for name in running:
            await earlier.start(model_unit(name))
        await earlier.close()
        for name in silent:
            systemd.units[model_unit(name)].active, systemd.units[model_unit(name)].started_at = "active", time.time()
        if written_after:
            later = max(u.started_at for u in units.values()) + 1
            os.utime(config, (later, later))
        systemd.calls.clear()
        async with serving(cfg, api_keys=[KEY], units=SystemdUnits(address)), \
                aiohttp.ClientSession(f"http://127.0.0.1:{cfg.gateway.port}",
                                      headers={"Authorization": f"Bearer {KEY}"}) as http:
            yield http, systemd


async def test_the_third_model_stops_the_lru_idle_unit_and_starts_its_own(tmp_path):
    models = [model(n, 0.45) for n in "abc"]
    async with gateway(tmp_path, models) as (http, systemd):
        await until_states(http, a="stopped", b="stopped", c="stopped")
        # None was running: the gateway stops each, so that none it does not know of holds the card.
        await wait_until(lambda: len(systemd.calls) == 3)
        assert sorted(systemd.calls) == [("stop", model_unit(n)) for n in "abc"]
        systemd.calls.clear()
        for name in "ab":
            status, text = await chat(http, name)
            assert status == 200 and "tok0" in text
        assert [systemd.units[model_unit(n)].active for n in "abc"] == ["active", "active", "inactive"]
        assert (await chat(http, "c"))[0] == 200
        assert systemd.calls == [("reset-failed", model_unit("a")), ("start", model_unit("a")),
                                 ("reset-failed", model_unit("b")), ("start", model_unit("b")),
                                 ("stop", model_unit("a")),  # the least recently used, idle
                                 ("reset-failed", model_unit("c")), ("start", model_unit("c"))]
        assert [systemd.units[model_unit(n)].active for n in "abc"] == ["inactive", "active", "active"]
        cards = await states(http)
        assert [cards[n]["state"] for n in "abc"] == ["stopped", "ready", "ready"]


async def test_units_left_running_are_kept_while_they_fit_and_the_rest_stopped(tmp_path):
    # A gateway restart (an upgrade, a config change) must not unload the team's models.
    models = [model(n, 0.45) | {"keep_alive": "10m"} for n in "abc"]
    async with gateway(tmp_path, models, running=("a", "b", "c")) as (http, systemd):
        pids = {n: systemd.units[model_unit(n)].proc.pid for n in "abc"}
        await wait_until(lambda: systemd.units[model_unit("c")].active == "inactive")
        await until_states(http, a="ready", b="ready", c="stopped")  # any two fit: the first two kept
        assert systemd.calls == [("stop", model_unit("c"))]
        assert [systemd.units[model_unit(n)].active for n in "ab"] == ["active", "active"]
        cards = await states(http)
        assert cards["a"]["resident_since"] and cards["a"]["expires_at"]  # keep_alive counts from the restart
        status, text = await chat(http, "a")
        assert status == 200 and "tok0" in text
        assert systemd.calls == [("stop", model_unit("c"))]  # served by the server it found: no start
        assert systemd.units[model_unit("a")].proc.pid == pids["a"]


async def test_a_unit_running_since_before_the_config_was_written_is_stopped(tmp_path):
    # It may run the old command line (another share of the card, other settings): not kept.
    async with gateway(tmp_path, [model("a", 0.45)], running=("a",), written_after=True) as (http, systemd):
        await wait_until(lambda: systemd.units[model_unit("a")].active == "inactive")
        assert systemd.calls == [("stop", model_unit("a"))]
        await until_states(http, a="stopped")


async def test_a_unit_found_active_that_does_not_answer_is_stopped_and_started_afresh(tmp_path, monkeypatch):
    monkeypatch.setattr(swap, "_RUNNING_CHECK_S", 0.5)
    async with gateway(tmp_path, [model("a", 0.45)], silent=("a",)) as (http, systemd):
        await wait_until(lambda: systemd.calls == [("stop", model_unit("a"))] and
                         systemd.units[model_unit("a")].active == "inactive")
        await until_states(http, a="stopped")
        assert (await chat(http, "a"))[0] == 200
        assert systemd.calls[1:] == [("reset-failed", model_unit("a")), ("start", model_unit("a"))]


async def test_a_start_polkit_refuses_answers_503_with_systemds_words_and_the_next_request_retries(tmp_path):
    async with gateway(tmp_path, [model("a", 0.45)]) as (http, systemd):
        await until_states(http, a="stopped")
        systemd.refuse.add(model_unit("a"))
        status, text = await chat(http, "a")
        assert status == 503
        assert "Interactive authentication required." in text and "localai-model@a.service" in text, text
        assert "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" in text
        card = (await states(http))["a"]
        assert card["state"] == "failed" and "Interactive authentication required" in card["state_reason"]
        systemd.refuse.clear()
        assert (await chat(http, "a"))[0] == 200


async def test_a_unit_that_fails_to_start_answers_503_naming_its_result_and_is_reset_for_the_next(tmp_path):
    async with gateway(tmp_path, [model("a", 0.45, extra_args=["--fake-fail", "CUDA out of memory"])]) \
            as (http, systemd):
        await until_states(http, a="stopped")
        status, text = await chat(http, "a")
        assert status == 503
        assert "start of localai-model@a.service failed: the unit is failed (result: exit-code)" in text, text
        assert systemd.units[model_unit("a")].active == "failed"
        systemd.calls.clear()
        assert (await chat(http, "a"))[0] == 503  # tried again: its failed state is reset first
        assert systemd.calls[:2] == [("reset-failed", model_unit("a")), ("start", model_unit("a"))]


async def test_sleep_mode_models_units_start_in_turn_each_asleep_before_the_next(tmp_path):
    # Each takes its share of the card at start: the next unit starts only once the one before sleeps.
    models = [model(n, 0.45) | {"sleep_mode": "level1"} for n in "ab"]
    async with gateway(tmp_path, models) as (http, systemd):
        await until_states(http, a="sleeping", b="sleeping")
        assert systemd.calls == [("reset-failed", model_unit("a")), ("start", model_unit("a")),
                                 ("reset-failed", model_unit("b")), ("start", model_unit("b"))]
        assert systemd.awake_at_start == {model_unit("a"): [], model_unit("b"): []}
        assert [systemd.units[model_unit(n)].active for n in "ab"] == ["active", "active"]  # asleep, still running
        systemd.calls.clear()
        assert (await chat(http, "a"))[0] == 200  # woken over HTTP: no unit job
        assert systemd.calls == []


async def test_an_on_demand_model_with_replicas_comes_and_goes_whole(tmp_path):
    # a's two replicas (0.45 of the card each) and b (0.45) do not fit together: b's request puts
    # out both of a's units, a's request starts both (at once) and both serve.
    units = [model_unit(u) for u in ("a", "a.1")]
    async with gateway(tmp_path, [model("a", 0.45, replicas=2), model("b", 0.45)]) as (http, systemd):
        await until_states(http, a="stopped", b="stopped")
        systemd.calls.clear()
        status, text = await chat(http, "a")
        assert status == 200 and "tok0" in text
        assert [systemd.units[u].active for u in units] == ["active", "active"]
        assert {c for c in systemd.calls if c[0] == "start"} == {("start", u) for u in units}

        async def replica_states() -> list[str]:
            async with http.get("/v1/models") as r:
                (card,) = [m for m in (await r.json())["data"] if m["id"] == "a"]
            return [r["state"] for r in card["replicas"]]

        async def both_ready() -> bool:
            return await replica_states() == ["ready", "ready"]

        await wait_until(both_ready, 10, "both replicas listed ready")
        assert (await chat(http, "b"))[0] == 200
        assert [systemd.units[u].active for u in units] == ["inactive", "inactive"]
        assert (await states(http))["a"]["state"] == "stopped"
