"""Model lifecycle by stop/start (#13): `localai up`'s real supervisor starts and stops model
servers whose "vLLM" is tests/fakebackend.py run as a program, as the CPU build is swapped.
The real tier does the same with real vLLM (tests/real/test_lifecycle_real.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp
import yaml

from gateway.plan.validate import load_config
from tests import harness
from tests.harness import descendants, free_port, listening_on, running_up, standin_python, wait_until

KEY = "sk-lifecycle-test"


@contextlib.asynccontextmanager
async def up(tmp_path, models: list[dict], **gateway):
    """`localai up` in this process, from a config file the CLI can read too (tmp_path/localai.yaml)."""
    (tmp_path / "localai.yaml").write_text(yaml.safe_dump({
        "gateway": {"port": free_port(), "health_interval": 0.05, "min_residency": 0, "webui": False, **gateway},
        "vllm": {"python": str(standin_python(tmp_path))}, "models": models}))
    cfg = load_config(tmp_path / "localai.yaml")
    async with running_up(cfg, api_keys=[KEY]) as app, \
            aiohttp.ClientSession(f"http://127.0.0.1:{cfg.gateway.port}",
                                  headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http, app


def model(name: str, share: float, load: str = "on_demand", **extra) -> dict:
    entry = {"name": name, "model": f"/m/{name}", "port": free_port(), "gpu_memory_utilization": share,
             "default": name == "a", **extra}
    if load == "on_demand":
        entry.update(load="on_demand", sleep_mode="off")
    return entry


async def states(http) -> dict[str, dict]:
    async with http.get("/v1/models") as r:
        return {m["id"]: m for m in (await r.json())["data"]}


async def until_states(http, **wanted: str) -> None:
    async def check():
        cards = await states(http)
        return all(cards[n]["state"] == s for n, s in wanted.items())
    await wait_until(check, timeout=20, what=f"states {wanted}",
                     ignoring=(aiohttp.ClientConnectionError,))  # `localai up` is not listening yet


async def chat(http, name: str, stream: bool = False) -> tuple[int, str]:
    async with http.post("/v1/chat/completions", json={"model": name, "stream": stream,
                                                       "messages": [{"role": "user", "content": "hi"}]}) as r:
        return r.status, await r.text()


async def listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_on_demand_servers_start_when_asked_for_and_the_lru_idle_one_is_stopped(tmp_path):
    models = [model("a", 0.4, load="always"), model("b", 0.3), model("c", 0.3), model("d", 0.3)]
    async with up(tmp_path, models) as (http, app):
        await until_states(http, a="ready", b="stopped", c="stopped", d="stopped")
        assert (await states(http))["b"]["state_reason"] == "stopped: starts on the first request"
        assert not await listening(models[1]["port"])
        for name in "bc":
            status, text = await chat(http, name)
            assert status == 200 and "tok0" in text
        assert await listening(models[1]["port"]) and await listening(models[2]["port"])
        assert (await chat(http, "d"))[0] == 200  # b, least recently used, is stopped to make room
        cards = await states(http)
        assert [cards[n]["state"] for n in "abcd"] == ["ready", "stopped", "ready", "ready"]
        assert not await listening(models[1]["port"])
        from prometheus_client import generate_latest

        from gateway.http.appkeys import METRICS
        metrics = generate_latest(app[METRICS].registry).decode()
        assert 'localai_model_swaps_total{kind="start",model="b"} 1.0' in metrics
        assert 'localai_model_swaps_total{kind="stop",model="b"} 1.0' in metrics
        assert 'localai_model_resident{model="b"} 0.0' in metrics


async def test_a_long_stream_is_never_cut_by_a_swap(tmp_path):
    # b streams 40 chunks while c and d are asked for; there is room for two of them.
    models = [model("a", 0.4, load="always"), model("b", 0.3, extra_args=["--fake-chunks", "40", "--fake-itl", "0.02"]),
              model("c", 0.3), model("d", 0.3)]
    async with up(tmp_path, models) as (http, _):
        await until_states(http, a="ready", b="stopped")
        async with http.post("/v1/chat/completions", json={"model": "b", "stream": True,
                                                           "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
            first = await r.content.readline()
            while not first.startswith(b"data: {"):  # heartbeats while b starts
                first = await r.content.readline()
            assert (await chat(http, "c"))[0] == 200
            assert (await chat(http, "d"))[0] == 200  # c goes, not b: b is busy
            rest = (await r.content.read()).decode()
        assert rest.count('"content"') == 39 and rest.rstrip().endswith("data: [DONE]")
        cards = await states(http)
        assert [cards[n]["state"] for n in "bcd"] == ["ready", "stopped", "ready"]


def server_pid(port: int) -> int:
    """The fake model server listening on this port (a child of this test's `localai up`)."""
    return listening_on(port, descendants(os.getpid()))


async def test_a_resident_server_that_crashes_is_restarted_and_its_requests_wait(tmp_path):
    models = [model("a", 0.5, load="always"), model("b", 0.5)]
    async with up(tmp_path, models) as (http, _):
        await until_states(http, a="ready", b="stopped")
        async with http.get("/ready") as r:  # stopped on_demand models count as serving
            assert r.status == 200 and (await r.json())["on_demand"] == ["b"]
        assert (await chat(http, "b"))[0] == 200
        os.kill(server_pid(models[1]["port"]), signal.SIGKILL)
        await until_states(http, b="failed")  # `localai up` restarts it after a second
        status, text = await chat(http, "b")  # waits for the restart instead of failing
        assert status == 200 and "tok0" in text


async def test_a_server_that_fails_to_start_answers_503_naming_why_and_is_retried(tmp_path):
    models = [model("a", 0.5, load="always"), model("b", 0.5, extra_args=["--fake-fail", "no weights here"])]
    async with up(tmp_path, models) as (http, _):
        await until_states(http, a="ready", b="stopped")
        for _ in range(2):  # each request tries again
            status, text = await chat(http, "b")
            assert status == 503 and "model_unavailable" in text
            assert "vLLM exited with code 1 (ERROR no weights here)" in text
        card = (await states(http))["b"]
        assert card["state"] == "failed" and "start failed: vLLM exited with code 1" in card["state_reason"]
        assert not await listening(models[1]["port"])  # not left restarting


async def localai(tmp_path, *args: str) -> tuple[int, str]:
    """The `localai` command against the gateway of tmp_path/localai.yaml (the key from the environment)."""
    run = await asyncio.to_thread(harness.localai, *args, config=tmp_path / "localai.yaml",
                                  env={**os.environ, "LOCALAI_API_KEY": KEY})
    return run.returncode, run.stdout + run.stderr


async def test_localai_ps_load_and_unload(tmp_path):
    async with up(tmp_path, [model("a", 0.5, load="always"), model("b", 0.5)]) as (http, _):
        await until_states(http, a="ready", b="stopped")
        rc, out = await localai(tmp_path, "ps")
        assert rc == 0 and out.splitlines()[0].split() == ["NAME", "STATE", "SINCE", "UNTIL", "VRAM"]
        assert out.splitlines()[1].split() == ["a", "ready", "-", "forever", "always", "loaded"]
        assert len(out.splitlines()) == 2
        rc, out = await localai(tmp_path, "load", "b", "--keep-alive", "1h")
        assert rc == 0 and "b is loaded" in out, out
        rc, out = await localai(tmp_path, "ps")
        row = next(line for line in out.splitlines() if line.startswith("b "))
        assert "ready" in row and " ago " in row + " " and "in 60 min" in row and "50% of its card" in row
        rc, out = await localai(tmp_path, "unload", "b")
        assert rc == 0 and "b is unloaded" in out, out
        assert (await states(http))["b"]["state"] == "stopped"
        rc, out = await localai(tmp_path, "unload", "a")
        assert rc == 1 and "a is not load: on_demand; it stays loaded" in out
