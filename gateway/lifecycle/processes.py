"""The vLLM servers `localai up` runs as its children, for hosts without systemd (laptops,
containers, CI): started, restarted after a crash with backoff, stopped with their process groups."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import signal
import time

from gateway.config.schema import Config, ManagedModel
from gateway.plan.placement import Placement, ServerPlan, server_plan
from gateway.routing.backends import Backend, Registry
from gateway.routing.states import State

log = logging.getLogger("localai.up")

# A server that stayed up this long before crashing starts its backoff afresh.
STABLE_AFTER_S = 60.0
MAX_BACKOFF_S = 60.0
STOP_GRACE_S = 20.0
# vLLM's lines look like "(APIServer pid=1) INFO 11-23 01:26:02 [file.py:335] message".
_LEVEL_RE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


def _prepare_child() -> None:
    # Own process group: vLLM spawns engine processes, and stopping must reach them all.
    # Not its own session: the kernel's autogroup (one per session) would then schedule it
    # apart from `localai up`, and `nice localai up` would not reach it. (uvloop's
    # subprocess_exec has no process_group argument, hence setpgid here.)
    os.setpgid(0, 0)
    # PR_SET_PDEATHSIG: if `localai up` is killed outright, the kernel stops its children too.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ModelProcess:
    """One vLLM server: started, watched, restarted with backoff, stopped with its whole group."""

    def __init__(self, plan: ServerPlan, backend: Backend):
        self.plan = plan
        self.backend = backend
        self.proc: asyncio.subprocess.Process | None = None
        self.last_line = ""

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            started = time.monotonic()
            why = await self._serve_once(stop)
            if why is None:
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = 1.0
            self.backend.server_state(self.plan.url, State.FAILED, f"{why}; restarting in {backoff:g} s")
            log.error("model server %s: %s; restarting in %g s", self.plan.unit, why, backoff,
                      extra={"model": self.plan.name})
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _serve_once(self, stop: asyncio.Event) -> str | None:
        """Start the server and wait: None once stopped, else why it ended."""
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.plan.argv, env={**os.environ, **self.plan.env},
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_prepare_child,
            )
        except OSError as exc:  # e.g. the vLLM venv was removed under us
            return f"cannot start {self.plan.argv[0]}: {exc.strerror or exc}"
        log.info("started model server %s (pid %d)", self.plan.unit, self.proc.pid,
                 extra={"model": self.plan.name, "pid": self.proc.pid})
        self.backend.server_state(self.plan.url, State.LOADING, f"starting vLLM (pid {self.proc.pid})")
        pump = asyncio.create_task(self._pump(self.proc))
        exited = asyncio.create_task(self.proc.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if stop.is_set():
            await self._terminate(exited)
            await pump
            return None
        _kill_group(self.proc.pid, signal.SIGKILL)  # leftovers of a crashed server
        await pump
        return f"vLLM exited with code {exited.result()}" + (f" ({self.last_line})" if self.last_line else "")

    def report_crash(self, task: asyncio.Task) -> None:
        """A bug in supervising must not leave the model "loading" forever, and say nothing."""
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        self.backend.server_state(self.plan.url, State.FAILED, f"not supervised any more: {type(exc).__name__}: {exc}")
        log.error("supervising model server %s failed", self.plan.unit, exc_info=exc,
                  extra={"model": self.plan.name})

    async def _terminate(self, exited: asyncio.Task) -> None:
        assert self.proc is not None
        _kill_group(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE_S)
        except TimeoutError:
            log.warning("model server %s ignored SIGTERM for %g s; killing it", self.plan.unit,
                        STOP_GRACE_S, extra={"model": self.plan.name})
        _kill_group(self.proc.pid, signal.SIGKILL)
        await exited
        log.info("stopped model server %s", self.plan.unit, extra={"model": self.plan.name})

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """Re-emit the server's output as JSON log lines tagged with its model."""
        assert proc.stdout is not None
        logger = logging.getLogger("vllm")
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            found = _LEVEL_RE.search(line, 0, 48)
            level: int = logging.getLevelNamesMapping()[found.group(1)] if found else logging.INFO
            if level >= logging.ERROR or "Error" in line:
                self.last_line = line[-300:]
            logger.log(level, line, extra={"model": self.plan.name, "backend": self.plan.url,
                                           "pid": proc.pid})


class Supervisor:
    """The model servers placed on this machine, each a child: started at `localai up` (load:
    always) or when the model lifecycle asks for it (load: on_demand), stopped alone or all
    together. A model's replicas here (and nodes of one spanning hosts) start and stop together."""

    def __init__(self, cfg: Config, registry: Registry, here: list[Placement]):
        self._procs: dict[str, list[ModelProcess]] = {}
        for p in here:
            model = cfg.model(p.model)
            assert isinstance(model, ManagedModel)
            self._procs.setdefault(p.model, []).append(
                ModelProcess(server_plan(model, cfg.vllm, p), registry.backends[p.model]))
        self._running: dict[str, list[tuple[asyncio.Event, asyncio.Task]]] = {}
        self._closing = False

    @property
    def models(self) -> list[str]:
        """The models with a server on this machine."""
        return list(self._procs)

    def start(self, name: str) -> None:
        """Start this model's servers here (and restart them on crashes) unless they run already."""
        if self._closing:
            raise RuntimeError("localai up is stopping")
        if name in self._running and not all(task.done() for _, task in self._running[name]):
            return
        self._running[name] = []
        for proc in self._procs.get(name, []):
            stop = asyncio.Event()
            task = asyncio.create_task(proc.run(stop), name=f"model-{proc.plan.unit}")
            task.add_done_callback(proc.report_crash)
            self._running[name].append((stop, task))

    async def stop(self, name: str) -> None:
        """Stop this model's servers, their whole process groups, and wait until they are gone."""
        running = self._running.pop(name, [])
        for stop, _ in running:
            stop.set()
        # A crashed one was reported already.
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)

    async def stop_all(self) -> None:
        self._closing = True  # a request arriving now must not start a server nobody stops
        log.info("stopping: %d model servers", sum(len(r) for r in self._running.values()))
        await asyncio.gather(*(self.stop(name) for name in list(self._running)))
