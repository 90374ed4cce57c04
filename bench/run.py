"""The gateway benchmark: one command, numbers out.

    .venv/bin/python -m bench            # full run (< 15 min): JSON + chart + table
    .venv/bin/python -m bench --quick    # < 2 min, for iterating

What runs (see bench/README.md for the method and its limits):

  mock upstream   bench/mock_upstream.py, its own process, profiles A/B/C on 3 ports
  gateway         `localai gateway --config <out>/gateway.yaml`, production settings
                  (info logging, JSON lines to a file, an API key), external model
                  entries pointing at the mock
  load generator  bench/loadgen.py, in this process

Pinned, where the machine has 2+ cores: the gateway alone on the last core,
mock + load generator (and vLLM in real mode) on the others.  Direct and
gateway runs alternate within each point (D G D G ...), warm-up discarded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

from . import loadgen, stats
from .loadgen import build_request

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PORT_GATEWAY = 18500
PORT_GATEWAY_REAL = 18501
PORT_MOCK = 18510          # A; B = +1, C = +2
PORT_VLLM = 18520
API_KEY = "sk-bench-0123456789abcdef"
LOCALAI_HOME = Path(os.environ.get("LOCALAI_HOME", Path.home() / ".cache" / "localai"))
VLLM_PYTHON = Path(os.environ.get("LOCALAI_VLLM_PYTHON", LOCALAI_HOME / "vllm-venv" / "bin" / "python"))
TINY_MODEL = LOCALAI_HOME / "models" / "tiny-coder"
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL = dict(
    rounds=3, warmup=True,
    seq_s=3.0,
    open_rates=[100, 500, 1000, 2000, 3000, 5000], open_s=4.0, open_warm_s=1.0, open_timeout=1.0,
    stream_conc=[1, 16, 64, 256, 1000], stream_s=5.0, stream_stagger=1.0,
    held_users=1000, held_s=3.0,
    real=True, real_conc=[1, 4, 16], real_s=6.0, real_tokens=32,
)
QUICK = dict(
    rounds=1, warmup=True,
    seq_s=1.0,
    open_rates=[1000, 3000], open_s=2.0, open_warm_s=0.5, open_timeout=1.0,
    stream_conc=[16, 1000], stream_s=0.0, stream_stagger=1.0,
    held_users=500, held_s=0.0,
    real=False, real_conc=[1, 4], real_s=4.0, real_tokens=16,
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------


class Proc:
    """A child we started (own process group, so its children go with it)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cpus: set[int] | None,
                 env: dict | None = None, cwd: Path = REPO):
        self.name = name
        self.log_file = open(log_path, "ab")
        full_env = {**os.environ, **(env or {})}

        def pin():
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.p = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=cwd,
                                  env=full_env, start_new_session=True, preexec_fn=pin)
        self.pid = self.p.pid
        # Its own session is its own autogroup (the kernel's default): the CPU is shared
        # between autogroups at the autogroup's nice, whatever the process's. Give it ours.
        try:
            Path(f"/proc/{self.pid}/autogroup").write_text(f"{os.getpriority(os.PRIO_PROCESS, 0)}\n")
        except FileNotFoundError:
            pass  # a kernel without autogroup: the nice it inherited is what counts

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait()
        self.log_file.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def raise_priority(nice: int) -> str | None:
    """Run this process, and so every process it starts afterwards, at *nice*; why not, if it can't."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        return exc.strerror
    return None


def runq_wait(pid: int) -> float:
    """Seconds this process (main thread) spent runnable but waiting for a CPU: time
    taken by other processes on its core. The number that says a run was disturbed."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024  # MiB
    return out


def reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_port(port: int, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}; see its log")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout:g} s")


def http_json(url: str, method: str = "GET", timeout: float = 5.0) -> dict:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def wait_models_ready(port: int, names: list[str], timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}; see its log")
        try:
            models = http_json(f"http://{HOST}:{port}/health")["models"]
            if all(models.get(n, {}).get("state") == "ready" for n in names):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gateway on {port}: models {names} not ready after {timeout:g} s")


def wait_idle(threshold: float, max_wait: float) -> dict:
    """Wait (up to max_wait) for the 1-min load average to drop below threshold."""
    t0 = time.monotonic()
    first = load_avg()
    while os.getloadavg()[0] >= threshold and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    return {"threshold": threshold, "at_start": first, "after_wait": load_avg(),
            "waited_s": round(time.monotonic() - t0, 1), "idle": os.getloadavg()[0] < threshold}


# --- configuration ---------------------------------------------------------------------


def write_configs(out: Path) -> tuple[Path, Path]:
    keys = out / "api-keys"
    keys.write_text(API_KEY + "\n")
    keys.chmod(0o600)
    common = (f"  host: {HOST}\n  api_key_file: {keys}\n  max_queue: 20000\n  queue_timeout: 60\n"
              f"  webui: false\n  # log_level: info (the default, as in production)\n")
    synth = out / "gateway.yaml"
    synth.write_text(
        "# Gateway under test: production settings, external models pointing at the mock upstream.\n"
        f"gateway:\n  port: {PORT_GATEWAY}\n{common}models:\n" + "".join(
            f"  - name: mock-{p.lower()}\n"
            + ("    default: true\n" if p == "A" else "")
            + f"    url: http://{HOST}:{PORT_MOCK + i}/v1\n    served_model: mock\n    max_concurrency: 4096\n"
            for i, p in enumerate("ABC")))
    real = out / "gateway-real.yaml"
    real.write_text(
        "# Real-backend mode: one vLLM (CPU) server on the generated tiny model, started with\n"
        "# `localai run-model coder`, and the gateway in front of it (as under systemd).\n"
        f"vllm:\n  python: {VLLM_PYTHON}\n  env:\n    VLLM_CPU_KVCACHE_SPACE: \"1\"\n"
        f"    VLLM_CPU_OMP_THREADS_BIND: nobind\n"
        f"gateway:\n  port: {PORT_GATEWAY_REAL}\n{common}"
        f"models:\n  - name: coder\n    model: {TINY_MODEL}\n    port: {PORT_VLLM}\n"
        f"    max_model_len: 2048\n    max_num_seqs: 16\n    dtype: float32\n    extra_args: [--enforce-eager]\n")
    return synth, real


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "kernel": platform.release()}
    for dist in ("localai", "aiohttp", "uvloop", "orjson", "prometheus-client", "python-json-logger",
                 "multidict", "yarl"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                          if line.startswith("model name"))
    except (OSError, StopIteration):
        out["cpu"] = platform.processor()
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip()
        out["gateway_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "gateway"], cwd=REPO,
                                                   capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    vllm_site = list(VLLM_PYTHON.parent.parent.glob("lib/python*/site-packages/vllm*.dist-info"))
    out["vllm"] = vllm_site[0].name.removesuffix(".dist-info").split("-", 1)[1] if vllm_site else None
    return out


# --- measurement -----------------------------------------------------------------------


class Bench:
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
                "--delay", str(p["delay"])]
        proc = Proc("mock", argv, self.out / "mock.log", self.bench_cpus)
        self.procs.append(proc)
        for i in range(3):
            wait_port(PORT_MOCK + i, 10, proc)
        return proc

    def gateway_argv(self, config: Path) -> list[str]:
        if self.args.gateway_src:
            return [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config)]
        return [str(Path(sys.executable).parent / "localai"), "gateway", "--config", str(config)]

    def start_gateway(self, config: Path, port: int, models: list[str], name: str) -> Proc:
        env = {"PYTHONPATH": str(self.args.gateway_src)} if self.args.gateway_src else None
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

    # -- phases --
    async def interleaved(self, name: str, make_run, gw: Proc, upstream_pids: list[int],
                          warm=None) -> dict:
        """D G D G ... for `rounds` rounds after one discarded warm-up pair."""
        rounds = {"direct": [], "gateway": []}
        resources = {"direct": [], "gateway": []}
        if self.plan["warmup"]:
            for side in ("direct", "gateway"):
                await (warm or make_run)(side)
        for rnd in range(self.plan["rounds"]):
            for side in ("direct", "gateway"):
                result, res = await self.measured(side, gw, make_run(side), upstream_pids)
                rounds[side].append(result)
                resources[side].append(res)
        return {"rounds": rounds, "resources": resources}

    async def phase_sequential(self, gw: Proc, mock: Proc) -> dict:
        log("profile A, sequential")
        dur = self.plan["seq_s"]

        def run(side, d=dur):
            port, req = self.request(side, "A")
            return loadgen.sequential(HOST, port, req, d)

        data = await self.interleaved("sequential", run, gw, [mock.pid], warm=lambda s: run(s, 0.5))
        return self._requests_point(data, with_start=False)

    def _requests_point(self, data: dict, with_start: bool, offered: float | None = None) -> dict:
        out = {}
        for side in ("direct", "gateway"):
            runs = data["rounds"][side]
            if with_start:
                per = [stats.summarize_requests(r.results, r.t_start, offered) for r in runs]
                for s, r in zip(per, runs):
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
        per_req = [res["gateway_cpu_s"] / r["ok"] for res, r in zip(data["resources"]["gateway"],
                                                                    out["gateway"]["rounds"]) if r["ok"]]
        # CPU per request: what the gateway's work costs, the number other load disturbs least;
        # 1e6 / it is the rate one core could carry.
        out["gateway_resources"]["cpu_us_per_request"] = round(1e6 * median(per_req), 1) if per_req else None
        out["bench_core_util_max"] = max(r["bench_core_util"] for s in ("direct", "gateway")
                                         for r in data["resources"][s])
        return out

    async def phase_open_loop(self, gw: Proc, mock: Proc) -> dict:
        points = []
        stopped = None
        for rate in self.plan["open_rates"]:
            log(f"profile A, open loop {rate} RPS")
            dur, to = self.plan["open_s"], self.plan["open_timeout"]

            def run(side, d=dur, rate=rate):
                port, req = self.request(side, "A")
                return loadgen.open_loop(HOST, port, req, rate, d, timeout=to)

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

            async def run(side, users=users, dur=dur, record=True):
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
                f"p99 {dl['itl']['p99']['median']}, Δevent delay p50 {dl.get('event_delay', {}).get('p50', {}).get('median')}"
                f" events in/out {g['events_in']}/{g['events_out']}, rss {point['gateway_resources']['peak_rss_mb_max']} MB"
                f" cpu {point['gateway_resources']['cpu_util_max']}")
        return points

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
        per_ev = [res["gateway_cpu_s"] / r["events_received"] for res, r in zip(data["resources"]["gateway"],
                                                                                out["gateway"]["rounds"])
                  if r["events_received"]]
        out["gateway_resources"]["cpu_us_per_event"] = round(1e6 * median(per_ev), 2) if per_ev else None
        out["bench_core_util_max"] = max(r["bench_core_util"] for s in ("direct", "gateway")
                                         for r in data["resources"][s])
        return out

    async def phase_held(self, gw: Proc, mock: Proc) -> dict:
        users = self.plan["held_users"]
        log(f"profile C, {users} held requests ({self.plan['delay']} s each)")

        def run(side, users=users, dur=self.plan["held_s"]):
            port, req = self.request(side, "C")
            return loadgen.closed_loop(HOST, port, req, users, dur, 0.5, timeout=30)

        data = await self.interleaved("held", run, gw, [mock.pid], warm=lambda s: run(s, 64, 0.0))
        point = self._requests_point(data, with_start=False)
        point["users"] = users
        return point

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
                try:
                    with urllib.request.urlopen(f"http://{HOST}:{PORT_VLLM}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
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
                    return _samples(loadgen.closed_loop(HOST, port, req, users, dur, 0.2, timeout=120))

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
        started = datetime.now(timezone.utc)
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
                log_lines = sum(1 for _ in open(self.out / "gateway.log", "rb"))
                rep["meta"]["gateway"]["log_lines"] = log_lines
                self.stop_all()
            if "real" in loop_phases or (p["real"] and not a.phases_given):
                rep["meta"]["load"]["before_real"] = load_avg()
                rep["real"] = await self.phase_real()
        finally:
            self.stop_all()
        rep["meta"]["load"]["after"] = load_avg()
        finished = datetime.now(timezone.utc)
        rep["meta"]["finished"] = finished.isoformat(timespec="seconds")
        rep["meta"]["duration_s"] = round((finished - started).total_seconds(), 1)
        from .report import evaluate_targets
        rep["targets"] = evaluate_targets(rep)
        return rep


def _resource_summary(res: list[dict]) -> dict:
    if not res:
        return {}
    return {"cpu_s_total": round(sum(r["gateway_cpu_s"] for r in res), 3),
            "cpu_util_max": max(r["gateway_cpu_util"] for r in res),
            "runq_wait_frac_max": max(r.get("gateway_runq_wait_frac", 0) for r in res),
            "peak_rss_mb_max": max(r["gateway_peak_rss_mb"] for r in res)}


async def _samples(coro):
    return stats.stream_samples(await coro, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 2 min): fewer points, 1 round, no vLLM")
    ap.add_argument("--real", action="store_true", help="with --quick: include the real vLLM mode")
    ap.add_argument("--no-real", action="store_true", help="skip the real vLLM mode")
    ap.add_argument("--phases", default="", help="comma list of seq,open,streams,held,real (default: all)")
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
        args.phases = "seq,open,streams,held" + (",real" if plan["real"] else "")
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
