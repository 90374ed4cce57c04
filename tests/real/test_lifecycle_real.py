"""Real tier, model lifecycle (#13): `localai up` with three real vLLM servers (CPU build) on
tiny models, load: on_demand, with room for two. The CPU build has no sleep mode, so a model
comes in by being started and goes out by being stopped. Swap timings land in
test-output/lifecycle-swap-timings.json."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx
import pytest
import yaml

from tests.conftest import TINY_MODELS, VLLM_PYTHON, RealStack
from tests.harness import OUTPUT, free_port, localai

pytestmark = pytest.mark.real

NAMES = ("coder", "general", "architect")
START_S = 900  # a cold vLLM start on a busy 2-core machine
TIMINGS = OUTPUT / "lifecycle-swap-timings.json"


class LifecycleStack(RealStack):
    """Three tiny models, each taking 0.4 of the host's one "card": any two fit, never three."""

    def __init__(self, workdir):
        super().__init__(workdir)
        architect = workdir / "tiny-architect"  # a third model: the coder's weights under another name
        architect.symlink_to(TINY_MODELS / "tiny-coder")
        self.model_ports = {name: free_port() for name in NAMES}
        paths = {"coder": TINY_MODELS / "tiny-coder", "general": TINY_MODELS / "tiny-general", "architect": architect}
        models = [{"name": name, "default": name == "coder", "model": str(paths[name]), "port": self.model_ports[name],
                   "max_model_len": 4096, "max_num_seqs": 4, "dtype": "float32", "extra_args": ["--enforce-eager"],
                   "gpu_memory_utilization": 0.4, "load": "on_demand"} for name in NAMES]
        self.config.write_text(yaml.safe_dump({
            "vllm": {"python": str(VLLM_PYTHON),
                     "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                             "OMP_NUM_THREADS": "1"}},
            "gateway": {"port": self.gateway_port, "api_key_file": str(workdir / "api-keys"), "health_interval": 0.5,
                        "min_residency": 5, "webui": False},
            "models": models,
        }, sort_keys=False))
        self.log_path = OUTPUT / "lifecycle-stack.log"

    def states(self) -> dict[str, str]:
        return {name: m["state"] for name, m in self.health().items()}

    def until(self, predicate, timeout: float, what: str, interval: float = 0.5) -> None:
        """Wait until predicate(each model's state) holds."""
        super().until(lambda health: predicate({name: m["state"] for name, m in health.items()}), timeout, what,
                      interval)

    def localai(self, *args: str) -> subprocess.CompletedProcess:
        return localai(*args, config=self.config, timeout=START_S,
                       env={"LOCALAI_API_KEY": self.api_key, "PATH": "/usr/bin:/bin"})

    def unload_all(self) -> None:
        for name in NAMES:
            run = self.localai("unload", name)
            assert run.returncode == 0, run.stdout + run.stderr
        self.until(lambda s: all(s[n] == "stopped" for n in NAMES), 60, "every model stopped")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = LifecycleStack(tmp_path_factory.mktemp("lifecycle-stack"))
    try:
        stack.launch()
        stack.until(lambda s: all(s[n] == "stopped" for n in NAMES), 60, "the gateway listing stopped models")
        yield stack
    finally:
        stack.stop()


def stream(stack: LifecycleStack, model: str, max_tokens: int, first_token: threading.Event | None = None) -> dict:
    """A streamed chat; what the client saw: heartbeats, time to first token, tokens and the finish."""
    seen: dict = {"heartbeats": 0, "tokens": 0, "finish": None, "errors": []}
    started = time.monotonic()
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Write a long story."}]}
    with httpx.stream("POST", stack.url + "/v1/chat/completions", json=body, timeout=START_S,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith(": waiting for"):
                seen["heartbeats"] += 1
            elif line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    seen["errors"].append(event["error"])
                    continue
                if event.get("usage"):
                    seen["tokens"] = event["usage"]["completion_tokens"]
                if not event["choices"]:
                    continue
                choice = event["choices"][0]
                if "ttft" not in seen and choice["delta"].get("content") is not None:
                    seen["ttft"] = time.monotonic() - started
                    if first_token is not None:
                        first_token.set()
                seen["finish"] = choice.get("finish_reason") or seen["finish"]
    return seen


def record(**timings: float) -> None:
    known = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    TIMINGS.write_text(json.dumps({**known, **{k: round(v, 2) for k, v in timings.items()}}, indent=2))


def test_the_third_model_evicts_the_idle_lru_one_and_never_cuts_a_stream(stack):
    stack.unload_all()
    cold = stream(stack, "coder", 8)
    assert cold["heartbeats"] >= 1 and cold["tokens"] == 8 and not cold["errors"]  # waited with heartbeats
    warm = stream(stack, "coder", 8)
    assert warm["heartbeats"] == 0 and warm["tokens"] == 8
    record(cold_start_ttft_s=cold["ttft"], warm_ttft_s=warm["ttft"])
    assert stream(stack, "general", 8)["tokens"] == 8
    assert stack.states() == {"coder": "ready", "general": "ready", "architect": "stopped"}
    # general streams a long answer while architect is asked for: coder, idle and least
    # recently used, is stopped; general, busy, is not, and its answer runs to the end.
    first = threading.Event()
    long: dict = {}
    streaming = threading.Thread(target=lambda: long.update(stream(stack, "general", 3000, first)))
    streaming.start()
    assert first.wait(120)
    third = stream(stack, "architect", 8)
    streaming.join(START_S)
    assert third["tokens"] == 8 and third["heartbeats"] >= 1
    assert long["tokens"] == 3000 and long["finish"] == "length" and not long["errors"]
    assert stack.states() == {"coder": "stopped", "general": "ready", "architect": "ready"}
    log = stack.log_path.read_text()
    assert "swap: stop coder: least recently used idle model" in log and "to make room for architect" in log
    record(swap_ttft_s=third["ttft"])


def test_localai_ps_load_unload_and_keep_alive(stack):
    stack.unload_all()
    ps = stack.localai("ps")
    assert ps.returncode == 0 and ps.stdout.splitlines() == ["NAME  STATE  SINCE  UNTIL  VRAM"]
    started = time.monotonic()
    load = stack.localai("load", "coder", "--keep-alive", "10s")
    record(localai_load_s=time.monotonic() - started)
    assert load.returncode == 0 and "coder is loaded" in load.stdout, load.stdout + load.stderr
    row = stack.localai("ps").stdout.splitlines()[1].split()
    assert row[:2] == ["coder", "ready"] and "40%" in row
    stack.until(lambda s: s["coder"] == "stopped", 60, "keep_alive 10s unloading coder")
    assert stack.localai("load", "general").returncode == 0
    assert stack.states()["general"] == "ready"
    # Loaded a moment ago: the unload waits out min_residency (5 s here) and says so, then happens.
    unload = stack.localai("unload", "general")
    assert unload.returncode == 0 and "general unloads once" in unload.stdout, unload.stdout + unload.stderr
    stack.until(lambda s: s["general"] == "stopped", 30, "general unloaded once its min_residency passed")
