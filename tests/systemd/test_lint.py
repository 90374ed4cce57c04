"""ansible-lint with the production profile, and syntax checks of both playbooks.

In the systemd tier (it installs ansible-lint into ~/.cache/localai/lint-venv
the first time, about 30 s).
"""

from __future__ import annotations

import json
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


def test_role_defaults_pass_their_argument_specs(lint_bin, tmp_path):
    """Each role's defaults, templated as a play sees them, validate against its meta/argument_specs.yml
    (the check Ansible runs when the role starts)."""
    roles = sorted(p.parent.parent.name for p in (REPO / "ansible" / "roles").glob("*/meta/argument_specs.yml"))
    defaults = [str(REPO / "ansible" / "roles" / r / "defaults" / "main.yml") for r in roles]
    tasks = [{"name": f"Validate the defaults of {r}",
              "ansible.builtin.validate_argument_spec": {
                  "argument_spec": "{{ (lookup('ansible.builtin.file', '%s') | from_yaml)"
                                   ".argument_specs.main.options }}"
                                   % (REPO / "ansible" / "roles" / r / "meta" / "argument_specs.yml")}}
             for r in roles]
    play = [{"hosts": "all", "gather_facts": False, "vars_files": defaults,
             "vars": {"localai_checks_host": {"address": "127.0.0.1"}}, "tasks": tasks}]
    (tmp_path / "validate.yml").write_text(json.dumps(play))
    res = _run([lint_bin / "ansible-playbook", tmp_path / "validate.yml",
                "-e", f"ansible_python_interpreter={lint_bin / 'python'}"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    assert f"ok={len(roles)} " in res.stdout, res.stdout[-2000:]


def test_install_sh_is_clean_bash():
    res = subprocess.run(["bash", "-n", str(REPO / "install.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(REPO / "install.sh", os.X_OK)
    assert sys.version_info >= (3, 10)
