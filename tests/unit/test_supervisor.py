"""`localai up`'s supervision: a crashing model server is reported and restarted with
growing backoff, and stopping ends every child. A stand-in "vLLM" that dies at once
drives it (the real tier crashes real vLLM)."""

import os

from gateway.http.appkeys import REGISTRY
from tests.harness import alive, free_port, make_config, running_up, standin_python, wait_until


async def test_a_server_that_cannot_be_started_is_failed_and_retried(tmp_path):
    missing = tmp_path / "no-venv" / "python"  # the vLLM venv was removed under a running `localai up`
    cfg = make_config([{"name": "m", "model": "x", "port": free_port()}])
    cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"python": missing})})
    async with running_up(cfg, api_keys=[], stop_within=10) as app:
        backend = app[REGISTRY].backends["m"]
        await wait_until(lambda: backend.state.value == "failed")
        assert backend.reason.startswith(f"cannot start {missing}: No such file or directory; restarting in 1 s")


async def test_crash_is_reported_and_restarted_with_backoff(tmp_path):
    cfg = make_config([{"name": "m", "model": "x", "port": free_port()}])
    crashing = standin_python(tmp_path, "--fake-fail", "boom: no weights", "--fake-exit-code", "3")
    cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"python": crashing})})
    reasons = []

    def seen(fragment):
        b = app[REGISTRY].backends["m"]
        if b.reason and b.reason not in reasons:
            reasons.append(b.reason)
        return any(fragment in r for r in reasons)

    async with running_up(cfg, api_keys=[], stop_within=10) as app:  # stops promptly, mid-backoff
        await wait_until(lambda: seen("restarting in 1 s"))
        await wait_until(lambda: seen("restarting in 2 s"), timeout=15)
        backend = app[REGISTRY].backends["m"]
        assert backend.state.value in ("failed", "loading")
        crash = next(r for r in reasons if "restarting in 1 s" in r)
        assert "exited with code 3" in crash and "ERROR boom" in crash


async def test_stop_ends_every_child(tmp_path, monkeypatch):
    # A server that ignores SIGTERM for a while and has a child of its own, like vLLM's EngineCore.
    script = standin_python(tmp_path, "--fake-then", "hang", "--fake-record", str(tmp_path))
    cfg = make_config([{"name": "m", "model": "x", "port": free_port()}])
    cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"python": script})})
    monkeypatch.setattr("gateway.lifecycle.processes.STOP_GRACE_S", 1.0)  # SIGKILL after 1 s, not 20
    async with running_up(cfg, api_keys=[], stop_within=15):
        await wait_until(lambda: (tmp_path / "pids").exists() and (tmp_path / "pids").read_text())
        *pids, pgid, sid = (int(p) for p in (tmp_path / "pids").read_text().split())
        # Its own process group (stopping reaches its children), but our session: `nice localai
        # up` reaches it, which a session of its own would escape (the kernel's autogroup).
        assert pgid == pids[0] and sid == os.getsid(0)

    await wait_until(lambda: not any(alive(p) for p in pids), timeout=5, what="every child gone")
