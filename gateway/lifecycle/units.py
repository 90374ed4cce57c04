"""systemd's manager over D-Bus: the gateway, run by systemd, starts and stops model units.

A load: on_demand model without vLLM sleep mode comes in as its unit (localai-model@NAME.service)
is started and goes out as it is stopped, so `systemctl status` always tells the truth. The
gateway's user is allowed exactly this by a polkit rule the playbook installs (those units, the
verbs start, stop, restart and reset-failed, nothing else); what systemd or polkit refuse comes
back as a UnitError with systemd's own message.

One connection to the system bus for the gateway's lifetime, made on first use (and again after
the bus went away). A start or stop is a job: systemd answers the call with the job at once and
announces its end (JobRemoved, with a result: done, failed, timeout, canceled, ...) later, so the
wait is for that signal, not a poll. For a model unit a start job ends when its ExecStartPost
(`localai wait-ready`) saw vLLM answer /health.

A model placed on another host of the config (`hosts:`) has its unit started and stopped there
through systemd's own remote bus: `systemctl -H HOST`, which runs `ssh HOST systemd-stdio-bridge`
and speaks to that host's systemd as the SSH user; polkit there lets that user do what it lets
the gateway's user do here (docs/security.md). How ssh reaches HOST (address, port, user, key,
the pinned host key) is the gateway user's ssh config, written by the playbook.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from typing import Any, Protocol

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

_SYSTEMD = "org.freedesktop.systemd1"
_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_PROPERTIES = "org.freedesktop.DBus.Properties"
_UNIT = "org.freedesktop.systemd1.Unit"
_SERVICE = "org.freedesktop.systemd1.Service"
_JOB_REMOVED = f"type='signal',sender='{_SYSTEMD}',interface='{_MANAGER}',member='JobRemoved',path='{_PATH}'"
_NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
_SOCKET = "/run/dbus/system_bus_socket"


def model_unit(instance: str) -> str:
    """The systemd unit of a model server (the plan's Placement.unit is its instance name)."""
    return f"localai-model@{instance}.service"


class UnitError(Exception):
    """A unit could not be started or stopped; the message says why, in systemd's words where it has them."""

    def __init__(self, message: str, dbus_error: str | None = None):
        super().__init__(message)
        self.dbus_error = dbus_error


class Units(Protocol):
    """One host's systemd manager, as the switches (swap.py) use it."""

    async def start(self, unit: str) -> None: ...

    async def stop(self, unit: str) -> None: ...

    async def running_since(self, unit: str) -> float | None: ...


class SystemdUnits:
    """systemd's manager, reached over one bus connection: start and stop units, wait for their jobs."""

    def __init__(self, bus_address: str | None = None, host: str | None = None):
        self._address = bus_address  # None: the system bus
        # The config's name of the host this bus is on (`localai gateway --host`); None: every host's
        # units are started here (a config without hosts:, or a gateway not told where it runs).
        self.host = host
        self._remote: dict[str, RemoteUnits] = {}
        self._bus: MessageBus | None = None
        self._connecting = asyncio.Lock()
        self._watched: Counter[str] = Counter()  # units with a job of ours under way
        self._ended: dict[str, tuple[str, asyncio.Future[str]]] = {}  # job path -> (unit, its result)

    async def start(self, unit: str) -> None:
        """Start the unit and return once it is active; UnitError if it is refused or fails."""
        # A unit that failed before (or hit its start limit) starts afresh: each request may try again.
        try:
            await self._call("ResetFailedUnit", "s", [unit])
        except UnitError as exc:
            if exc.dbus_error != _NO_SUCH_UNIT:  # not loaded yet: nothing to reset
                raise
        await self._job("StartUnit", unit, "start")

    async def stop(self, unit: str) -> None:
        """Stop the unit and return once it is inactive."""
        await self._job("StopUnit", unit, "stop")

    async def running_since(self, unit: str) -> float | None:
        """When the main process of the active unit started (it read its config then), in
        seconds since the epoch; None while the unit is not active (or systemd has not loaded it)."""
        try:
            (path,) = await self._call("GetUnit", "s", [unit])
        except UnitError as exc:
            if exc.dbus_error == _NO_SUCH_UNIT:
                return None
            raise
        if await self._property(path, _UNIT, "ActiveState") != "active":
            return None
        return int(await self._property(path, _SERVICE, "ExecMainStartTimestamp")) / 1e6

    def on(self, host: str) -> Units:
        """The manager of a placement's host: this one, or another host's over SSH."""
        if self.host is None or host == self.host:
            return self
        return self._remote.setdefault(host, RemoteUnits(host))

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    # --- jobs -------------------------------------------------------------------------

    async def _job(self, method: str, unit: str, verb: str) -> None:
        self._watched[unit] += 1
        try:
            (job,) = await self._call(method, "ss", [unit, "replace"])
            _, ended = self._ended.setdefault(job, (unit, asyncio.get_running_loop().create_future()))
            try:
                result = await ended
            finally:
                self._ended.pop(job, None)
        finally:
            self._watched[unit] -= 1
            if not self._watched[unit]:
                del self._watched[unit]
                for path in [p for p, (u, _) in self._ended.items() if u == unit]:  # others' jobs on it
                    del self._ended[path]
        if result != "done":
            raise UnitError(f"{verb} of {unit} {_JOB_RESULTS.get(result, result)}{await self._why(unit)}")

    def _on_message(self, msg: Message) -> None:
        # Called for every message the bus hands us: only the end of a job on a unit we wait for matters.
        if msg.member != "JobRemoved" or msg.interface != _MANAGER or msg.message_type is not MessageType.SIGNAL:
            return
        _, job, unit, result = msg.body
        if unit in self._watched:  # the signal may come before the call's answer has been read
            _, ended = self._ended.setdefault(job, (unit, asyncio.get_running_loop().create_future()))
            if not ended.done():
                ended.set_result(result)

    async def _why(self, unit: str) -> str:
        """What systemd knows about a unit whose job did not end well (best effort)."""
        try:
            (path,) = await self._call("GetUnit", "s", [unit])
            state = await self._property(path, _UNIT, "ActiveState")
            result = await self._property(path, _SERVICE, "Result")
        except UnitError:
            return ""
        return f": the unit is {state} (result: {result})"

    # --- the bus ------------------------------------------------------------------------

    async def _property(self, path: str, interface: str, name: str) -> Any:
        (variant,) = await self._call("Get", "ss", [interface, name], path=path, interface=_PROPERTIES)
        return variant.value

    async def _call(self, method: str, signature: str, body: list, path: str = _PATH,
                    interface: str = _MANAGER) -> list:
        bus = await self._connected()
        try:
            reply = await bus.call(Message(destination=_SYSTEMD, path=path, interface=interface, member=method,
                                           signature=signature, body=body))
        except (OSError, EOFError) as exc:
            self._bus = None
            raise UnitError(f"lost the connection to systemd on the system bus ({exc})") from None
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise UnitError(f"systemd refused {method} {body[0] if body else ''}: {text or reply.error_name} "
                            f"({reply.error_name})", reply.error_name)
        return list(reply.body)

    async def _connected(self) -> MessageBus:
        async with self._connecting:
            if self._bus is not None and self._bus.connected:
                return self._bus
            try:
                bus = await MessageBus(bus_address=self._address, bus_type=BusType.SYSTEM).connect()
            except (OSError, EOFError, ValueError) as exc:  # no socket, refused, auth failed (a ValueError)
                where = self._address or _SOCKET
                raise UnitError(f"cannot reach systemd on the system bus at {where} "
                                f"({type(exc).__name__}: {exc})") from None
            bus.add_message_handler(self._on_message)
            # systemd sends its signals only to clients that subscribed; the match rule lets them through.
            calls = [Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                             interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[_JOB_REMOVED]),
                     Message(destination=_SYSTEMD, path=_PATH, interface=_MANAGER, member="Subscribe")]
            for call in calls:
                reply = await bus.call(call)
                if reply.message_type is MessageType.ERROR:
                    bus.disconnect()
                    raise UnitError(f"the system bus refused {call.member}: {reply.body}")
            self._bus = bus
            return bus


class RemoteUnits:
    """systemd's manager on another host, through `systemctl -H HOST` (one SSH connection a call).

    `systemctl start` and `stop` wait for their job as the D-Bus path does and say in their
    stderr why one failed (or why ssh or polkit refused): that text is the UnitError's message.
    A call the caller gives up on (its timeout) kills systemctl, and with it the SSH connection;
    the job it queued goes on there, as one queued over D-Bus does.
    """

    def __init__(self, host: str, path: str = "/usr/bin:/bin"):
        self.host = host
        # A clean environment: nothing of the gateway's (its keys' paths, proxies) reaches ssh.
        # ssh reads its config from the home directory in the passwd entry, not from $HOME.
        self._env = {"PATH": path, "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0"}

    async def start(self, unit: str) -> None:
        # As SystemdUnits.start: a unit that failed before starts afresh (not loaded: nothing to reset).
        try:
            await self._systemctl("reset-failed", unit)
        except UnitError as exc:
            if "not loaded" not in str(exc):
                raise
        await self._systemctl("start", unit)

    async def stop(self, unit: str) -> None:
        await self._systemctl("stop", unit)

    async def running_since(self, unit: str) -> float | None:
        async with asyncio.timeout(_REMOTE_QUERY_S):
            out = await self._systemctl("show", "--timestamp=unix", "-p", "ActiveState",
                                        "-p", "ExecMainStartTimestamp", unit)
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        started = props.get("ExecMainStartTimestamp", "").lstrip("@")
        if props.get("ActiveState") != "active" or not started:
            return None
        return float(started)

    async def _systemctl(self, verb: str, *args: str) -> str:
        argv = ["systemctl", "-H", self.host, "--no-ask-password", verb, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._env, start_new_session=True)
        except OSError as exc:
            raise UnitError(f"cannot run systemctl to reach {self.host} ({exc})") from None
        try:
            out, err = await proc.communicate()
        except BaseException:  # cancelled (the caller's timeout): leave no systemctl or ssh behind
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: systemctl and the ssh it runs
            await proc.wait()
            raise
        if proc.returncode != 0:
            said = " ".join(err.decode(errors="replace").split())[:500] or f"exit status {proc.returncode}"
            raise UnitError(f"{verb} of {args[-1]} on {self.host} (systemctl -H {self.host}): {said}")
        return out.decode(errors="replace")


# A remote query (not a job) that takes longer than this is given up.
_REMOTE_QUERY_S = 60.0

# What a job's result means, in words (systemd's JobRemoved results).
_JOB_RESULTS = {
    "failed": "failed",
    "timeout": "timed out (TimeoutStartSec/TimeoutStopSec)",
    "canceled": "was canceled (another job for the unit replaced it)",
    "dependency": "failed: a unit it needs failed",
    "skipped": "was skipped",
    "invalid": "is not possible for this unit",
}
