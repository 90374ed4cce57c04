"""The `localai` command as a user meets it: --version, a closed pipe, finding the running service."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

from tests.conftest import REPO


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=60, **kw)


def test_version_is_the_package_version():
    run = cli("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"localai {importlib.metadata.version('localai')}\n"
    assert run.stderr == ""


def test_a_closed_pipe_ends_the_command_quietly():
    # `localai plan --json | head -1`: the reader is gone before the plan is written.
    read, write = os.pipe()
    os.close(read)
    try:
        run = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", "--json", "--config",
                              str(REPO / "etc" / "demo.yaml")], stdout=write, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, timeout=60)
    finally:
        os.close(write)
    assert run.stderr == ""
    # What the shell sees of git or ollama in a closed pipe: killed by SIGPIPE, 128 + 13.
    assert run.returncode == 141
