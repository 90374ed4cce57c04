"""Real tier, replicas (#14): `localai up` with two real vLLM servers (CPU build) of one tiny model
on this host (the plan gives replica 1 the next port). Prefix-cache hit rates, from vLLM's own
counters, land in test-output/replicas-prefix-cache.json."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.request
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TINY_MODELS, TINY_VLLM, RealStack, running
from tests.harness import OUTPUT, descendants, free_port, listening_on, wait_until_sync

pytestmark = pytest.mark.real

RATES = OUTPUT / "replicas-prefix-cache.json"
CONVERSATIONS = 7  # odd: round robin then sends each conversation's next turn to the other replica
TURNS = 4


def _port_pair() -> int:
    """A free port whose successor is free too (replica 1 listens there)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


class ReplicaStack(RealStack):
    def __init__(self, workdir: Path):
        model = {"name": "coder", "default": True, "model": str(TINY_MODELS / "tiny-coder"), "replicas": 2,
                 "max_model_len": 2048, "max_num_seqs": 8, "gpu_memory_utilization": 0.4,
                 "enable_prefix_caching": True, **TINY_VLLM}
        super().__init__(workdir, [model], name="replicas-stack")
        data = yaml.safe_load(self.config.read_text())
        port = _port_pair()
        data["models"][0]["port"] = port
        data["gateway"]["webui"] = False
        self.data = data
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.model_ports = {"coder": port}
        self.ports = [port, port + 1]

    def start(self) -> None:
        super().start()
        self.until_replicas("ready", "ready")

    def get(self, path: str, base: str | None = None):
        request = urllib.request.Request((base or self.url) + path,
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.read().decode()

    def model(self) -> dict:
        return json.loads(self.get("/v1/models"))["data"][0]

    def replicas(self) -> list[dict]:
        return self.model()["replicas"]

    def until_replicas(self, *states: str, timeout: float = 600) -> None:
        wait_until_sync(lambda: [r["state"] for r in self.replicas()] == list(states), timeout,
                        f"replicas {states}", interval=0.5, detail=lambda: f": {self.replicas()}; see {self.log_path}")

    def balance(self, policy: str) -> None:
        """Switch gateway.balance by a reload (SIGHUP), as an operator would."""
        assert self.proc is not None
        reloads = self.log_text().count('"msg":"reloaded ')
        self.data["gateway"]["balance"] = policy
        self.config.write_text(yaml.safe_dump(self.data, sort_keys=False))
        self.proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: self.log_text().count('"msg":"reloaded ') > reloads, 30,
                        f"a reload logged in {self.log_path}", interval=0.2)

    def prefix_cache(self) -> tuple[float, float]:
        """vLLM's own prefix-cache counters (hits, queries: tokens), summed over the replicas."""
        hits = queries = 0.0
        for port in self.ports:
            for line in self.get("/metrics", f"http://127.0.0.1:{port}").splitlines():
                if line.startswith("vllm:prefix_cache_hits_total"):
                    hits += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_queries_total"):
                    queries += float(line.rsplit(" ", 1)[1])
        return hits, queries

    def server_pid(self, port: int) -> int:
        return listening_on(port, descendants(self.pid))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running(ReplicaStack(tmp_path_factory.mktemp("replicas"))) as s:
        yield s


def _document(seed: str) -> str:
    """A conversation's opening: a document of its own, several of vLLM's 128-token cache blocks long
    (about 900 tokens: four turns stay within the prompt limit, 0.75 of the 2,048-token window)."""
    words = [f"{seed[i % len(seed)]}{i}" for i in range(250)]
    return f"[{seed}] Read this and answer briefly. " + " ".join(words)


def _conversations(stack: ReplicaStack, seed: str) -> None:
    """CONVERSATIONS chats of TURNS turns each, interleaved (turn 1 of every chat, then turn 2 ...)."""
    histories = [[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": _document(f"{seed}{c}")}] for c in range(CONVERSATIONS)]
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=120) as http:
        for turn in range(TURNS):
            for messages in histories:
                r = http.post("/v1/chat/completions", json={"model": "coder", "messages": messages,
                                                           "max_tokens": 8, "temperature": 0})
                assert r.status_code == 200, r.text
                messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"] or ""},
                             {"role": "user", "content": f"And point {turn + 2}?"}]


def test_affinity_reuses_more_of_the_prefix_cache_than_round_robin(stack):
    stack.until_replicas("ready", "ready")
    rates = {}
    for policy in ("round_robin", "least_outstanding"):
        stack.balance(policy)
        hits0, queries0 = stack.prefix_cache()
        _conversations(stack, f"{policy}-{uuid.uuid4().hex[:6]}")  # fresh documents: nothing cached yet
        hits1, queries1 = stack.prefix_cache()
        rates[policy] = {"hits": hits1 - hits0, "queries": queries1 - queries0,
                         "hit_rate": round((hits1 - hits0) / (queries1 - queries0), 4)}
    RATES.write_text(json.dumps({"conversations": CONVERSATIONS, "turns": TURNS, "replicas": 2, **rates}, indent=1))
    affinity, rr = rates["least_outstanding"]["hit_rate"], rates["round_robin"]["hit_rate"]
    assert affinity > rr + 0.1, rates


def test_two_replicas_serve_more_requests_at_once_than_one_can(stack):
    """Each replica brings its own max_num_seqs (8) to the model's admission: 12 long requests run
    at once, split over both, none waiting in the gateway's queue."""
    stack.until_replicas("ready", "ready")
    assert stack.model()["max_concurrency"] == 16
    assert [r["max_concurrency"] for r in stack.replicas()] == [8, 8]
    results: list[httpx.Response] = []

    def ask(k: int) -> None:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"},
                          timeout=300) as http:
            results.append(http.post("/v1/chat/completions", json={
                "model": "coder", "max_tokens": 400, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"capacity {k}: count"}]}))

    peak: list[list[int]] = []

    def all_in_flight() -> bool:
        now = [r["in_flight"] for r in stack.replicas()]
        peak.append(now)
        return sum(now) == 12

    clients = [threading.Thread(target=ask, args=(k,)) for k in range(12)]
    for t in clients:
        t.start()
    try:
        wait_until_sync(all_in_flight, 120, "12 requests in flight at once", interval=0.1,
                        detail=lambda: f": {peak[-5:]}")
        assert min(peak[-1]) >= 4, peak[-1]  # both replicas busy: more than one replica's 8 slots
    finally:
        for t in clients:
            t.join(timeout=300)
    assert [r.status_code for r in results] == [200] * 12
    assert {r.json()["usage"]["completion_tokens"] for r in results} == {400}


def test_killing_a_replica_loses_no_non_streamed_request(stack):
    stack.until_replicas("ready", "ready")
    stack.balance("least_outstanding")
    results: list[int] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"},
                          timeout=120) as http:
            n = 0
            while not stop.is_set():
                try:
                    r = http.post("/v1/chat/completions", json={
                        "model": "coder", "max_tokens": 48, "ignore_eos": True,
                        "messages": [{"role": "user", "content": f"client {k} request {n}: count"}]})
                    results.append(r.status_code)
                except httpx.HTTPError:  # lost on the way: counted as lost
                    results.append(0)
                n += 1

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in clients:
        t.start()
    try:
        # Killed with requests on it.
        wait_until_sync(lambda: stack.replicas()[1]["in_flight"], 60, "requests on replica 1",
                        detail=lambda: f": {stack.replicas()}")
        os.killpg(stack.server_pid(stack.ports[1]), signal.SIGKILL)
        at_kill = len(results)
        wait_until_sync(lambda: len(results) >= at_kill + 20, 120, "20 answers since the kill", interval=0.2,
                        detail=lambda: f" ({len(results) - at_kill})")
        assert stack.replicas()[1]["state"] != "ready"  # out, and restarting under `localai up`
        model = stack.model()  # its slots left with it (unless it came back meanwhile)
        assert model["max_concurrency"] == (16 if model["replicas"][1]["state"] == "ready" else 8), model
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=180)
    assert results and set(results) == {200}, sorted(set(results))
