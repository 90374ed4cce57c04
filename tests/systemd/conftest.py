"""The systemd tier: a real systemd in a container, deployed with install.sh.

One container per test session (module scope): booted from the cached
mmdebstrap rootfs, staged with a copy of this work tree, deployed once; the
tests then look at it in any order (each puts back what it changes). It is
always torn down (also on failure, Ctrl-C or SIGTERM), after its journal is
saved to test-output/systemd/.

Needs root, systemd-nspawn and mmdebstrap (installed with apt-get when
missing), and ports 18480-18482 free on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import container as ct  # noqa: E402
import stage  # noqa: E402

from tests.harness import wait_until_sync  # noqa: E402

OUT = stage.REPO / "test-output" / "systemd"
TIMINGS: dict[str, float] = {}


def _ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"))
               if shutil.which(tool) is None]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    res = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"the systemd tier needs {', '.join(missing)} and apt-get could not install them:\n"
                    f"{res.stderr[-2000:]}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _live_roots() -> set[str]:
    """Root folders of running processes (a booted container's init has its rootfs as /)."""
    roots = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                roots.add(os.readlink(proc / "root"))
            except OSError:
                pass
    return roots


def _reap_stale() -> None:
    """Remove what a killed earlier run left: empty tier cgroups, tier rootfs folders no process runs in.

    Called with the tier lock held, so no other tier run of this machine is live.
    Never kills anything: a cgroup that still has processes stays.
    """
    for h in ("unified", "systemd"):
        base = Path(f"/sys/fs/cgroup/{h}")
        for top in base.glob("localai-tier-*"):
            if any((p / "cgroup.procs").read_text().strip() for p in [top, *top.rglob("*")]
                   if p.is_dir() and (p / "cgroup.procs").exists()):
                continue  # still has processes: leave it
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                d.rmdir()
            top.rmdir()
    live = _live_roots()
    for d in Path("/var/tmp").glob("localai-tier-*"):
        if str(d) not in live:
            shutil.rmtree(d, ignore_errors=True)


def _take_lock(timeout: float = 2400):
    """One tier run per machine (they share ports and cgroup names): wait for the other to finish."""
    ct.CACHE.mkdir(parents=True, exist_ok=True)
    fh = open(ct.CACHE / "tier.lock", "a+")
    told = False

    def taken() -> bool:
        nonlocal told
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not told:
                fh.seek(0)
                print(f"\nanother systemd tier run (pid {fh.read().strip() or '?'}) holds {fh.name}; waiting",
                      file=sys.stderr)
                told = True
            return False
        return True

    wait_until_sync(taken, timeout, f"another systemd tier run releasing {fh.name}", interval=2)
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


class Box:
    """The deployed container, as the tests see it."""

    def __init__(self, c: ct.Container):
        self.c = c

    def sh(self, script: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.c.sh(script, check=check, timeout=timeout)

    def install(self, *extra: str, log_name: str) -> tuple[subprocess.CompletedProcess, dict]:
        argv = " ".join([*stage.INSTALL_ARGV, *extra])
        started = time.monotonic()
        res = self.c.sh(f"cd {stage.SRC_IN} && {argv}", check=False, timeout=3000)
        TIMINGS[log_name] = time.monotonic() - started
        (OUT / f"{log_name}.log").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
        return res, recap(res.stdout)

    def api_key(self) -> str:
        return self.c.path("/etc/localai/api-keys").read_text().split()[0]

    def prop(self, unit: str, name: str) -> str:
        return self.sh(f"systemctl show -p {name} --value {unit}").stdout.strip()

    def wait(self, predicate, timeout: float, what: str, interval: float = 1.0):
        """wait_until_sync, with the localai units' states in the error."""
        def units() -> str:
            return "\n" + self.sh("systemctl list-units 'localai*' --all --no-pager", check=False).stdout

        return wait_until_sync(predicate, timeout, what, interval=interval, detail=units)


def save_journals(c: ct.Container, suffix: str = "") -> None:
    """The container's journal and its localai namespace, to OUT/journal{-localai}{suffix}.txt."""
    try:
        if c.leader:
            for flags, name in ((["-b"], "journal"), (["--namespace=localai"], "journal-localai")):
                j = c.run(["journalctl", *flags, "--no-pager", "-o", "short-precise"], check=False, timeout=60)
                (OUT / f"{name}{suffix}.txt").write_text(j.stdout)
    except Exception:  # noqa: BLE001 - the journal is a courtesy; teardown is not
        pass


def recap(stdout: str) -> dict:
    """PLAY RECAP counters of the last play (ok, changed, failed, ...)."""
    found = re.findall(r"^localhost\s+:\s+(.*)$", stdout, re.M)
    if not found:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found[-1])}


@pytest.fixture(scope="session")
def tier_lock():
    """This session's hold on the machine's tier lock (every container fixture takes it)."""
    if os.geteuid() != 0:
        pytest.fail("the systemd tier boots a container: run it as root")
    if not Path("/sys/fs/cgroup/unified").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.fail("the systemd tier needs cgroup v2 (/sys/fs/cgroup/unified or a unified /sys/fs/cgroup)")
    lock = _take_lock()
    try:
        _ensure_tools()
        _reap_stale()
        yield
    finally:
        lock.close()


@contextlib.contextmanager
def torn_down_on_sigterm() -> Iterator[None]:
    """CI's timeout sends SIGTERM: made an exception, so the fixture's finally still tears
    its containers down (pytest would otherwise die with them booted)."""
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)


def deploy_failed(what: str, res: subprocess.CompletedProcess, counts: object, log: Path) -> NoReturn:
    """Stop the tier on a failed deploy, with the last lines of its log (where the reason is)."""
    tail = "\n".join(res.stdout.splitlines()[-60:])
    pytest.fail(f"{what} failed (rc={res.returncode}, {counts}); log in {log}:\n{tail}\n{res.stderr[-2000:]}")


@pytest.fixture(scope="session")
def box(tier_lock):
    busy = [p for p in [stage.GATEWAY_PORT, *stage.MODEL_PORTS.values()] if not _port_free(p)]
    if busy:
        pytest.fail(f"ports {busy} are taken on 127.0.0.1 (a devbox still up? "
                    f"python tests/systemd/devbox.py down)")
    OUT.mkdir(parents=True, exist_ok=True)
    rw, ro = stage.binds()
    c = ct.Container("localai-tier", binds=rw, binds_ro=ro, log_path=OUT / "console.log", workdir=Path("/var/tmp"))

    started = time.monotonic()
    with torn_down_on_sigterm():
        try:
            t0 = time.monotonic()
            tarball = ct.cached_rootfs()
            TIMINGS["rootfs"] = time.monotonic() - t0
            c.create(tarball)
            stage.stage(c.root)
            t0 = time.monotonic()
            c.boot()
            TIMINGS["boot"] = time.monotonic() - t0
            b = Box(c)
            res, counts = b.install(log_name="install-1")
            if res.returncode != 0 or counts.get("failed", 1) != 0:
                deploy_failed("install.sh", res, counts, OUT / "install-1.log")
            b.first_recap = counts
            yield b
        finally:
            save_journals(c)
            c.teardown()
            TIMINGS["tier"] = time.monotonic() - started
            (OUT / "timings.txt").write_text("".join(f"{k}: {v:.1f} s\n" for k, v in TIMINGS.items()))
