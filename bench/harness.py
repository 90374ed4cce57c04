"""The benchmark's harness: starting the mock and the gateway, one measured run with
its resource accounting, and the direct/gateway interleaving that every phase uses."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

from . import stats
from .configs import API_KEY, HOST, PORT_GATEWAY, PORT_MOCK, REPLICA_SERVERS
from .loadgen import build_request
from .procs import (
    Proc,
    cpu_seconds,
    http_json,
    reset_peak_rss,
    rss_status,
    runq_wait,
    tree_cpu_seconds,
    wait_models_ready,
    wait_port,
)


class Harness:
    def __init__(self, args, plan: dict, out: Path):
        self.args, self.plan, self.out = args, plan, out
        self.report: dict = {}
        self.procs: list[Proc] = []
        ncpu = sorted(os.sched_getaffinity(0))
        if len(ncpu) >= 2 and not args.no_pin:
            self.gw_cpus = {ncpu[-1]}
            self.bench_cpus = set(ncpu[:-1])
            self.pinning = {"pinned": True, "gateway_cpus": sorted(self.gw_cpus),
                            "bench_cpus": sorted(self.bench_cpus),
                            "note": "gateway alone on its core; mock upstream, load generator "
                                    "(and vLLM in real mode) share the other(s). Other processes on "
                                    "the machine are not kept off either core (no isolcpus)."}
        else:
            self.gw_cpus = self.bench_cpus = None
            self.pinning = {"pinned": False, "cpus": ncpu,
                            "note": "could not pin: " + ("--no-pin given" if args.no_pin else
                                                         f"only {len(ncpu)} CPU available") +
                                    "; gateway, mock and load generator share the CPU(s)"}

    # -- processes --
    def start_mock(self) -> Proc:
        p = self.plan
        argv = [sys.executable, "-m", "bench.mock_upstream", "--port", str(PORT_MOCK),
                "--ttft", str(p["ttft"]), "--itl", str(p["itl"]), "--chunks", str(p["chunks"]),
                "--delay", str(p["delay"]), "--replicas", ",".join(REPLICA_SERVERS)]
        proc = Proc("mock", argv, self.out / "mock.log", self.bench_cpus)
        self.procs.append(proc)
        for i in range(3 + len(REPLICA_SERVERS)):
            wait_port(PORT_MOCK + i, 10, proc)
        return proc

    def localai_argv(self) -> list[str]:
        """The `localai` command of the gateway package under test."""
        if self.args.gateway_src:
            return [sys.executable, "-m", "gateway.cli"]
        return [str(Path(sys.executable).parent / "localai")]

    def gateway_argv(self, config: Path) -> list[str]:
        return [*self.localai_argv(), "gateway", "--config", str(config)]

    def gateway_env(self) -> dict | None:
        return {"PYTHONPATH": str(self.args.gateway_src)} if self.args.gateway_src else None

    def start_gateway(self, config: Path, port: int, models: list[str], name: str) -> Proc:
        env = self.gateway_env()
        # cwd: the results folder, so `-m gateway.cli` can't pick up ./gateway over --gateway-src
        proc = Proc(name, self.gateway_argv(config), self.out / f"{name}.log", self.gw_cpus, env, cwd=self.out)
        self.procs.append(proc)
        wait_port(port, 30, proc)
        wait_models_ready(port, models, 30, proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    # -- one run with resource accounting --
    async def measured(self, side: str, gw: Proc | None, coro, upstream_pids: list[int]):
        gc.collect()
        gc.disable()
        if side == "gateway" and gw is not None:
            reset_peak_rss(gw.pid)
            g0 = cpu_seconds(gw.pid)
            q0 = runq_wait(gw.pid)
        u0 = sum(tree_cpu_seconds(p) for p in upstream_pids)
        s0 = time.process_time()
        w0 = time.monotonic()
        try:
            result = await coro
        finally:
            gc.enable()
        wall = time.monotonic() - w0
        res = {"wall_s": round(wall, 3),
               "bench_core_util": round((time.process_time() - s0 +
                                         sum(tree_cpu_seconds(p) for p in upstream_pids) - u0) / wall, 3)}
        if side == "gateway" and gw is not None:
            cpu = cpu_seconds(gw.pid) - g0
            rss = rss_status(gw.pid)
            res.update({"gateway_cpu_s": round(cpu, 3), "gateway_cpu_util": round(cpu / wall, 3),
                        "gateway_runq_wait_frac": round((runq_wait(gw.pid) - q0) / wall, 4),
                        "gateway_peak_rss_mb": round(rss.get("VmHWM", 0), 1),
                        "gateway_rss_mb": round(rss.get("VmRSS", 0), 1)})
        return result, res

    def mock_stats(self, reset: bool = False) -> dict:
        return http_json(f"http://{HOST}:{PORT_MOCK}/{'_reset' if reset else '_stats'}",
                         "POST" if reset else "GET")

    def targets_for(self, side: str, profile: str) -> tuple[int, str]:
        if side == "direct":
            return PORT_MOCK + "ABC".index(profile), "mock"
        return PORT_GATEWAY, f"mock-{profile.lower()}"

    def request(self, side: str, profile: str, stream: bool = False, port: int | None = None,
                model: str | None = None, extra: dict | None = None) -> tuple[int, bytes]:
        p, m = self.targets_for(side, profile) if port is None else (port, model)
        body = {"model": m, "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                "max_tokens": 16}
        if stream:
            body["stream"] = True
        body.update(extra or {})
        return p, build_request(HOST, p, "/v1/chat/completions", json.dumps(body).encode(), API_KEY)

    # -- the direct/gateway interleaving every phase uses --
    async def interleaved(self, name: str, make_run, gw: Proc, upstream_pids: list[int],
                          warm=None) -> dict:
        """D G D G ... for `rounds` rounds after one discarded warm-up pair."""
        rounds = {"direct": [], "gateway": []}
        resources = {"direct": [], "gateway": []}
        if self.plan["warmup"]:
            for side in ("direct", "gateway"):
                await (warm or make_run)(side)
        for _ in range(self.plan["rounds"]):
            for side in ("direct", "gateway"):
                result, res = await self.measured(side, gw, make_run(side), upstream_pids)
                rounds[side].append(result)
                resources[side].append(res)
        return {"rounds": rounds, "resources": resources}

    def _requests_point(self, data: dict, with_start: bool, offered: float | None = None) -> dict:
        out = {}
        for side in ("direct", "gateway"):
            runs = data["rounds"][side]
            if with_start:
                per = [stats.summarize_requests(r.results, r.t_start, offered) for r in runs]
                for s, r in zip(per, runs, strict=True):
                    s["conns_opened"] = r.conns_opened
                    s["conns_prewarmed"] = r.conns_prewarmed
                pooled_results = [x for r in runs for x in r.results]
            else:
                per = [stats.summarize_requests(r) for r in runs]
                pooled_results = [x for r in runs for x in r]
            pooled = stats.summarize_requests(pooled_results)
            if with_start:
                pooled["achieved_rps"] = round(sum(p["achieved_rps"] or 0 for p in per) / len(per), 1)
                lag = [x.t_send - x.t_sched for x in pooled_results if x.t_send and x.t_sched]
                pooled["generator_lag_ms"] = stats.dist_ms(lag)
                pooled["conns_opened"] = sum(r.conns_opened for r in runs)
            out[side] = {"pooled": pooled, "rounds": per, "resources": data["resources"][side]}
        out["overhead_ms"] = stats.delta([r["latency_ms"] for r in out["direct"]["rounds"]],
                                         [r["latency_ms"] for r in out["gateway"]["rounds"]],
                                         out["direct"]["pooled"]["latency_ms"],
                                         out["gateway"]["pooled"]["latency_ms"])
        out["gateway_resources"] = _resource_summary(data["resources"]["gateway"])
        per_req = [res["gateway_cpu_s"] / r["ok"]
                   for res, r in zip(data["resources"]["gateway"], out["gateway"]["rounds"], strict=True) if r["ok"]]
        # CPU per request: what the gateway's work costs, the number other load disturbs least;
        # 1e6 / it is the rate one core could carry.
        out["gateway_resources"]["cpu_us_per_request"] = round(1e6 * median(per_req), 1) if per_req else None
        out["bench_core_util_max"] = max(r["bench_core_util"] for s in ("direct", "gateway")
                                         for r in data["resources"][s])
        return out

    def _streams_point(self, data: dict, expected: int | None) -> dict:
        out: dict = {}
        for side in ("direct", "gateway"):
            runs = data["rounds"][side]
            per = [stats.summarize_streams(r, expected) for r in runs]
            pooled = stats.summarize_streams(stats.merge_samples(runs), expected)
            out[side] = {"pooled": pooled, "rounds": per, "resources": data["resources"][side]}
        dl = {}
        for key, name in (("ttft_ms", "ttft"), ("itl_ms", "itl"), ("event_delay_ms", "event_delay")):
            if key not in out["gateway"]["pooled"]:
                continue
            dl[name] = stats.delta([r.get(key) for r in out["direct"]["rounds"]],
                                   [r.get(key) for r in out["gateway"]["rounds"]],
                                   out["direct"]["pooled"].get(key), out["gateway"]["pooled"].get(key))
        out["delta_ms"] = dl
        out["direct_ttft_p50_spread_ms"] = stats.spread([r["ttft_ms"]["p50"] for r in out["direct"]["rounds"]])
        out["direct_itl_p50_spread_ms"] = stats.spread([r["itl_ms"]["p50"] for r in out["direct"]["rounds"]])
        out["gateway_resources"] = _resource_summary(data["resources"]["gateway"])
        per_ev = [res["gateway_cpu_s"] / r["events_received"]
                  for res, r in zip(data["resources"]["gateway"], out["gateway"]["rounds"], strict=True)
                  if r["events_received"]]
        out["gateway_resources"]["cpu_us_per_event"] = round(1e6 * median(per_ev), 2) if per_ev else None
        out["bench_core_util_max"] = max(r["bench_core_util"] for s in ("direct", "gateway")
                                         for r in data["resources"][s])
        return out


def _resource_summary(res: list[dict]) -> dict:
    if not res:
        return {}
    return {"cpu_s_total": round(sum(r["gateway_cpu_s"] for r in res), 3),
            "cpu_util_max": max(r["gateway_cpu_util"] for r in res),
            "runq_wait_frac_max": max(r.get("gateway_runq_wait_frac", 0) for r in res),
            "peak_rss_mb_max": max(r["gateway_peak_rss_mb"] for r in res)}
