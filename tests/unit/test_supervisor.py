"""`localai up`'s supervision: a crashing model server is reported and restarted with
growing backoff, and stopping ends every child. A stand-in "vLLM" that dies at once
drives it (the real tier crashes real vLLM)."""

import asyncio
import os
import stat
import sys

from gateway.app.factory import create_app
from gateway.app.up import run_up
from gateway.http.appkeys import REGISTRY
from tests.conftest import free_port, make_config, wait_until


def crashing_python(tmp_path):
    script = tmp_path / "python"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('ERROR boom: no weights', flush=True)\nsys.exit(3)\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_a_server_that_cannot_be_started_is_failed_and_retried(tmp_path):
    missing = tmp_path / "no-venv" / "python"  # the vLLM venv was removed under a running `localai up`
    cfg = make_config([{"name": "m", "model": "x", "port": free_port()}])
    cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"python": missing})})
    app = create_app(cfg, api_keys=[])
    stop = asyncio.Event()
    up = asyncio.create_task(run_up(cfg, app, stop))
    backend = app[REGISTRY].backends["m"]
    await wait_until(lambda: backend.state.value == "failed")
    assert backend.reason.startswith(f"cannot start {missing}: No such file or directory; restarting in 1 s")
    stop.set()
    await asyncio.wait_for(up, 10)


async def test_crash_is_reported_and_restarted_with_backoff(tmp_path):
    cfg = make_config([{"name": "m", "model": "x", "port": free_port()}])
    cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"python": crashing_python(tmp_path)})})
    app = create_app(cfg, api_keys=[])
    stop = asyncio.Event()
    up = asyncio.create_task(run_up(cfg, app, stop))
    reasons = []

    def seen(fragment):
        b = app[REGISTRY].backends["m"]
        if b.reason and b.reason not in reasons:
            reasons.append(b.reason)
        return any(fragment in r for r in reasons)

    await wait_until(lambda: seen("restarting in 1 s"))
    await wait_until(lambda: seen("restarting in 2 s"), timeout=15)
    backend = app[REGISTRY].backends["m"]
    assert backend.state.value in ("failed", "loading")
    crash = next(r for r in reasons if "restarting in 1 s" in r)
    assert "exited with code 3" in crash and "ERROR boom" in crash
    stop.set()
    await asyncio.wait_for(up, 10)  # stops promptly, mid-backoff


async def test_stop_ends_every_child(tmp_path, monkeypatch):
    script = tmp_path / "python"
    # A server that ignores SIGTERM for a while and has a child of its own, like vLLM's EngineCore.
    script.write_text(f"#!{sys.executable}\nimport os, signal, subprocess, sys, time\n"
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      f"child = subprocess.Popen([{sys.executable!r}, '-c', 'import time; time.sleep(600)'])\n"
                      f"open({str(tmp_path / 'pids')!r}, 'w').write("
                      "f'{os.getpid()} {child.pid} {os.getpgid(0)} {os.getsid(0)}')\n"
                      "time.sleep(600)\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    cfg = make_config([{"name": "m", "model": "x", "port": free_port()}])
    cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"python": script})})
    monkeypatch.setattr("gateway.lifecycle.processes.STOP_GRACE_S", 1.0)  # SIGKILL after 1 s, not 20
    app = create_app(cfg, api_keys=[])
    stop = asyncio.Event()
    up = asyncio.create_task(run_up(cfg, app, stop))
    await wait_until(lambda: (tmp_path / "pids").exists() and (tmp_path / "pids").read_text())
    *pids, pgid, sid = (int(p) for p in (tmp_path / "pids").read_text().split())
    # Its own process group (stopping reaches its children), but our session: `nice localai
    # up` reaches it, which a session of its own would escape (the kernel's autogroup).
    assert pgid == pids[0] and sid == os.getsid(0)
    stop.set()
    await asyncio.wait_for(up, 15)

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    await wait_until(lambda: all(gone(p) for p in pids), timeout=5)
