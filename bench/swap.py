"""The swap phase (#13): how long a request for a model that is not resident waits for its
first token, per mechanism, beside the same model's time to first token while resident.

- stop/start, real vLLM (CPU build, which has no sleep mode): `localai up` with two tiny
  models, load: on_demand, each taking 0.6 of the host's one "card", so only one is ever
  resident. Rows: the first request (cold start: nothing to evict), then requests that
  alternate between the two (each stops the other, then starts its own), and requests to
  the model while it is resident.
- sleep level 1, STAND-IN: the same through `localai up`, but the "vLLM" is the fake backend
  (tests/fakebackend.py), which implements /sleep and /wake_up and does nothing in them.
  It measures the gateway's own wake path (sleep the other, wake, warm-up request, first
  token), not vLLM's wake: sleep mode needs CUDA, which this machine lacks.

Every request is a stream: time to first token is from sending to the first event with
text; the gateway's heartbeats (`: waiting for coder to load`) while it waits are counted.
The gateway's own swap log lines (`swap: start coder in 21.3 s`) give what the swap itself took.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from statistics import median

import aiohttp
import yaml

from .configs import API_KEY, HOST, PORT_GATEWAY_SWAP, PORT_SWAP_MODELS, TINY_MODELS, VLLM_PYTHON
from .procs import Proc, log

NAMES = ("coder", "general")
# A stream's first event with text, however slow the start (a cold vLLM start on 2 busy cores).
FIRST_TOKEN_TIMEOUT_S = 900


def swap_config(out: Path, mechanism: str) -> Path:
    """`localai up`'s config: two on_demand models, room for one; real vLLM or the stand-in."""
    keys = out / "api-keys"
    if not keys.exists():
        keys.write_text(API_KEY + "\n")
        keys.chmod(0o600)
    real = mechanism == "stop/start"
    vllm: dict = {"python": str(VLLM_PYTHON)}
    if real:  # as the real tier's lifecycle test runs it (tests/real/test_lifecycle_real.py)
        vllm["env"] = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
        per_model = {"max_num_seqs": 4, "dtype": "float32", "extra_args": ["--enforce-eager"], "sleep_mode": "off"}
    else:
        from tests.harness import standin_python  # the tests' stand-in vLLM (the fake backend as a program)

        vllm["python"] = str(standin_python(out))
        per_model = {"sleep_mode": "level1"}
    models = [{"name": name, "default": i == 0,
               "model": str(TINY_MODELS / f"tiny-{name}") if real else f"/m/{name}",
               "port": PORT_SWAP_MODELS + i, "load": "on_demand", "gpu_memory_utilization": 0.6,
               "max_model_len": 2048, **per_model} for i, name in enumerate(NAMES)]
    cfg = out / f"swap-{'vllm' if real else 'standin'}.yaml"
    cfg.write_text(f"# The swap phase ({mechanism}): two load: on_demand models, each 0.6 of the card, so one "
                   "is resident at a time.\n" + yaml.safe_dump({
                       "vllm": vllm,
                       "gateway": {"host": HOST, "port": PORT_GATEWAY_SWAP, "api_key_file": str(keys), "webui": False,
                                   "usage_db": None,
                                   "health_interval": 0.5, "min_residency": 0, "queue_timeout": 900},
                       "models": models}, sort_keys=False))
    return cfg


async def first_token(session: aiohttp.ClientSession, model: str) -> dict:
    """One streamed request: seconds to the first event with text, and heartbeats before it."""
    body = {"model": model, "stream": True, "max_tokens": 8, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a function that adds two numbers."}]}
    sent = time.monotonic()
    ttft = None
    beats = 0
    async with session.post(f"http://{HOST}:{PORT_GATEWAY_SWAP}/v1/chat/completions", json=body,
                            timeout=aiohttp.ClientTimeout(total=FIRST_TOKEN_TIMEOUT_S)) as r:
        if r.status != 200:
            raise RuntimeError(f"{model}: HTTP {r.status}: {(await r.text())[:300]}")
        async for line in r.content:
            if line.startswith(b":"):
                beats += 1
            elif line.startswith(b"data:") and ttft is None:
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(f"{model}: {event['error']}")
                delta = (event.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content"):
                    ttft = time.monotonic() - sent
    if ttft is None:
        raise RuntimeError(f"{model}: the stream ended without text")
    return {"model": model, "ttft_s": round(ttft, 4), "heartbeats": beats}


async def _states(session: aiohttp.ClientSession) -> dict[str, str]:
    async with session.get(f"http://{HOST}:{PORT_GATEWAY_SWAP}/v1/models") as r:
        return {m["id"]: m["state"] for m in (await r.json())["data"]}


async def _until_states(session: aiohttp.ClientSession, proc: Proc, want: str, within: float) -> None:
    """Poll until every model is in state `want` (the gateway's own report; nothing to await)."""
    deadline = time.monotonic() + within
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"localai up exited with {proc.p.returncode}; see {proc.log_file.name}")
        try:
            seen = await _states(session)
            if all(seen.get(n) == want for n in NAMES):
                return
        except aiohttp.ClientError:
            pass  # not listening yet
        await asyncio.sleep(0.2)
    raise RuntimeError(f"models not all {want} after {within:g} s: {seen}")


def _swap_lines(log_path: Path) -> list[dict]:
    """The gateway's swap log lines (one per model brought in or put out), as recorded."""
    lines = []
    for raw in log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and str(rec.get("msg", "")).startswith("swap: "):
            lines.append({k: rec.get(k) for k in ("msg", "model", "kind", "duration_s", "evicted")})
    return lines


def _summary(samples: list[dict]) -> dict | None:
    if not samples:
        return None
    xs = [s["ttft_s"] for s in samples]
    return {"n": len(xs), "p50": round(median(xs), 4), "min": min(xs), "max": max(xs),
            "heartbeats_p50": median(s["heartbeats"] for s in samples)}


async def measure(mechanism: str, out: Path, plan: dict, up_argv: list[str], env: dict | None) -> dict:
    """One mechanism: start `localai up`, then cold start, resident, and swaps with eviction."""
    cfg = swap_config(out, mechanism)
    name = "swap-vllm" if mechanism == "stop/start" else "swap-standin"
    proc = Proc(name, [*up_argv, "--config", str(cfg)], out / f"{name}.log", None, env, cwd=out)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            # Stand-in: each model is started, then put to sleep, in turn (sleep mode's start-up).
            await _until_states(session, proc, "stopped" if mechanism == "stop/start" else "sleeping", 120)
            log(f"swap ({mechanism}): first request, nothing resident")
            cold = [await first_token(session, NAMES[0])]
            log(f"  {cold[0]['ttft_s']} s to first token")
            resident = [await first_token(session, NAMES[0]) for _ in range(plan["swap_resident"])]
            log(f"  resident: {[s['ttft_s'] for s in resident]} s")
            swaps = []
            for i in range(plan["swap_rounds"]):
                model = NAMES[(i + 1) % 2]  # the other one: evicts the resident model first
                swaps.append(await first_token(session, model))
                log(f"  {model} with eviction: {swaps[-1]['ttft_s']} s to first token")
    finally:
        proc.stop()
    return {"mechanism": mechanism, "stand_in": mechanism != "stop/start", "config": cfg.read_text(),
            "cold_start": _summary(cold), "resident": _summary(resident), "with_eviction": _summary(swaps),
            "samples": {"cold_start": cold, "resident": resident, "with_eviction": swaps},
            "gateway_swap_log": _swap_lines(out / f"{name}.log")}


async def phase_swap(out: Path, plan: dict, up_argv: list[str], env: dict | None, real: bool) -> dict:
    rows = []
    if real:
        missing = [p for p in (VLLM_PYTHON, *(TINY_MODELS / f"tiny-{n}" / "config.json" for n in NAMES))
                   if not p.exists()]
        if missing:
            rows.append({"mechanism": "stop/start", "skipped": f"needs {', '.join(map(str, missing))} "
                                                               "(run `make vllm models`)"})
        else:
            rows.append(await measure("stop/start", out, plan, up_argv, env))
    rows.append(await measure("sleep level 1", out, plan, up_argv, env))
    return {"rows": rows,
            "note": "seconds from sending a streamed request to its first token. 'in, room free': nothing to "
                    "evict (for stop/start, a cold start of vLLM). The STAND-IN row runs the fake backend "
                    "(tests/fakebackend.py) as vLLM: it times the gateway's own sleep/wake path only, not "
                    "vLLM's sleep mode (CUDA only, not exercised here)."}


def swap_table(swap: dict) -> tuple[str, list[str], list[list], str]:
    """The printed table (title, head, rows, note): per mechanism, resident TTFT beside cold start and swap in."""
    head = ["mechanism", "resident p50", "in, room free", "in, evicting the other: p50 [min..max]", "n",
            "heartbeats"]
    rows: list[list] = []
    for r in swap["rows"]:
        if "skipped" in r:
            rows.append([r["mechanism"], f"skipped: {r['skipped']}", "", "", "", ""])
            continue
        res, cold, ev = r["resident"], r["cold_start"], r["with_eviction"]
        rows.append([r["mechanism"] + (" — STAND-IN (fake backend)" if r["stand_in"] else " (vLLM CPU, localai up)"),
                     f"{res['p50']:.3f} s", f"{cold['p50']:.3f} s",
                     f"{ev['p50']:.3f} s [{ev['min']:.3f}..{ev['max']:.3f}]", ev["n"], f"{ev['heartbeats_p50']:g}"])
    title = ("Swap: request -> first token of a model that is not resident (heartbeats: the gateway's SSE "
             "comments before it, one per 5 s)")
    return title, head, rows, f"  {swap['note']}"
