"""The batch phase (issue #21): interactive time to first token and tokens/s, p50 and p99, alone,
then with a 1,000-line batch running on the same model, then alone again; and the batch's own throughput.

    .venv/bin/python -m bench.batch [--lines 1000] [--users 3] [--seconds 20] [--think 0] [--batch-yield idle|share]
                                    [--url URL --model NAME]

By default the model is a mock engine in this process with a vLLM-like capacity (`--slots`
sequences at once, each with a first-token delay and a pace per token; more wait in its queue),
behind a `localai gateway` started as a process with that model's max_concurrency = the engine's
slots, gateway.batch_max_share 0.5 and gateway.batch_yield `--batch-yield`. With `--url` (a
running gateway) and `--model` it measures a real stack instead (e.g. `localai up` on real vLLM
CPU; set the key in $LOCALAI_API_KEY; `--batch-yield` then only labels the result with the
stack's own setting).
The result (JSON) goes to stdout and bench/results/batch-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

KEY = "sk-bench-batch-0123456789"
DONE = ("completed", "failed", "cancelled", "expired")


class Engine:
    """A mock vLLM: `slots` sequences at once, each `ttft` to its first token and `itl` per token after."""

    def __init__(self, slots: int, ttft: float, itl: float, tokens: int):
        self.sem = asyncio.Semaphore(slots)
        self.ttft, self.itl, self.tokens = ttft, itl, tokens

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.json_response({}))
        app.router.add_get("/v1/models", lambda r: web.json_response(
            {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 4096}]}))
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        async with self.sem:
            await asyncio.sleep(self.ttft)
            usage = {"prompt_tokens": 8, "completion_tokens": self.tokens, "total_tokens": 8 + self.tokens}
            if not body.get("stream"):
                await asyncio.sleep(self.itl * (self.tokens - 1))
                message = {"role": "assistant", "content": "tok " * self.tokens}
                return web.json_response({"id": "x", "object": "chat.completion", "model": "m", "usage": usage,
                                          "choices": [{"index": 0, "finish_reason": "length", "message": message}]})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(self.tokens):
                if i:
                    await asyncio.sleep(self.itl)
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": "m",
                         "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp


async def interactive(http: aiohttp.ClientSession, url: str, model: str, users: int, seconds: float,
                      think: float = 0.0) -> dict:
    """`users` streaming chats for `seconds`, back to back or (think) each after a pause of `think`
    seconds on average (exponential, as people reading an answer): each one's TTFT and tokens/s."""
    ttfts: list[float] = []
    rates: list[float] = []
    end = time.monotonic() + seconds
    pause = random.Random(21)
    body = {"model": model, "stream": True, "max_tokens": 32,
            "messages": [{"role": "user", "content": "Say something."}]}

    async def user() -> None:
        while time.monotonic() < end:
            if think:
                await asyncio.sleep(pause.expovariate(1 / think))
            sent = time.monotonic()
            first, tokens = None, 0
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {KEY}"}) as r:
                async for line in r.content:
                    if line.startswith(b"data: {") and b'"content"' in line:
                        tokens += 1
                        first = first or time.monotonic()
            if first is None:
                continue
            ttfts.append(first - sent)
            took = time.monotonic() - first
            if tokens > 1 and took > 0:
                rates.append((tokens - 1) / took)

    await asyncio.gather(*(user() for _ in range(users)))
    q = statistics.quantiles
    return {"requests": len(ttfts), "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
            "ttft_p99_ms": round(1000 * q(ttfts, n=100)[98], 1),
            "tokens_per_s_p50": round(statistics.median(rates), 1),
            "tokens_per_s_p1": round(q(rates, n=100)[0], 1)}


async def submit(http: aiohttp.ClientSession, url: str, model: str, lines: int) -> str:
    auth = {"Authorization": f"Bearer {KEY}"}
    text = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": model, "max_tokens": 32,
                                        "messages": [{"role": "user", "content": f"Item {i}."}]}}) + "\n"
                   for i in range(lines))
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", text.encode(), filename="bench.jsonl")
    async with http.post(url + "/v1/files", data=form, headers=auth) as r:
        file_id = (await r.json())["id"]
    async with http.post(url + "/v1/batches", headers=auth, json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}) as r:
        return (await r.json())["id"]


async def status(http: aiohttp.ClientSession, url: str, batch_id: str) -> dict:
    async with http.get(f"{url}/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {KEY}"}) as r:
        return await r.json()


async def measure(url: str, model: str, args: argparse.Namespace) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        await interactive(http, url, model, args.users, 2)  # warm-up
        alone = await interactive(http, url, model, args.users, args.seconds, args.think)
        started = time.monotonic()
        batch_id = await submit(http, url, model, args.lines)
        beside = await interactive(http, url, model, args.users, args.seconds, args.think)
        during = await status(http, url, batch_id)
        interactive_ended = time.monotonic()
        # The batch's end is seen only by asking, as an SDK client does.
        while (batch := await status(http, url, batch_id))["status"] not in DONE:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        took = time.monotonic() - started
        # Alone again once the batch is done: on a shared machine the spread between the two
        # runs alone says how much of a difference is the machine's.
        after = await interactive(http, url, model, args.users, args.seconds, args.think)
    counts = batch["request_counts"]
    rest = counts["completed"] - during["request_counts"]["completed"]
    return {"batch_yield": args.batch_yield, "users": args.users, "think_s": args.think, "seconds": args.seconds,
            "interactive_alone": alone, "interactive_with_batch": beside, "interactive_alone_after": after,
            "p99_ttft_ratio": round(beside["ttft_p99_ms"] / min(alone["ttft_p99_ms"], after["ttft_p99_ms"]), 2),
            "batch": {"lines": args.lines, "status": batch["status"], "completed": counts["completed"],
                      "failed": counts["failed"], "done_when_interactive_ended": during["request_counts"],
                      "seconds": round(took, 1), "lines_per_s": round(counts["completed"] / took, 1),
                      # Once the interactive users stopped: what the batch does with the model to itself.
                      "lines_per_s_after_interactive": round(rest / (started + took - interactive_ended), 1)}}


async def with_mock(args: argparse.Namespace) -> dict:
    engine = Engine(args.slots, args.ttft, args.itl, 32)
    runner = web.AppRunner(engine.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    mock_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gw_port = args.port
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.yaml"
        cfg.write_text(json.dumps({
            "gateway": {"port": gw_port, "usage_db": None, "webui": False, "batch_dir": f"{tmp}/batch",
                        "batch_max_share": 0.5, "batch_parallel": 64, "batch_yield": args.batch_yield,
                        "log_level": "warning"},
            "models": [{"name": "m", "url": f"http://127.0.0.1:{mock_port}", "served_model": "m",
                        "max_concurrency": args.slots}]}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "gateway", "--config", str(cfg),
            env={**os.environ, "LOCALAI_API_KEY": KEY}, stdout=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{gw_port}"
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    try:
                        async with http.get(url + "/ready") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            result = await measure(url, "m", args)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    await runner.cleanup()
    result["setup"] = {"upstream": "mock engine", "slots": args.slots, "ttft_ms": args.ttft * 1000,
                       "itl_ms": args.itl * 1000, "tokens": 32, "users": args.users, "batch_max_share": 0.5}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1000)
    p.add_argument("--users", type=int, default=3, help="interactive users, one streaming chat after another")
    p.add_argument("--seconds", type=float, default=20.0, help="each interactive measurement")
    p.add_argument("--think", type=float, default=0.0,
                   help="each user's mean pause between chats (s; exponential); 0: back to back")
    p.add_argument("--slots", type=int, default=8, help="the mock engine's sequences at once")
    p.add_argument("--ttft", type=float, default=0.05, help="the mock's first-token delay (s)")
    p.add_argument("--itl", type=float, default=0.01, help="the mock's pace per token (s)")
    p.add_argument("--port", type=int, default=18540, help="the mock run's gateway port")
    p.add_argument("--batch-yield", choices=("idle", "share"), default="idle",
                   help="gateway.batch_yield of the mock run (with --url: the running stack's, for the record)")
    p.add_argument("--url", help="a running gateway to measure instead of the mock")
    p.add_argument("--model", default="m", help="with --url: the model to load")
    args = p.parse_args()
    if args.url:
        global KEY
        KEY = os.environ.get("LOCALAI_API_KEY", KEY)
        result = asyncio.run(measure(args.url.rstrip("/"), args.model, args))
    else:
        result = asyncio.run(with_mock(args))
    text = json.dumps(result, indent=2)
    out = Path(__file__).parent / "results" / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
