"""Before/after for a gateway change: two gateway builds, same mock, runs interleaved.

    cp -r gateway /tmp/gw-try/ && (edit /tmp/gw-try/gateway/...)
    .venv/bin/python -m bench.compare --b /tmp/gw-try [--a /tmp/gw-base] [--rate 1000] [--streams 1000]

A and B are folders holding a `gateway` package (default A: the installed
one).  Both gateways run on the gateway core (only the one being measured
gets load), the mock and the load generator on the other; rounds go
direct, A, B, direct, A, B, ...  Reported per variant: gateway CPU per
request (or per stream event) - the number least disturbed by other load on
the machine - and latency over direct at p50/p99 (profile A, open loop) or
Δ ITL / Δ event delay (profile B).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from statistics import median

from . import loadgen, stats
from .configs import FULL, HOST, PORT_GATEWAY, PORT_MOCK, REPO, write_configs
from .phases import Bench
from .procs import (
    Proc,
    cpu_seconds,
    load_avg,
    log,
    raise_priority,
    runq_wait,
    wait_models_ready,
    wait_port,
)

PORT_B = PORT_GATEWAY + 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", type=Path, help="folder with variant A's gateway package (default: installed)")
    ap.add_argument("--b", type=Path, required=True, help="folder with variant B's gateway package")
    ap.add_argument("--rate", type=int, default=1000, help="profile A open-loop rate (0: skip)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--streams", type=int, default=0, help="profile B concurrent streams (0: skip)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    out = (args.out or REPO / "bench" / "results" / ("compare-" + datetime.now().strftime("%Y%m%d-%H%M%S"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.no_pin, args.gateway_src = False, None
    raise_priority(-10)  # as `python -m bench` does by default; both variants alike either way
    plan = dict(FULL, ttft=0.1, itl=0.02, chunks=128, delay=1.5)
    bench = Bench(args, plan, out)
    result: dict = {"a": str(args.a or "installed"), "b": str(args.b), "load_before": load_avg(), "rounds": []}

    def start(name: str, src: Path | None, port: int, cfg: Path) -> Proc:
        argv = [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(cfg)]
        env = {"PYTHONPATH": str(src)} if src else None
        p = Proc(name, argv, out / f"{name}.log", bench.gw_cpus, env, cwd=out)
        bench.procs.append(p)
        wait_port(port, 30, p)
        wait_models_ready(port, ["mock-a", "mock-b"], 30, p)
        return p

    async def go() -> None:
        if bench.bench_cpus:
            os.sched_setaffinity(0, bench.bench_cpus)
        cfg_a, _ = write_configs(out)
        cfg_b = out / "gateway-b.yaml"
        cfg_b.write_text(cfg_a.read_text().replace(f"port: {PORT_GATEWAY}", f"port: {PORT_B}"))
        bench.start_mock()
        gws = {"A": (start("gateway-a", args.a, PORT_GATEWAY, cfg_a), PORT_GATEWAY),
               "B": (start("gateway-b", args.b, PORT_B, cfg_b), PORT_B)}
        body_a = json.dumps({"model": "mock-a", "messages": [{"role": "user", "content": "Say hello."}],
                             "max_tokens": 16}).encode()
        body_b = json.dumps({"model": "mock-b", "messages": [{"role": "user", "content": "Say hello."}],
                             "max_tokens": 16, "stream": True}).encode()
        targets = {"direct": PORT_MOCK, "A": PORT_GATEWAY, "B": PORT_B}
        for rnd in range(args.rounds + 1):  # round 0: warm-up
            row: dict = {}
            for name, port in targets.items():
                pid = gws[name][0].pid if name in gws else None
                if args.rate:
                    req = loadgen.build_request(HOST, port, "/v1/chat/completions", body_a, "sk-bench-0123456789abcdef")
                    c0, w0 = (cpu_seconds(pid) if pid else 0), time.monotonic()
                    q0 = runq_wait(pid) if pid else 0
                    res = await loadgen.open_loop(HOST, port, req, args.rate, args.seconds if rnd else 1.0)
                    s = stats.summarize_requests(res.results, res.t_start, args.rate)
                    row[f"{name}_A"] = {"p50": s["latency_ms"]["p50"], "p99": s["latency_ms"]["p99"],
                                        "ok": s["success_rate"],
                                        "runq_wait_frac": round((runq_wait(pid) - q0) / (time.monotonic() - w0), 4)
                                        if pid else None,
                                        "cpu_us_per_req": round(1e6 * (cpu_seconds(pid) - c0) / max(1, s["ok"]), 1)
                                        if pid else None}
                if args.streams:
                    port_s = port + 1 if name == "direct" else port
                    req = loadgen.build_request(HOST, port_s, "/v1/chat/completions", body_b,
                                                "sk-bench-0123456789abcdef")
                    c0 = cpu_seconds(pid) if pid else 0
                    res = await loadgen.closed_loop(HOST, port_s, req, args.streams if rnd else 64, 0.0, 1.0)
                    s = stats.summarize_streams(stats.stream_samples(res, 128), 128)
                    row[f"{name}_B"] = {"itl_p50": s["itl_ms"]["p50"], "itl_p99": s["itl_ms"]["p99"],
                                        "delay_p50": s["event_delay_ms"]["p50"],
                                        "delay_p99": s["event_delay_ms"]["p99"],
                                        "events": s["events_received"], "per_read": s["events_per_read"],
                                        "cpu_us_per_event":
                                            round(1e6 * (cpu_seconds(pid) - c0) / max(1, s["events_received"]), 2)
                                            if pid else None}
            if rnd:
                result["rounds"].append(row)
                log(json.dumps(row))

    try:
        import uvloop

        uvloop.run(go())
    finally:
        bench.stop_all()
    result["load_after"] = load_avg()
    summary = {}
    rounds = result["rounds"]
    for v in ("A", "B"):
        s = {}
        if args.rate:
            s["cpu_us_per_req"] = median(r[f"{v}_A"]["cpu_us_per_req"] for r in rounds)
            s["overhead_p50_ms"] = round(median(r[f"{v}_A"]["p50"] - r["direct_A"]["p50"] for r in rounds), 4)
            s["overhead_p99_ms"] = round(median(r[f"{v}_A"]["p99"] - r["direct_A"]["p99"] for r in rounds), 4)
            s["success_min"] = min(r[f"{v}_A"]["ok"] for r in rounds)
            s["runq_wait_frac_max"] = max(r[f"{v}_A"]["runq_wait_frac"] for r in rounds)
        if args.streams:
            s["cpu_us_per_event"] = median(r[f"{v}_B"]["cpu_us_per_event"] for r in rounds)
            s["d_itl_p50_ms"] = round(median(r[f"{v}_B"]["itl_p50"] - r["direct_B"]["itl_p50"] for r in rounds), 4)
            s["d_itl_p99_ms"] = round(median(r[f"{v}_B"]["itl_p99"] - r["direct_B"]["itl_p99"] for r in rounds), 4)
            for q in ("p50", "p99"):
                s[f"d_delay_{q}_ms"] = round(median(r[f"{v}_B"][f"delay_{q}"] - r["direct_B"][f"delay_{q}"]
                                                    for r in rounds), 4)
            s["events_per_read"] = median(r[f"{v}_B"]["per_read"] for r in rounds)
        summary[v] = s
    result["summary"] = summary
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"a": result["a"], "b": result["b"], "load": [result["load_before"], result["load_after"]],
                      **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
