"""The gateway benchmark: one command, numbers out.

    .venv/bin/python -m bench            # full run (< 15 min): JSON + chart + table
    .venv/bin/python -m bench --quick    # < 2 min, for iterating

What runs (see bench/README.md for the method and its limits):

  mock upstream   bench/mock_upstream.py, its own process, profiles A/B/C on 3 ports
  gateway         `localai gateway --config <out>/gateway.yaml`, production settings
                  (info logging, JSON lines to a file, an API key), external model
                  entries pointing at the mock
  load generator  bench/loadgen.py, in this process

The code: configs.py (ports, plans, the configs written), procs.py (processes and
their /proc accounting), harness.py (starting, measuring, interleaving), phases.py
(what is measured), swap.py (the swap phase: `localai up` and on_demand models), this file
(the command line).

Pinned, where the machine has 2+ cores: the gateway alone on the last core,
mock + load generator (and vLLM in real mode) on the others.  Direct and
gateway runs alternate within each point (D G D G ...), warm-up discarded.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import datetime
from pathlib import Path

from .configs import FULL, QUICK, REPO
from .phases import Bench
from .procs import log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 2 min): fewer points, 1 round, no vLLM")
    ap.add_argument("--real", action="store_true", help="with --quick: include the real vLLM mode")
    ap.add_argument("--no-real", action="store_true", help="skip the real vLLM mode")
    ap.add_argument("--phases", default="",
                    help="comma list of seq,open,streams,held,usage,replicas,scaleout,real,swap (default: all; usage: "
                         "the usage store off vs on at 1,000 RPS; "
                         "scaleout: capacity with 1-3 replicas, a hung replica, affinity hit rate; swap: time to "
                         "first token of a model that is not resident, real vLLM unless --no-real, plus the "
                         "sleep-mode stand-in)")
    ap.add_argument("--rounds", type=int, help="measured rounds per point (default 3, quick 1)")
    ap.add_argument("--rates", help="open-loop rates, comma separated (default 100,500,1000,2000,3000,5000)")
    ap.add_argument("--streams", help="stream concurrencies, comma separated (default 1,16,64,256,1000)")
    ap.add_argument("--ttft", type=float, default=0.1, help="profile B time to first token (s)")
    ap.add_argument("--itl", type=float, default=0.02, help="profile B inter-token delay (s)")
    ap.add_argument("--chunks", type=int, default=128, help="profile B events per stream")
    ap.add_argument("--delay", type=float, default=1.5, help="profile C delay (s)")
    ap.add_argument("--out", type=Path, help="results folder (default bench/results/<timestamp>)")
    ap.add_argument("--wait-idle", type=float, default=60.0,
                    help="wait up to this many seconds for the 1-min load average < 0.7 (default 60)")
    ap.add_argument("--no-pin", action="store_true", help="don't pin processes to cores")
    ap.add_argument("--nice", type=int, default=-10,
                    help="niceness of the gateway, mock, load generator and vLLM (default -10, needs root; "
                         "0: leave as is). On a shared machine this keeps other processes' CPU time off "
                         "the measurement; the gateway's run-queue wait is reported either way")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--gateway-src", type=Path,
                    help="run the gateway package found in this folder (PYTHONPATH) instead of the installed one")
    ap.add_argument("--label", default="", help="a note stored in the report")
    args = ap.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    plan.update(ttft=args.ttft, itl=args.itl, chunks=args.chunks, delay=args.delay)
    if args.rounds:
        plan["rounds"] = args.rounds
    if args.rates:
        plan["open_rates"] = [int(x) for x in args.rates.split(",")]
    if args.streams:
        plan["stream_conc"] = [int(x) for x in args.streams.split(",")]
    if args.real:
        plan["real"] = True
    if args.no_real:
        plan["real"] = False
    args.phases_given = bool(args.phases)
    if not args.phases:
        args.phases = "seq,open,streams,held,usage,replicas,scaleout" + (",real" if plan["real"] else "") + ",swap"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "bench" / "results" / (stamp + ("-quick" if args.quick else ""))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, plan, out)
    import uvloop

    def on_signal(signum, frame):
        bench.stop_all()
        raise SystemExit(130)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        rep = uvloop.run(bench.run())
    except KeyboardInterrupt:
        bench.stop_all()
        return 130
    finally:
        bench.stop_all()
    rep["meta"]["label"] = args.label
    from .report import print_table, write_chart

    (out / "report.json").write_text(json.dumps(rep, indent=1))
    if not args.no_chart:
        try:
            write_chart(rep, out / "chart.png")
        except ImportError:
            log("matplotlib missing: no chart (pip install -e '.[bench]')")
    print_table(rep, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
