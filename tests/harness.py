"""The one test harness every tier uses: ports and configs, waiting, the stand-in vLLM
interpreter, and starting a gateway.

* ``free_port()``, ``make_config(models, **gateway)``: a port no other test of this process
  got, and a parsed config for a gateway on one.
* ``wait_until(predicate, timeout, what)`` (``await`` it) and ``wait_until_sync`` (the same
  for synchronous tests and threads): the one way a test waits for a state it can only
  observe. Both return the predicate's first truthy value and fail naming *what*.
* ``standin_python(where, *fake_args)``: an interpreter for ``vllm.python`` whose "vLLM" is
  the fake backend run as a program (``tests/fakebackend.py``'s ``main``, knobs ``--fake-*``).
* A gateway in this event loop: ``serving(cfg)`` (``localai gateway``: create_app + serve) and
  ``running_up(cfg)`` (``localai up``: the gateway and its supervised model servers);
  ``InThread`` runs either in an event loop of its own for synchronous (browser) tests.
* A gateway as a process: ``GatewayProcess`` (``python -m gateway.cli up|gateway …``, optionally
  niced or socket-activated) and ``localai(*args, config=…)`` for a CLI command run to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gateway.app.factory import create_app
from gateway.app.server import serve
from gateway.app.up import run_up
from gateway.config.schema import Config
from gateway.lifecycle.units import SystemdUnits
from gateway.plan.validate import parse_config

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"

# --- ports and configs --------------------------------------------------------------

_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port never handed out before in this test process.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is
    closed, and a config naming one port twice is (rightly) refused.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port


def make_config(models: list[dict], **gateway) -> Config:
    # usage_db, batch_dir None: a test that wants the usage store or the batch API names its own.
    data = {"gateway": {"port": free_port(), "health_interval": 0.05, "webui": False, "usage_db": None,
                        "batch_dir": None, **gateway},
            "models": models}
    return parse_config(yaml.safe_dump(data), "test.yaml")


# --- waiting --------------------------------------------------------------------------


class _Deadline:
    """When a wait gives up, and what it then says."""

    def __init__(self, timeout: float, what: str, detail: Callable[[], str] | None) -> None:
        self.timeout, self.what, self.detail = timeout, what, detail
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise AssertionError(f"{self.what} not met within {self.timeout:g} s"
                                 + (self.detail() if self.detail else ""))


# ASYNC109: the deadline is what a poll is for, and its error names what never came.
async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", *,  # noqa: ASYNC109
                     interval: float = 0.02, ignoring: tuple[type[BaseException], ...] = (),
                     detail: Callable[[], str] | None = None) -> Any:
    """Poll *predicate* (sync or async) until it is truthy, and return that value; for states we
    can only observe, not await. An exception of a type in *ignoring* counts as "not yet"
    (e.g. a server not listening yet); *detail()* is added to the error past the deadline."""
    deadline = _Deadline(timeout, what, detail)
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignoring:
            value = None
        if value:
            return value
        deadline.check()
        await asyncio.sleep(interval)


def wait_until_sync(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", *,
                    interval: float = 0.05, ignoring: tuple[type[BaseException], ...] = (),
                    detail: Callable[[], str] | None = None) -> Any:
    """wait_until for synchronous tests and threads (no event loop of theirs to poll from)."""
    deadline = _Deadline(timeout, what, detail)
    while True:
        try:
            value = predicate()
        except ignoring:
            value = None
        if value:
            return value
        deadline.check()
        time.sleep(interval)


# --- the stand-in vLLM ----------------------------------------------------------------


def standin_python(where: Path, *fake_args: str) -> Path:
    """An interpreter path for vllm.python whose "vLLM" is the fake backend on the planned port.

    Every server it starts gets *fake_args* (``--fake-*`` knobs of tests/fakebackend.py's main)
    after its own command line; a model's extra_args can add more, per model."""
    script = where / "python"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                      f"from tests.fakebackend import main\nmain(sys.argv[1:], {list(fake_args)!r})\n")
    script.chmod(0o755)
    return script


# --- a gateway in this event loop ---------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(cfg: Config, api_keys: list[str] | None = None,
                  units: SystemdUnits | None = None) -> AsyncIterator[web.Application]:
    """`localai gateway` on cfg in this event loop; yields its app. api_keys None: the config's key
    file (or none); units: on_demand models come and go as these systemd units (`--units`)."""
    app = create_app(cfg, api_keys=None if api_keys is None else [k.encode() for k in api_keys], units=units)
    async with serve(app, cfg.gateway.host, cfg.gateway.port):
        yield app


@contextlib.asynccontextmanager
async def running_up(cfg: Config, api_keys: list[str] | None = None,
                     stop_within: float = 30) -> AsyncIterator[web.Application]:
    """`localai up` on cfg in this event loop (the gateway, and the model servers it supervises);
    yields its app. Leaving stops it, and with it every server it started."""
    app = create_app(cfg, api_keys=None if api_keys is None else [k.encode() for k in api_keys])
    stop = asyncio.Event()
    task = asyncio.create_task(run_up(cfg, app, stop))
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_within)


class InThread:
    """An event loop in a thread of its own, for synchronous tests (Playwright's sync API) to
    run a gateway (``serving``, ``running_up``) or anything async beside them."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._contexts: list[contextlib.AbstractAsyncContextManager] = []

    def run(self, coro: Coroutine, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def enter(self, context: contextlib.AbstractAsyncContextManager, timeout: float = 30) -> Any:
        """Enter an async context in the loop; exit() leaves it (the last entered first)."""
        value = self.run(context.__aenter__(), timeout)
        self._contexts.append(context)
        return value

    def exit(self, timeout: float = 40) -> None:
        context = self._contexts.pop()
        self.run(context.__aexit__(None, None, None), timeout)

    def close(self) -> None:
        while self._contexts:
            self.exit()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# --- a gateway as a process -------------------------------------------------------------


def cli_argv(*args: str) -> list[str]:
    """The `localai` command line, run from this checkout by this interpreter."""
    return [sys.executable, "-m", "gateway.cli", *args]


def localai(*args: str, config: Path | str | None = None, timeout: float = 30, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A `localai` command run to its end (output captured as text). From a test whose gateway
    runs in its event loop: ``await asyncio.to_thread(localai, …)``."""
    argv = cli_argv(*args, *(["--config", str(config)] if config is not None else []))
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout, check=check, env=env)


def descendants(pid: int) -> set[int]:
    """Every process below pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening_on(port: int, pids: set[int]) -> int:
    """The one of *pids* started with ``--port PORT`` (a model server, by its command line)."""
    for pid in pids:
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
            return pid
    raise AssertionError(f"no process of {sorted(pids)} listens on port {port}")


def _nice_autogroup(pid: int, nice: int) -> None:
    """Nice the session of *pid* as a whole. With the kernel's autogroup scheduling (on by
    default) the CPU is shared between sessions first, and a process's own nice counts only
    inside its session: `nice` alone does nothing against a browser in another session."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except FileNotFoundError:
        pass  # a kernel built without autogroup: the process's own nice applies


# How systemd's socket activation hands a listening socket over: descriptor 3, LISTEN_FDS, LISTEN_PID.
_SOCKET_ACTIVATED = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                     "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                     "os.execv(sys.executable, [sys.executable, '-m', 'gateway.cli', *sys.argv[2:]])")


class GatewayProcess:
    """`localai COMMAND --config CONFIG ARGS…` (up or gateway) as a process of its own, in a
    session of its own, logging to *log*. *nice*: niced, session and all; *listener*: handed
    the listening socket as systemd's socket activation does."""

    def __init__(self, command: str, config: Path, *args: str, log: Path, nice: int = 0,
                 listener: socket.socket | None = None, env: dict[str, str] | None = None) -> None:
        self.command, self.config, self.args, self.log_path = command, config, list(args), log
        self.nice, self.listener, self.env = nice, listener, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        cli = [self.command, "--config", str(self.config), *self.args]
        argv = cli_argv(*cli) if self.listener is None else \
            [sys.executable, "-c", _SOCKET_ACTIVATED, str(self.listener.fileno()), *cli]
        if self.nice:
            argv = ["nice", "-n", str(self.nice), *argv]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True,
                                         pass_fds=() if self.listener is None else (self.listener.fileno(),))
        if self.nice:
            _nice_autogroup(self.proc.pid, self.nice)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        """Fail (a wait for it gives up at once) if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"`localai {self.command}` exited with {self.proc.returncode}; see {self.log_path}")

    def stop(self, timeout: float = 90) -> set[int]:
        """SIGTERM it; return the processes of its tree still alive afterwards (past *timeout*,
        its whole process group is killed)."""
        if not self.running():
            return set()
        assert self.proc is not None
        tree = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return {pid for pid in tree if alive(pid)}
