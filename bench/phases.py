"""The benchmark's phases (profile A sequential and open loop, B streams, C held
requests, real vLLM) and the whole run that strings them together."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from . import loadgen, stats
from .configs import (
    HOST,
    PORT_GATEWAY,
    PORT_GATEWAY_REAL,
    PORT_GATEWAY_REPLICAS,
    PORT_GATEWAY_USAGE,
    PORT_MOCK,
    PORT_VLLM,
    REPLICA_POLICIES,
    TINY_MODEL,
    USAGE_MODES,
    VLLM_PYTHON,
    versions,
    write_configs,
    write_replica_configs,
    write_usage_configs,
)
from .harness import Harness
from .procs import (
    Proc,
    cpu_seconds,
    http_json,
    load_avg,
    log,
    raise_priority,
    reset_peak_rss,
    rss_status,
    wait_idle,
)
from .scaleout import phase_scaleout
from .swap import phase_swap


def _vllm_healthy() -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{PORT_VLLM}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Bench(Harness):
    async def phase_sequential(self, gw: Proc, mock: Proc) -> dict:
        log("profile A, sequential")
        dur = self.plan["seq_s"]

        def run(side, d=dur):
            port, req = self.request(side, "A")
            return loadgen.sequential(HOST, port, req, d)

        data = await self.interleaved("sequential", run, gw, [mock.pid], warm=lambda s: run(s, 0.5))
        return self._requests_point(data, with_start=False)

    async def phase_open_loop(self, gw: Proc, mock: Proc) -> dict:
        points = []
        stopped = None
        for rate in self.plan["open_rates"]:
            log(f"profile A, open loop {rate} RPS")
            dur, to = self.plan["open_s"], self.plan["open_timeout"]

            def run(side, d=dur, rate=rate, to=to):
                port, req = self.request(side, "A")
                return loadgen.open_loop(HOST, port, req, rate, d, grace=to)

            data = await self.interleaved(f"open{rate}", run, gw, [mock.pid],
                                          warm=lambda s, rate=rate: run(s, self.plan["open_warm_s"], rate))
            point = self._requests_point(data, with_start=True, offered=rate)
            point["offered_rps"] = rate
            g = point["gateway"]["pooled"]
            d = point["direct"]["pooled"]
            lag99 = g["generator_lag_ms"]["p99"] or 0
            point["generator_bound"] = bool(
                lag99 > 5 or min((r.get("sent_rps") or 0) for r in point["gateway"]["rounds"]) < 0.97 * rate)
            point["sustained"] = bool(g["success_rate"] >= 0.999 and g["achieved_rps"] >= 0.99 * rate)
            points.append(point)
            log(f"  direct p50 {d['latency_ms']['p50']} ms ok {d['success_rate']}, gateway p50 "
                f"{g['latency_ms']['p50']} p99 {g['latency_ms']['p99']} ms ok {g['success_rate']} "
                f"achieved {g['achieved_rps']} cpu {point['gateway_resources']['cpu_util_max']}")
            if g["success_rate"] < 0.999 or g["achieved_rps"] < 0.9 * rate:
                stopped = {"rate": rate, "reason": f"gateway success {g['success_rate']:.4%}, "
                                                   f"achieved {g['achieved_rps']} of {rate} RPS"}
                break
        return {"points": points, "stopped": stopped, "timeout_s": self.plan["open_timeout"],
                "duration_s": self.plan["open_s"]}

    async def phase_streams(self, gw: Proc, mock: Proc) -> list[dict]:
        points = []
        chunks = self.plan["chunks"]
        for users in self.plan["stream_conc"]:
            log(f"profile B, {users} concurrent streams")
            dur = self.plan["stream_s"] if users <= 16 else 0.0
            counts = {"direct": [], "gateway": []}

            async def run(side, users=users, dur=dur, record=True, counts=counts):
                port, req = self.request(side, "B", stream=True)
                before = self.mock_stats()
                res = await loadgen.closed_loop(HOST, port, req, users, dur, self.plan["stream_stagger"])
                after = self.mock_stats()
                if record:
                    counts[side].append({
                        "events_sent_by_upstream": after["events_sent"] - before["events_sent"],
                        "usage_events_sent_by_upstream": after["usage_events_sent"] - before["usage_events_sent"],
                        "streams_aborted_at_upstream": after["streams_aborted"] - before["streams_aborted"],
                        "upstream_timer_lag_max_ms": round(after["lag_max"] * 1000, 3),
                        "upstream_timer_lag_over_5ms": after["lag_over_5ms"] - before["lag_over_5ms"],
                    })
                return stats.stream_samples(res, chunks)

            self.mock_stats(reset=True)
            data = await self.interleaved(f"streams{users}", run, gw, [mock.pid],
                                          # warm-up at full concurrency: the gateway's upstream pool
                                          # then holds as many idle connections as the rounds need
                                          warm=lambda s, users=users: run(s, users, 0.0, False))
            point = self._streams_point(data, chunks)
            point["users"] = users
            for side in ("direct", "gateway"):
                point[side]["upstream"] = counts[side]
                sent = sum(c["events_sent_by_upstream"] for c in counts[side])
                point[side]["events_in"] = sent
                point[side]["events_out"] = point[side]["pooled"]["events_received"]
            g = point["gateway"]
            point["every_event_delivered"] = (g["events_in"] == g["events_out"] ==
                                              g["pooled"]["events_expected"] and g["pooled"]["failed"] == 0)
            points.append(point)
            dl = point["delta_ms"]
            log(f"  Δttft p50 {dl['ttft']['p50']['median']} ms, Δitl p50 {dl['itl']['p50']['median']} "
                f"p99 {dl['itl']['p99']['median']}, "
                f"Δevent delay p50 {dl.get('event_delay', {}).get('p50', {}).get('median')}"
                f" events in/out {g['events_in']}/{g['events_out']}, "
                f"rss {point['gateway_resources']['peak_rss_mb_max']} MB"
                f" cpu {point['gateway_resources']['cpu_util_max']}")
        return points

    async def phase_held(self, gw: Proc, mock: Proc) -> dict:
        users = self.plan["held_users"]
        log(f"profile C, {users} held requests ({self.plan['delay']} s each)")

        def run(side, users=users, dur=self.plan["held_s"]):
            port, req = self.request(side, "C")
            return loadgen.closed_loop(HOST, port, req, users, dur, 0.5, request_timeout=30)

        data = await self.interleaved("held", run, gw, [mock.pid], warm=lambda s: run(s, 64, 0.0))
        point = self._requests_point(data, with_start=False)
        point["users"] = users
        return point

    async def phase_replicas(self) -> dict:
        """A model on a fast and a slow replica: latency with each balancing policy, open loop over
        many conversations; then the retry path: a model whose second replica closes every request's
        connection unanswered, against a model on the healthy server alone."""
        p = self.plan
        configs = write_replica_configs(self.out, self.out / "api-keys")
        self.start_mock()
        for i, (policy, cfg) in enumerate(zip(REPLICA_POLICIES, configs, strict=True)):
            self.start_gateway(cfg, PORT_GATEWAY_REPLICAS + i, ["pair", "flaky", "solo"], f"gateway-{policy}")

        def conversations(port: int, model: str) -> list[bytes]:
            return [self.request("gateway", "", port=port, model=model, extra={"messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Conversation {c}: say hello."}]})[1]
                for c in range(p["replica_conversations"])]

        def served() -> list[int]:  # by the fast and the slow server of `pair`
            return [http_json(f"http://{HOST}:{PORT_MOCK + 3 + i}/_stats")["served"] for i in (0, 1)]

        rate, dur = p["replica_rate"], p["replica_s"]
        log(f"replicas: `pair` on a 400/s and a 100/s server, open loop {rate}/s, {dur} s, each policy")
        runs: dict[str, list] = {policy: [] for policy in REPLICA_POLICIES}
        shares: dict[str, list] = {policy: [] for policy in REPLICA_POLICIES}
        for rnd in range(-1 if p["warmup"] else 0, p["rounds"]):
            for i, policy in enumerate(REPLICA_POLICIES):
                port = PORT_GATEWAY_REPLICAS + i
                before = served()
                run = await loadgen.open_loop(HOST, port, conversations(port, "pair"), rate,
                                              dur if rnd >= 0 else 0.5, timeout=30)
                after = served()
                if rnd >= 0:  # -1: the warm-up
                    runs[policy].append(run)
                    shares[policy].append([a - b for a, b in zip(after, before, strict=True)])
        balance = {}
        for policy in REPLICA_POLICIES:
            pooled = stats.summarize_requests([x for r in runs[policy] for x in r.results])
            fast, slow = (sum(s[i] for s in shares[policy]) for i in (0, 1))
            balance[policy] = {"pooled": pooled,
                               "rounds": [stats.summarize_requests(r.results, r.t_start, rate) for r in runs[policy]],
                               "slow_share": round(slow / max(1, fast + slow), 3)}
            lat = pooled["latency_ms"]
            log(f"  {policy}: p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, ok {pooled['success_rate']}, "
                f"slow server's share {balance[policy]['slow_share']}")

        log(f"replicas: the retry path, sequential {p['retry_s']} s per round: `solo` vs `flaky`")
        lo = PORT_GATEWAY_REPLICAS + REPLICA_POLICIES.index("least_outstanding")
        closed = f"http://{HOST}:{PORT_MOCK + 6}/_stats"
        seq: dict[str, list] = {"solo": [], "flaky": []}
        retried = 0
        for _ in range(p["rounds"]):
            for model in ("solo", "flaky"):
                before = http_json(closed)["closed"]
                seq[model] += await loadgen.sequential(HOST, lo, conversations(lo, model), p["retry_s"])
                if model == "flaky":
                    retried += http_json(closed)["closed"] - before
        solo, flaky = (stats.summarize_requests(seq[m]) for m in ("solo", "flaky"))
        # The retried requests are the flaky model's slowest: each paid for one refused try.
        slowest = sorted(r.latency for r in seq["flaky"] if r.error is None)[-retried:] if retried else []
        extra = round(1000 * sum(slowest) / len(slowest) - solo["latency_ms"]["p50"], 3) if slowest else None
        retry = {"solo": solo, "flaky": flaky, "retried": retried, "retried_extra_ms": extra,
                 "note": "flaky = the healthy server plus one that passes health checks but closes every "
                         "request's connection; its breaker takes it out after 3 failures in a row and a "
                         "health check lets it back after the 5 s cool-down, so a few requests per round "
                         "are retried. retried_extra_ms: their mean latency minus solo's p50."}
        log(f"  solo p50 {solo['latency_ms']['p50']} p99 {solo['latency_ms']['p99']} ms; flaky p50 "
            f"{flaky['latency_ms']['p50']} p99 {flaky['latency_ms']['p99']} max {flaky['latency_ms']['max']} ms, "
            f"ok {flaky['success_rate']}; {retried} retried, each about {extra} ms more")
        self.stop_all()
        return {"rate": rate, "duration_s": dur, "servers": "fast: 4 at a time, 10 ms each; slow: 4 at a time, "
                "40 ms each", "conversations": p["replica_conversations"], "balance": balance, "retry": retry}

    async def phase_usage(self) -> dict:
        """What the usage store costs a request: two gateways on mock A, the store off and on, fed
        the same open loop in turn (off, on; then on, off; ...), the same run, the same core."""
        p = self.plan
        configs = write_usage_configs(self.out, self.out / "api-keys")
        self.start_mock()
        gws = {mode: self.start_gateway(cfg, PORT_GATEWAY_USAGE + i, ["mock-a"], f"gateway-usage-{mode}")
               for i, (mode, cfg) in enumerate(zip(USAGE_MODES, configs, strict=True))}
        rate, dur, to = p["usage_rate"], p["usage_s"], p["open_timeout"]
        log(f"usage store: off vs on, open loop {rate} RPS, {dur} s, {p['usage_rounds']} rounds")
        runs: dict[str, list] = {mode: [] for mode in USAGE_MODES}
        cpu: dict[str, list] = {mode: [] for mode in USAGE_MODES}
        for rnd in range(-1 if p["warmup"] else 0, p["usage_rounds"]):
            order = USAGE_MODES if rnd % 2 == 0 else USAGE_MODES[::-1]
            for mode in order:
                port = PORT_GATEWAY_USAGE + USAGE_MODES.index(mode)
                req = self.request("gateway", "", port=port, model="mock-a")[1]
                c0 = cpu_seconds(gws[mode].pid)
                run = await loadgen.open_loop(HOST, port, req, rate, dur if rnd >= 0 else 1.0, grace=to)
                if rnd >= 0:  # -1: the warm-up
                    runs[mode].append(run)
                    cpu[mode].append((cpu_seconds(gws[mode].pid) - c0) / max(1, len(run.results)) * 1e6)
        self.stop_all()  # the store's last batch is written as its gateway stops
        out: dict = {"rate": rate, "duration_s": dur, "rounds": p["usage_rounds"]}
        for mode in USAGE_MODES:
            rounds = [stats.summarize_requests(r.results, r.t_start, rate) for r in runs[mode]]
            out[mode] = {"pooled": stats.summarize_requests([x for r in runs[mode] for x in r.results]),
                         "p50_ms_rounds": [r["latency_ms"]["p50"] for r in rounds],
                         "cpu_us_per_request": round(statistics.median(cpu[mode]), 1)}
        medians = {mode: statistics.median(out[mode]["p50_ms_rounds"]) for mode in USAGE_MODES}
        pairs = [on - off for on, off in zip(out["on"]["p50_ms_rounds"], out["off"]["p50_ms_rounds"], strict=True)]
        # Each round's pair ran back to back: the median of the pairs' differences is the least
        # swayed by a round the machine's other work disturbed.
        out["cost_p50_ms"] = round(statistics.median(pairs), 4)
        out["cost_p50_ms_per_round"] = [round(d, 4) for d in pairs]
        out["p50_ms_median"] = medians
        sent = sum(1 for r in runs["on"] for x in r.results if x.error is None)
        with sqlite3.connect(self.out / "usage.db") as db:
            out["rows_recorded"] = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        out["requests_answered_on"] = sent
        log(f"  p50 off {medians['off']} ms, on {medians['on']} ms (medians over rounds); the store costs "
            f"{out['cost_p50_ms']} ms (median of the rounds' on - off: {out['cost_p50_ms_per_round']}); "
            f"cpu/request off {out['off']['cpu_us_per_request']} µs, "
            f"on {out['on']['cpu_us_per_request']} µs; {out['rows_recorded']} rows for {sent} answered requests "
            "(the warm-up's too)")
        return out

    async def phase_real(self) -> dict:
        p = self.plan
        if not (VLLM_PYTHON.exists() and (TINY_MODEL / "config.json").exists()):
            return {"skipped": f"needs {VLLM_PYTHON} and {TINY_MODEL} (run `make vllm models`)"}
        log("real vLLM: starting the server (CPU build, tiny model) on the bench core(s)")
        t0 = time.monotonic()
        vllm = Proc("vllm", [str(Path(sys.executable).parent / "localai"), "run-model", "coder",
                             "--config", str(self.real_cfg)], self.out / "vllm.log", self.bench_cpus)
        self.procs.append(vllm)
        try:
            deadline = time.monotonic() + 600
            while True:
                if not vllm.alive():
                    raise RuntimeError(f"vLLM exited with {vllm.p.returncode}; see {self.out / 'vllm.log'}")
                if await asyncio.to_thread(_vllm_healthy):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("vLLM not ready in 600 s")
                await asyncio.sleep(0.5)
            startup = time.monotonic() - t0
            log(f"real vLLM: ready in {startup:.0f} s; starting the gateway in front of it")
            gw = self.start_gateway(self.real_cfg, PORT_GATEWAY_REAL, ["coder"], "gateway-real")
            extra = {"max_tokens": p["real_tokens"], "ignore_eos": True, "temperature": 0}
            points = []
            for users in p["real_conc"]:
                log(f"real vLLM: {users} concurrent streams")

                def run(side, users=users, dur=p["real_s"]):
                    port = PORT_VLLM if side == "direct" else PORT_GATEWAY_REAL
                    port, req = self.request(side, "", True, port, "coder", extra)
                    return _samples(loadgen.closed_loop(HOST, port, req, users, dur, 0.2, request_timeout=120))

                data = await self.interleaved(f"real{users}", run, gw, [vllm.pid],
                                              warm=lambda s, users=users: run(s, users, 0.0))
                point = self._streams_point(data, None)
                point["users"] = users
                dl = point["delta_ms"]
                noise = point["direct_ttft_p50_spread_ms"]
                point["ttft_within_noise"] = (dl["ttft"]["p50"]["median"] is not None and noise["range"] is not None
                                              and dl["ttft"]["p50"]["median"] <= noise["range"])
                points.append(point)
                log(f"  ttft direct p50 {point['direct']['pooled']['ttft_ms']['p50']} ms (spread "
                    f"{noise['range']}), Δttft p50 {dl['ttft']['p50']['median']} ms, Δitl p50 "
                    f"{dl['itl']['p50']['median']} ms")
            return {"startup_s": round(startup, 1), "max_tokens": p["real_tokens"], "points": points,
                    "model": str(TINY_MODEL), "pinning": "vLLM shares the bench core(s) with the load generator"}
        finally:
            self.stop_all()

    # -- whole run --
    async def run(self) -> dict:
        a, p = self.args, self.plan
        started = datetime.now(UTC)
        if self.bench_cpus:
            os.sched_setaffinity(0, self.bench_cpus)
        idle = wait_idle(0.7, a.wait_idle)
        self.pinning["nice"] = None
        if a.nice:
            error = raise_priority(a.nice)
            if error is None:
                self.pinning["nice"] = a.nice
                self.pinning["note"] += (f" Every benchmark process runs at nice {a.nice}, so that other "
                                         "processes on a shared machine take less of its cores' time.")
            else:
                self.pinning["note"] += f" Could not raise priority (nice {a.nice}: {error})."
        log(f"load average {idle['after_wait']} (waited {idle['waited_s']} s); pinning: {self.pinning}")
        synth_cfg, self.real_cfg = write_configs(self.out)
        rep = self.report
        rep["meta"] = {
            "started": started.isoformat(timespec="seconds"), "mode": "quick" if a.quick else "full",
            "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
            "plan": p, "pinning": self.pinning, "load": {"before": idle},
            "versions": versions(),
            "gateway": {"argv": self.gateway_argv(synth_cfg), "config": synth_cfg.read_text(),
                        "gateway_src": str(a.gateway_src) if a.gateway_src else None,
                        "logging": "production default: log_level info, one JSON line per request to stdout, "
                                   "redirected to a file (gateway.log in the results folder)",
                        "api_key": "one key configured; every request (direct too) carries it"},
            "mock": {"ttft_s": p["ttft"], "itl_s": p["itl"], "chunks": p["chunks"], "delay_s": p["delay"]},
        }
        loop_phases = [x for x in a.phases.split(",") if x]
        try:
            if set(loop_phases) & {"seq", "open", "streams", "held"}:
                mock = self.start_mock()
                gw = self.start_gateway(synth_cfg, PORT_GATEWAY, ["mock-a", "mock-b", "mock-c"], "gateway")
                rep["meta"]["gateway"]["startup_rss_mb"] = rss_status(gw.pid).get("VmRSS")
                g_cpu0 = cpu_seconds(gw.pid)
                if "seq" in loop_phases:
                    rep["sequential"] = await self.phase_sequential(gw, mock)
                    rep["meta"]["load"]["after_sequential"] = load_avg()
                if "open" in loop_phases:
                    rep["open_loop"] = await self.phase_open_loop(gw, mock)
                    rep["meta"]["load"]["after_open_loop"] = load_avg()
                if "streams" in loop_phases:
                    rep["streams"] = await self.phase_streams(gw, mock)
                    rep["meta"]["load"]["after_streams"] = load_avg()
                if "held" in loop_phases:
                    rep["held"] = await self.phase_held(gw, mock)
                rep["meta"]["gateway"]["total_cpu_s"] = round(cpu_seconds(gw.pid) - g_cpu0, 2)
                reset_peak_rss(gw.pid)
                rep["meta"]["gateway"]["final_rss_mb"] = rss_status(gw.pid).get("VmRSS")
                log_lines = (self.out / "gateway.log").read_bytes().count(b"\n")
                rep["meta"]["gateway"]["log_lines"] = log_lines
                self.stop_all()
            if "usage" in loop_phases:
                rep["usage"] = await self.phase_usage()
            if "replicas" in loop_phases:
                rep["replicas"] = await self.phase_replicas()
            if "scaleout" in loop_phases:
                rep["scaleout"] = await phase_scaleout(self, p)
            if "real" in loop_phases or (p["real"] and not a.phases_given):
                rep["meta"]["load"]["before_real"] = load_avg()
                rep["real"] = await self.phase_real()
            if "swap" in loop_phases:
                rep["meta"]["load"]["before_swap"] = load_avg()
                rep["swap"] = await phase_swap(self.out, p, [*self.localai_argv(), "up"], self.gateway_env(),
                                               real=not a.no_real and (p["real"] or a.phases_given))
        finally:
            self.stop_all()
        rep["meta"]["load"]["after"] = load_avg()
        finished = datetime.now(UTC)
        rep["meta"]["finished"] = finished.isoformat(timespec="seconds")
        rep["meta"]["duration_s"] = round((finished - started).total_seconds(), 1)
        from .report import evaluate_targets
        rep["targets"] = evaluate_targets(rep)
        return rep


async def _samples(coro):
    return stats.stream_samples(await coro, None)
