"""The scale-out phase (#19): what replicas of one model add, and what a hung one costs, through
the gateway (production settings, `localai gateway`) against the mock upstream's three equal
servers (bench/mock_upstream.py from SCALEOUT_PORT: 4 requests at a time, 0.2 s each, so 20/s
each), the model `scale` on them with `max_num_seqs: 4`.

- **capacity**: closed loop, 24 clients, the model on 1, 2 and 3 of the servers: completed
  requests per second. Each ready replica adds its 4 slots to the model's admission.
- **hung replica**: open loop at 20 requests/s over three replicas; a few seconds in, one stops
  answering anything, health checks included (as a SIGSTOPped server): latency percentiles and
  requests lost (no 200 within 120 s). The gateway's deadlines and health checks are its
  defaults, as shipped: requests already sent to the hung one wait until its health checks mark
  it failed (two missed in a row), then go to the others at once.
- **affinity**: each conversation's turns (5) that reached the replica most of its turns reached,
  with 1 conversation at a time and with 20 at once: over 12 slots (a conversation whose replica
  is full goes elsewhere, by design) and over 24 (max_num_seqs 8: room for all).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import yaml

from . import stats
from .configs import API_KEY, HOST, PORT_GATEWAY_REPLICAS, SCALEOUT_PORT
from .procs import http_json, log

SLOTS = 4  # each server's, and the model's max_num_seqs per replica
CLIENTS = 24
LOST_AFTER = 120.0  # seconds: a request not answered by then is lost
TURNS = 5


def scaleout_config(out: Path, replicas: int, slots: int = SLOTS) -> Path:
    keys = out / "api-keys"
    path = out / f"gateway-scaleout-{replicas}x{slots}.yaml"
    path.write_text(f"# Scale-out phase: model `scale` on {replicas} of the mock's equal servers, "
                    f"max_num_seqs {slots}.\n" + yaml.safe_dump({
        "gateway": {"host": HOST, "port": PORT_GATEWAY_REPLICAS, "api_key_file": str(keys), "max_queue": 20000,
                    "webui": False, "max_connections_per_client": 0},
        "hosts": [{"name": f"h{i}", "address": HOST, "gpus": 0, "port_offset": i} for i in range(replicas)],
        "models": [{"name": "scale", "model": "mock", "port": SCALEOUT_PORT,
                    "hosts": [f"h{i}" for i in range(replicas)], "max_num_seqs": slots,
                    "gpu_memory_utilization": 0.4, "default": True}],
    }, sort_keys=False))
    return path


def _body(conversation: int, turn: int = 1) -> dict:
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Conversation {conversation}: say hello."}]
    for t in range(1, turn):
        messages += [{"role": "assistant", "content": f"Hello ({t})."}, {"role": "user", "content": f"Turn {t}."}]
    return {"model": "scale", "messages": messages, "max_tokens": 16}


class _Client:
    def __init__(self, http: aiohttp.ClientSession):
        self.http = http
        self.url = f"http://{HOST}:{PORT_GATEWAY_REPLICAS}/v1/chat/completions"

    async def ask(self, body: dict) -> tuple[int, float]:
        """(status, seconds); status 0: no answer within LOST_AFTER seconds or the connection failed."""
        t0 = time.monotonic()
        try:
            async with self.http.post(self.url, json=body, timeout=aiohttp.ClientTimeout(total=LOST_AFTER)) as r:
                await r.read()
                return r.status, time.monotonic() - t0
        except (TimeoutError, aiohttp.ClientError):
            return 0, time.monotonic() - t0


async def _all_ready(http: aiohttp.ClientSession, replicas: int, within: float = 30) -> None:
    """Every replica ready (and so, since #19, the model's slots all of theirs)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with http.get(f"http://{HOST}:{PORT_GATEWAY_REPLICAS}/v1/models") as r:
            cards = (await r.json())["data"][0]["replicas"]
        if [c["state"] for c in cards] == ["ready"] * replicas:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"scale-out: {replicas} replicas not all ready after {within:g} s")


async def _capacity(client: _Client, seconds: float) -> dict:
    """Closed loop: CLIENTS clients, each sends its next request when its last is answered."""
    done, failed, latencies = 0, 0, []
    end = time.monotonic() + seconds

    async def user(u: int) -> None:
        nonlocal done, failed
        i = 0
        while time.monotonic() < end:
            status, took = await client.ask(_body(u * 100000 + i))
            i += 1
            if status == 200:
                done += 1
                latencies.append(took)
            else:
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(user(u) for u in range(CLIENTS)))
    wall = time.monotonic() - t0
    return {"throughput_rps": round(done / wall, 1), "completed": done, "failed": failed,
            "latency_ms": stats.dist_ms(latencies)}


async def _hung(client: _Client, rate: float, seconds: float, hang_at: float) -> dict:
    hung_port = SCALEOUT_PORT + 2
    results: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        results.append(await client.ask(_body(200000 + i)))

    tasks = []
    t0 = time.monotonic()
    hung = False
    for i in range(int(rate * seconds)):
        due = t0 + i / rate
        if not hung and due >= t0 + hang_at:
            http_json(f"http://{HOST}:{hung_port}/_hang", "POST")
            hung = True
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    http_json(f"http://{HOST}:{hung_port}/_unhang", "POST")
    ok = [took for status, took in results if status == 200]
    return {"requests": len(results), "lost": sum(1 for status, _ in results if status != 200),
            "statuses": sorted({status for status, _ in results}),
            "latency_ms": stats.dist_ms(ok)}


def _conversations() -> list[dict[str, int]]:
    return [http_json(f"http://{HOST}:{SCALEOUT_PORT + i}/_stats")["conversations"] for i in range(3)]


async def _affinity(client: _Client, at_once: int, conversations: int, first: int) -> dict:
    before = _conversations()
    line = asyncio.Semaphore(at_once)

    async def converse(c: int) -> None:
        async with line:
            for turn in range(1, TURNS + 1):
                await client.ask(_body(c, turn))

    await asyncio.gather(*(converse(first + c) for c in range(conversations)))
    after = _conversations()
    hits = total = 0
    for c in range(first, first + conversations):
        per_replica = [a.get(str(c), 0) - b.get(str(c), 0) for a, b in zip(after, before, strict=True)]
        hits += max(per_replica)
        total += sum(per_replica)
    return {"conversations": conversations, "at_once": at_once, "turns": total,
            "hit_rate": round(hits / max(1, total), 4)}


async def phase_scaleout(harness, plan: dict) -> dict:
    """harness: bench.phases.Bench (its mock and gateways)."""
    harness.start_mock()
    result: dict = {"servers": f"3 x ({SLOTS} at a time, 0.2 s each: 20/s each)", "max_num_seqs": SLOTS,
                    "capacity": {}}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"},
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        client = _Client(http)
        for replicas in (1, 2, 3):
            gw = harness.start_gateway(scaleout_config(harness.out, replicas), PORT_GATEWAY_REPLICAS, ["scale"],
                                       f"gateway-scaleout-{replicas}")
            await _all_ready(http, replicas)
            point = result["capacity"][replicas] = await _capacity(client, plan["scaleout_s"])
            log(f"scale-out: {replicas} replica(s): {point['throughput_rps']} requests/s "
                f"(p50 {point['latency_ms']['p50']} ms), {point['failed']} failed")
            if replicas < 3:
                gw.stop()
                harness.procs.remove(gw)
        rate, seconds = 20, plan["hung_s"]
        result["hung"] = point = {"rate": rate, "seconds": seconds, "hang_at_s": 3.0,
                                  **await _hung(client, rate, seconds, 3.0)}
        lat = point["latency_ms"]
        log(f"scale-out: one of 3 replicas hung at 3 s, {rate}/s for {seconds:g} s: p50 {lat['p50']} "
            f"p99 {lat['p99']} max {lat['max']} ms, {point['lost']} of {point['requests']} lost")
        await _all_ready(http, 3, within=60)
        result["affinity"] = [{**await _affinity(client, 1, 10, 300000), "max_num_seqs": SLOTS},
                              {**await _affinity(client, 20, 20, 400000), "max_num_seqs": SLOTS}]
        harness.stop_all()
        # With room for every conversation at once: the gateway's slots above the servers' own (which
        # then queue, as vLLM does past its batch).
        harness.start_mock()
        harness.start_gateway(scaleout_config(harness.out, 3, 2 * SLOTS), PORT_GATEWAY_REPLICAS, ["scale"],
                              "gateway-scaleout-3-roomy")
        await _all_ready(http, 3)
        result["affinity"].append({**await _affinity(client, 20, 20, 500000), "max_num_seqs": 2 * SLOTS})
        for a in result["affinity"]:
            log(f"scale-out: affinity, {a['at_once']} conversation(s) at once, max_num_seqs {a['max_num_seqs']}: "
                f"{a['hit_rate']:.1%} of {a['turns']} turns on their conversation's replica")
    harness.stop_all()
    return result


def scaleout_table(s: dict) -> tuple[str, list[str], list[list]]:
    rows: list[list] = [[f"capacity, {n} replica(s)", f"{p['throughput_rps']} req/s", p["latency_ms"]["p50"],
                         p["latency_ms"]["p99"], p["failed"]] for n, p in s["capacity"].items()]
    h = s["hung"]
    rows.append([f"1 of 3 hung, {h['rate']}/s", f"{h['requests'] - h['lost']}/{h['requests']} ok",
                 h["latency_ms"]["p50"], h["latency_ms"]["p99"], h["lost"]])
    rows += [[f"affinity, {a['at_once']} at once, {a['max_num_seqs'] * 3} slots",
              f"{a['hit_rate']:.1%} of {a['turns']} turns", "", "", ""] for a in s["affinity"]]
    return (f"Scale-out: model on 1-3 mock servers ({s['servers']}), max_num_seqs {s['max_num_seqs']}; "
            "lost: no 200 within 120 s", ["point", "result", "p50 ms", "p99 ms", "lost/failed"], rows)
