"""The processes the benchmark starts, and what /proc says about them (CPU, run-queue
wait, memory) and about the machine (load)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.harness import descendants

from .configs import API_KEY, HOST, REPO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


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
