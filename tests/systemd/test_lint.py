"""ansible-lint with the production profile, and syntax checks of both playbooks.

In the systemd tier (it installs ansible-lint into ~/.cache/localai/lint-venv
the first time, about 30 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
LINT_VENV = Path.home() / ".cache" / "localai" / "lint-venv"
PINS = ["ansible-lint==26.6.0", "ansible-core==2.17.14"]


@pytest.fixture(scope="module")
def lint_bin() -> Path:
    stamp = LINT_VENV / ".pins"
    if not stamp.exists() or stamp.read_text() != " ".join(PINS):
        venv.create(LINT_VENV, with_pip=True, clear=True)
        subprocess.run([LINT_VENV / "bin" / "pip", "install", "-q", *PINS], check=True)
        stamp.write_text(" ".join(PINS))
    return LINT_VENV / "bin"


def _run(argv, **kw):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"), "NO_COLOR": "1",
           "PATH": f"{argv[0].parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run([str(a) for a in argv], cwd=REPO / "ansible", capture_output=True, text=True, env=env, **kw)


@pytest.mark.parametrize("playbook", ["site.yml", "uninstall.yml"])
def test_syntax(lint_bin, playbook):
    res = _run([lint_bin / "ansible-playbook", "--syntax-check", playbook])
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_production_profile(lint_bin):
    res = _run([lint_bin / "ansible-lint", "--profile", "production", "--offline"], timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "Profile 'production' was required, and it passed" in out, out[-2000:]


def test_install_sh_is_clean_bash():
    res = subprocess.run(["bash", "-n", str(REPO / "install.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(REPO / "install.sh", os.X_OK)
    assert sys.version_info >= (3, 10)
