"""A load: on_demand model on another host (#19): the gateway starts and stops its unit there with
the real `systemctl -H HOST`, which runs `ssh HOST systemd-stdio-bridge`. Here ssh is a stand-in
(a script first on PATH) that fails or hangs as a network does; the systemd tier runs the real
thing across two hosts (tests/systemd/test_multihost.py). And which host's manager each unit
gets, where the gateway runs on a model host and on a host of its own."""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp
import pytest

from gateway.app.switches import switches
from gateway.lifecycle.swap import UnitSwitch
from gateway.lifecycle.units import RemoteUnits, SystemdUnits, UnitError, model_unit
from gateway.plan.placement import placements
from gateway.plan.validate import parse_config
from tests.harness import wait_until

pytestmark = pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (the real client)")


def standin_ssh(tmp_path, script: str) -> str:
    """A PATH whose `ssh` runs this shell script (then the system's programs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ssh").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "ssh").chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


async def test_a_refused_connection_comes_back_in_ssh_and_systemctls_words(tmp_path):
    path = standin_ssh(tmp_path, 'echo "ssh: connect to host far.example port 22: Connection refused" >&2; exit 255')
    with pytest.raises(UnitError) as err:
        await RemoteUnits("far", path).start(model_unit("coder"))
    said = str(err.value)
    assert "Connection refused" in said and "far" in said and model_unit("coder") in said, said


async def test_ssh_runs_the_bridge_on_the_named_host_with_a_clean_environment(tmp_path):
    seen = tmp_path / "seen"
    path = standin_ssh(tmp_path, f'echo "$@" > {seen}; env > {seen}.env; exit 255')
    os.environ["LOCALAI_SECRET_TEST"] = "leaked"
    try:
        with pytest.raises(UnitError):
            await RemoteUnits("far", path).stop(model_unit("coder"))
    finally:
        del os.environ["LOCALAI_SECRET_TEST"]
    argv = seen.read_text().split()
    assert argv[-2:] == ["far", "systemd-stdio-bridge"], argv
    assert "leaked" not in (tmp_path / "seen.env").read_text()


async def test_a_hung_connection_is_given_up_and_leaves_no_process_behind(tmp_path):
    pid_file = tmp_path / "ssh.pid"
    path = standin_ssh(tmp_path, f"echo $$ > {pid_file}; exec sleep 300")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            start = asyncio.ensure_future(RemoteUnits("far", path).start(model_unit("coder")))
            await wait_until(pid_file.exists, 4, "ssh started")
            await start
    pid = int(pid_file.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1].startswith("Z")  # killed, not yet reaped by its new parent
        except FileNotFoundError:
            return True

    await wait_until(gone, 5, "the stand-in ssh killed")


async def test_each_models_units_are_started_on_its_hosts_manager():
    cfg = parse_config("""\
hosts: [{name: a, gpus: 0}, {name: b, gpus: 0}]
models:
  - {name: m, model: /m/m, port: 18991, hosts: [b], load: on_demand, gpu_memory_utilization: 0.5, default: true}
  - {name: r, model: /m/r, port: 18993, replicas: 2, load: on_demand, gpu_memory_utilization: 0.5}
""")
    placed = {p.unit: p.host for p in placements(cfg)}
    # On a model host, its own units over its bus, the others' over SSH; on a host of the gateway's
    # own (not among the model hosts), every unit over SSH.
    for here in ("b", "gw"):
        units = SystemdUnits(host=here)
        async with aiohttp.ClientSession() as session:
            made = switches(cfg, session, lambda _: None, units=units)
        seen = {instance: "here" if manager is units else manager.host  # type: ignore[attr-defined]
                for s in made.values() if isinstance(s, UnitSwitch) for manager, instance in s.servers}
        assert seen == {u: "here" if h == here else h for u, h in placed.items()}, (here, seen)
        assert all(isinstance(m, RemoteUnits) for s in made.values() if isinstance(s, UnitSwitch)
                   for m, _ in s.servers if m is not units)
