"""A real systemd in a container: mmdebstrap rootfs + systemd-nspawn.

The rootfs (Debian bookworm minbase + systemd, dbus, python3: the stand-in for
a bare Ubuntu 22.04 host) is built once and cached as a tarball under
~/.cache/localai/systemd-tier/, keyed by everything that goes into it. Each
test session unpacks it into a fresh folder and boots it.

How it boots (each point was needed on the CI machine, whose PID 1 is not
systemd and which has a hybrid cgroup v1/v2 layout):
- the launcher moves itself into a cgroup of its own under both
  /sys/fs/cgroup/unified and /sys/fs/cgroup/systemd before exec'ing nspawn;
- SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1, --register=no (no machined on the
  host), --keep-unit (no systemd on the host to ask for a scope);
- commands run inside with nsenter into every namespace of the container's
  PID 1, under a clean environment (the host's SSL_CERT_FILE etc. would point
  at paths that do not exist inside).
The container shares the host's network: its ports answer on 127.0.0.1.

teardown() always runs (the fixture's finally): poweroff, then SIGKILL of
nspawn if it lingers, unmount leftovers, remove the cgroup folders and the
rootfs folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import wait_until_sync

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ["systemd", "systemd-sysv", "dbus", "python3"]
ROOTFS_FORMAT = 1  # bump to rebuild every cached rootfs

CACHE = Path(os.environ.get("LOCALAI_TIER_CACHE", Path.home() / ".cache" / "localai" / "systemd-tier"))
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


def _mmdebstrap_version() -> str:
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def rootfs_key(include=tuple(INCLUDE)) -> str:
    text = "|".join([SUITE, VARIANT, ",".join(include), str(ROOTFS_FORMAT), _mmdebstrap_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_rootfs(log=print, include=tuple(INCLUDE)) -> Path:
    """The rootfs tarball, built with mmdebstrap on first use (about 35 s); `include`: its packages."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"rootfs-{SUITE}-{rootfs_key(tuple(include))}.tar"
    if tar.exists():
        return tar
    tmp = tar.with_suffix(".tmp.tar")
    log(f"building {tar.name} with mmdebstrap")
    cmd = ["mmdebstrap", f"--variant={VARIANT}", "--include=" + ",".join(include), SUITE, str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ContainerError(f"mmdebstrap failed:\n{res.stderr[-3000:]}")
    tmp.rename(tar)
    return tar


class Container:
    def __init__(self, name: str = "localai-tier", binds=(), binds_ro=(), log_path: Path | None = None,
                 workdir: Path | None = None):
        self.name = name
        self.binds = list(binds)
        self.binds_ro = list(binds_ro)
        self.log_path = log_path
        self.workdir = workdir
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.cgroup = f"{name}-{os.getpid()}"
        self.leader: int | None = None

    # --- lifecycle ----------------------------------------------------------
    def create(self, tarball: Path) -> Path:
        base = self.workdir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=base))
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(self.root)], check=True)
        return self.root

    def boot(self, timeout: float = 60, states=("running", "degraded")) -> None:
        assert self.root is not None
        argv = ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit",
                "--console=read-only", f"--machine={self.name}"]
        argv += [f"--bind={b}" for b in self.binds] + [f"--bind-ro={b}" for b in self.binds_ro]
        launcher = (
            "set -e\n"
            "for h in unified systemd; do\n"
            f"  mkdir -p /sys/fs/cgroup/$h/{self.cgroup}\n"
            f"  echo $$ > /sys/fs/cgroup/$h/{self.cgroup}/cgroup.procs\n"
            "done\n"
            'exec "$@"\n'
        )
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        self.proc = subprocess.Popen(["sh", "-c", launcher, "launcher", *argv], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.leader = wait_until_sync(self._find_leader, 30, "the container's init", interval=0.2)
        wait_until_sync(lambda: self.run(["systemctl", "is-system-running"], check=False).stdout.strip() in states,
                        timeout, "systemd inside the container to finish booting", interval=0.5)

    def reboot(self, timeout: float = 60) -> None:
        """Power the container off and boot the same root again (what a host reboot does to units)."""
        assert self.proc is not None
        self.run(["systemctl", "poweroff", "--no-block"], check=False)
        self.proc.wait(timeout=90)
        self._remove_cgroups()
        self.leader = None
        # Boot jobs include the model units, which take minutes to turn ready:
        # "starting" is enough here; the caller waits for the units itself.
        self.boot(timeout, states=("starting", "running", "degraded"))

    def _find_leader(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited early (rc={self.proc and self.proc.returncode}); "
                                 f"see {self.log_path}")
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                comm = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "systemd":
                return int(child)
        return None

    def teardown(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.leader:
                    subprocess.run(self._nsenter(["systemctl", "poweroff", "--no-block"]),
                                   capture_output=True, timeout=20)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=30)
        finally:
            self._remove_cgroups()
            if self.root is not None and self.root.exists():
                self._unmount_below(self.root)
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def _remove_cgroups(self) -> None:
        for h in ("unified", "systemd"):
            top = Path(f"/sys/fs/cgroup/{h}/{self.cgroup}")
            if not top.exists():
                continue
            # Kill leftovers, then remove the tree bottom-up (cgroup dirs only rmdir).
            for procs in top.rglob("cgroup.procs"):
                try:
                    for pid in procs.read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top]:
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)

    @staticmethod
    def _unmount_below(root: Path) -> None:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mp in sorted((m for m in mounts if m.startswith(str(root) + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)

    # --- running things inside ---------------------------------------------
    def _nsenter(self, argv: list[str], env: dict | None = None) -> list[str]:
        base = {"PATH": INNER_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        base.update(env or {})
        return ["env", "-i", *[f"{k}={v}" for k, v in base.items()],
                "nsenter", "-t", str(self.leader), "-a", "-w", *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 600, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run(self._nsenter(argv, env), capture_output=True, text=True, timeout=timeout,
                             input=input)
        if check and res.returncode != 0:
            raise ContainerError(f"{argv} exited {res.returncode}\nstdout:\n{res.stdout[-4000:]}\n"
                                 f"stderr:\n{res.stderr[-4000:]}")
        return res

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["bash", "-c", script], **kw)

    def popen(self, argv: list[str], stdout, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(self._nsenter(argv, env), stdout=stdout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

    def path(self, inner: str) -> Path:
        assert self.root is not None
        return self.root / inner.lstrip("/")

    # --- keeping a container across processes (devbox.py) -------------------
    def state(self) -> dict:
        return {"name": self.name, "root": str(self.root), "pid": self.proc.pid if self.proc else None,
                "leader": self.leader, "cgroup": self.cgroup}

    @classmethod
    def from_state(cls, state: dict) -> Container:
        c = cls(state["name"])
        c.root = Path(state["root"])
        c.leader = state["leader"]
        c.cgroup = state["cgroup"]
        c._pid = state["pid"]
        return c

    def teardown_detached(self) -> None:
        """teardown() for a container booted by another process."""
        pid = getattr(self, "_pid", None)
        try:
            if self.leader and Path(f"/proc/{self.leader}").exists():
                subprocess.run(self._nsenter(["systemctl", "poweroff", "--no-block"]), capture_output=True,
                               timeout=20)
                with contextlib.suppress(AssertionError):  # past a minute, killed
                    wait_until_sync(lambda: not (pid and Path(f"/proc/{pid}").exists()), 60, "the container gone",
                                    interval=0.3)
                if pid and Path(f"/proc/{pid}").exists():
                    os.killpg(pid, signal.SIGKILL)
        finally:
            self._remove_cgroups()
            if self.root is not None and self.root.exists():
                self._unmount_below(self.root)
                shutil.rmtree(self.root, ignore_errors=True)
