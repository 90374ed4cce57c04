"""A load: on_demand model on another host (#19): the gateway starts and stops its unit there with
the real `systemctl -H HOST`, which runs `ssh HOST systemd-stdio-bridge`. Here ssh is a stand-in
(a script first on PATH) that fails or hangs as a network does; the systemd tier runs the real
thing across two hosts (tests/systemd/test_multihost.py)."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from gateway.lifecycle.units import RemoteUnits, UnitError, model_unit
from tests.harness import localai, wait_until

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


def test_the_gateway_refuses_a_host_the_config_does_not_name(tmp_path):
    config = tmp_path / "localai.yaml"
    config.write_text("hosts: [{name: a, gpus: 0}, {name: b, gpus: 0}]\n"
                      "models: [{name: m, model: /m/m, port: 18999, hosts: [b], load: on_demand, "
                      "gpu_memory_utilization: 0.5}]\n")
    res = localai("gateway", "--units", "--host", "c", config=config)
    assert res.returncode != 0 and "no host named c" in res.stderr, res.stderr
