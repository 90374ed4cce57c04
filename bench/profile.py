"""Profile the gateway's hot path under benchmark load with py-spy.

    .venv/bin/python -m bench.profile --profile A --rate 1000 --seconds 10
    .venv/bin/python -m bench.profile --profile B --streams 1000
    .venv/bin/python -m bench.profile --gateway-src /tmp/gw-try ...   # a patched copy

Starts the mock upstream and the gateway as the benchmark does (same pinning,
config and logging), loads it, records it with `py-spy record` (needs
`pip install py-spy`), and writes to the output folder:

  flame.svg     the flame graph
  stacks.txt    py-spy's collapsed stacks
  top.txt       the top functions by own and by total samples, and the
                gateway's CPU time per request (or per stream event)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from . import loadgen, stats
from .configs import FULL, REPO, write_configs
from .phases import Bench
from .procs import cpu_seconds, log


def summarize_stacks(path: Path, top: int = 35) -> str:
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        samples += n
        frames = stack.split(";")
        # py-spy frames: "function (file:line)"; group by function and file, not line
        names = []
        for f in frames:
            fn, _, loc = f.partition(" (")
            names.append(f"{fn} ({loc.rsplit(':', 1)[0].replace(str(REPO) + '/', '')}")
        own[names[-1]] += n
        for name in set(names):
            total[name] += n
    out = [f"{samples} samples"]
    out.append("\nown samples (where the time is spent):")
    out += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    out.append("\ntotal samples (function and what it calls):")
    out += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in total.most_common(top)]
    return "\n".join(out)


def start_spy(spy: str, pid: int, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    """py-spy recording the gateway for the run (Popen returns at once; it runs beside the load)."""
    mode = ["--native"] if args.native else ["--nonblocking"]
    with open(out / "py-spy.log", "wb") as log:
        return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(args.sample_rate),
                                 "--duration", str(int(args.seconds)), "--format", "raw", *mode,
                                 "-o", str(out / "stacks.txt")], stdout=subprocess.DEVNULL, stderr=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=["A", "B"], default="A")
    ap.add_argument("--rate", type=int, default=1000, help="profile A: open-loop rate")
    ap.add_argument("--streams", type=int, default=1000, help="profile B: concurrent streams")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sample-rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--no-spy", action="store_true", help="only measure CPU per request, no py-spy")
    ap.add_argument("--native", action="store_true", help="py-spy --native: C frames too (uvloop, parsers)")
    ap.add_argument("--gateway-src", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.no_pin, args.quick = False, False
    out = args.out or REPO / "bench" / "results" / ("profile-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    plan = dict(FULL, ttft=0.1, itl=0.02, chunks=128, delay=1.5)
    bench = Bench(args, plan, out)
    lines = []

    async def go() -> None:
        import os

        if bench.bench_cpus:
            os.sched_setaffinity(0, bench.bench_cpus)
        synth, _ = write_configs(out)
        bench.start_mock()
        gw = bench.start_gateway(synth, 18500, ["mock-a", "mock-b"], "gateway")
        # warm up: connections and code paths
        port, req = bench.request("gateway", "A")
        await loadgen.open_loop("127.0.0.1", port, req, 500, 1.0)
        proc = None
        if not args.no_spy:
            proc = start_spy(spy, gw.pid, args, out)
            await asyncio.sleep(1.0)  # py-spy attaches (it says nothing when it has)
        c0, w0 = cpu_seconds(gw.pid), time.monotonic()
        if args.profile == "A":
            res = await loadgen.open_loop("127.0.0.1", port, req, args.rate, args.seconds)
            s = stats.summarize_requests(res.results, res.t_start, args.rate)
            cpu = cpu_seconds(gw.pid) - c0
            lines.append(f"profile A open loop {args.rate} RPS for {args.seconds:g} s: ok {s['ok']}/{s['requests']}, "
                         f"latency p50 {s['latency_ms']['p50']} ms p99 {s['latency_ms']['p99']} ms")
            lines.append(f"gateway CPU {cpu:.2f} s = {cpu / (time.monotonic() - w0):.0%} of its core; "
                         f"{1e6 * cpu / max(1, s['ok']):.0f} µs per request")
        else:
            port, req = bench.request("gateway", "B", stream=True)
            res = await loadgen.closed_loop("127.0.0.1", port, req, args.streams, args.seconds, 1.0)
            s = stats.summarize_streams(stats.stream_samples(res, plan["chunks"]), plan["chunks"])
            cpu = cpu_seconds(gw.pid) - c0
            lines.append(f"profile B {args.streams} streams: {s['complete']}/{s['streams']} complete, "
                         f"{s['events_received']} events, itl p50 {s['itl_ms']['p50']} ms, "
                         f"events/read {s['events_per_read']}")
            lines.append(f"gateway CPU {cpu:.2f} s = {cpu / (time.monotonic() - w0):.0%} of its core; "
                         f"{1e6 * cpu / max(1, s['events_received']):.1f} µs per event, "
                         f"{1e3 * cpu / max(1, s['streams']):.2f} ms per stream")
        if proc is not None:
            proc.wait(timeout=args.seconds + 30)

    try:
        import uvloop

        uvloop.run(go())
    finally:
        bench.stop_all()
    text = "\n".join(lines)
    if (out / "stacks.txt").exists():
        text += "\n\n" + summarize_stacks(out / "stacks.txt")
        subprocess.run([spy, "--version"], capture_output=True)
    (out / "top.txt").write_text(text + "\n")
    print(text)
    log(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
