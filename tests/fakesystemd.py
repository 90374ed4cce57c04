"""A stand-in for systemd's manager on a private D-Bus (a real dbus-daemon), for the fast tier.

It answers the calls the gateway makes (gateway/units.py) the way systemd does: StartUnit and
StopUnit return a job at once and announce its end with the JobRemoved signal; a start job ends
once the unit's server answers /health (as the model unit's ExecStartPost waits), "failed" when
the server exits first. A unit's command is the model unit's own ExecStart (`localai run-model
NAME`). Knobs a test sets: `refuse` (units whose start polkit refuses) and `calls` (what was asked,
in order). The systemd tier does the same against the real systemd and polkit.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import aiohttp
from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr, DBusUInt64
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from tests.harness import REPO, cli_argv, wait_until

POLKIT_NO = ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", "Interactive authentication required.")


@dataclass
class Unit:
    argv: list[str]
    health: str  # URL that answers 200 once the unit counts as started
    proc: asyncio.subprocess.Process | None = None
    active: str = "inactive"
    started_at: float = 0.0  # when its process last started (seconds since the epoch)
    result: str = "success"
    starting: asyncio.Task | None = field(default=None, repr=False)


class _UnitState(ServiceInterface):
    def __init__(self, unit: Unit):
        super().__init__("org.freedesktop.systemd1.Unit")
        self.unit = unit

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> DBusStr:  # noqa: N802 - systemd's member names
        return self.unit.active



class _ServiceState(ServiceInterface):
    def __init__(self, unit: Unit):
        super().__init__("org.freedesktop.systemd1.Service")
        self.unit = unit

    @dbus_property(access=PropertyAccess.READ)
    def Result(self) -> DBusStr:  # noqa: N802
        return self.unit.result

    @dbus_property(access=PropertyAccess.READ)
    def ExecMainStartTimestamp(self) -> DBusUInt64:  # noqa: N802 - microseconds, as systemd's
        return int(self.unit.started_at * 1e6)


class Manager(ServiceInterface):
    def __init__(self, bus: MessageBus, units: dict[str, Unit]):
        super().__init__("org.freedesktop.systemd1.Manager")
        self.bus = bus
        self.units = units
        self.refuse: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        # For each unit started: the other active units whose server was awake then (vLLM sleep mode).
        self.awake_at_start: dict[str, list[str]] = {}
        self._jobs = 0
        for name, unit in units.items():
            bus.export(self._path(name), _UnitState(unit))
            bus.export(self._path(name), _ServiceState(unit))

    @staticmethod
    def _path(name: str) -> str:
        return "/org/freedesktop/systemd1/unit/" + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)

    def _unit(self, name: str) -> Unit:
        if name not in self.units:
            raise DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {name} not found.")
        return self.units[name]

    @dbus_method()
    def Subscribe(self):  # noqa: N802
        pass

    @dbus_method()
    def GetUnit(self, name: DBusStr) -> DBusObjectPath:  # noqa: N802
        self._unit(name)
        return self._path(name)

    @dbus_method()
    def ResetFailedUnit(self, name: DBusStr):  # noqa: N802
        self.calls.append(("reset-failed", name))
        unit = self._unit(name)
        if unit.active == "failed":
            unit.active, unit.result = "inactive", "success"

    @dbus_method()
    def StartUnit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:  # noqa: N802
        unit = self._unit(name)
        if name in self.refuse:
            raise DBusError(*POLKIT_NO)
        self.calls.append(("start", name))
        job = self._job()
        if unit.active == "active":
            self._end(job, name, "done")
        else:
            unit.starting = asyncio.get_running_loop().create_task(self._start(job, name, unit))
        return job

    @dbus_method()
    def StopUnit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:  # noqa: N802
        unit = self._unit(name)
        self.calls.append(("stop", name))
        job = self._job()
        asyncio.get_running_loop().create_task(self._stop(job, name, unit))
        return job

    @dbus_signal()
    def JobRemoved(self, id_: int, job: str, unit: str, result: str) -> Annotated[list, DBusSignature("uoss")]:  # noqa: N802
        return [id_, job, unit, result]

    def _job(self) -> str:
        self._jobs += 1
        return f"/org/freedesktop/systemd1/job/{self._jobs}"

    def _end(self, job: str, name: str, result: str) -> None:
        # Like systemd: the signal leaves after the call's answer.
        asyncio.get_running_loop().call_soon(self.JobRemoved, int(job.rsplit("/", 1)[1]), job, name, result)

    async def _start(self, job: str, name: str, unit: Unit) -> None:
        unit.active = "activating"
        self.awake_at_start[name] = [other for other, u in self.units.items()
                                     if u.active == "active" and not await _asleep(u)]
        unit.started_at = time.time()
        unit.proc = await asyncio.create_subprocess_exec(*unit.argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL, start_new_session=True)
        async with aiohttp.ClientSession() as http:
            while unit.proc.returncode is None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(unit.health) as r:
                        if r.status == 200:
                            unit.active = "active"
                            self._end(job, name, "done")
                            return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(unit.proc.wait(), 0.05)  # exited, or look again
        unit.active, unit.result = "failed", "exit-code"
        self._end(job, name, "failed")

    async def _stop(self, job: str, name: str, unit: Unit) -> None:
        if unit.starting is not None and not unit.starting.done():
            unit.starting.cancel()
        if unit.proc is not None and unit.proc.returncode is None:
            unit.proc.send_signal(signal.SIGTERM)
            await unit.proc.wait()
        unit.proc = None
        if unit.active != "failed":
            unit.active = "inactive"
        self._end(job, name, "done")


async def _asleep(unit: Unit) -> bool:
    async with aiohttp.ClientSession() as http, http.get(unit.health.replace("/health", "/is_sleeping")) as r:
        return (await r.json())["is_sleeping"]


@contextlib.asynccontextmanager
async def private_bus(tmp_path: Path) -> AsyncIterator[str]:
    """A real dbus-daemon on a socket of its own; yields its address."""
    daemon = shutil.which("dbus-daemon")
    assert daemon, "the fast tier needs dbus-daemon (make system-deps installs it)"
    socket = tmp_path / "bus"
    conf = tmp_path / "bus.conf"
    conf.write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={socket}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/><allow own="*"/></policy>
</busconfig>""")
    proc = subprocess.Popen([daemon, f"--config-file={conf}", "--nofork", "--nopidfile"],  # noqa: ASYNC220 - runs beside
                            stdout=subprocess.DEVNULL)
    try:
        await wait_until(lambda: socket.exists() or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, "dbus-daemon did not start"
        yield f"unix:path={socket}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def fake_systemd(address: str, units: dict[str, Unit]) -> AsyncIterator[Manager]:
    bus = await MessageBus(bus_address=address).connect()
    manager = Manager(bus, units)
    bus.export("/org/freedesktop/systemd1", manager)
    await bus.request_name("org.freedesktop.systemd1")
    try:
        yield manager
    finally:
        for unit in units.values():
            if unit.proc is not None and unit.proc.returncode is None:
                unit.proc.kill()
                await unit.proc.wait()
        bus.disconnect()


def run_model(name: str, config: Path) -> list[str]:
    """The model unit's ExecStart."""
    return cli_argv("run-model", name, "--config", str(config))
