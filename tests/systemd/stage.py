"""Put the repository and the test's deployment inputs into a booted container.

What the tier deploys is what the README's CPU-host section does, with the
differences a shared CI machine needs, all given as ordinary role knobs:
- ports 18480 (gateway), 18481/18482 (models): the container shares the
  host's network and other people use 8080/810x on this machine;
- pip takes torch 2.13.0+cpu from the host's /opt/wheels (bind-mounted,
  `localai_python_pip_find_links`) instead of PyTorch's CPU index, and
  trusts the host's CA bundle (this machine's egress proxy re-signs TLS).

No wheel cache is carried across runs: pip's HTTP cache stays empty behind
this machine's egress proxy (its responses are not cacheable; measured), and
a wheelhouse would save only the download, about 10 s at the ~100 MB/s seen
here, of a vLLM install that takes about 2 minutes of unpacking. torch, the
one big wheel, already comes from /opt/wheels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SRC_IN = "/root/localai"                       # the clone inside the container
CA_IN = "/usr/local/share/localai-test-ca.pem"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = Path("/opt/wheels")

GATEWAY_PORT = 18480
MODEL_PORTS = {"coder": 18481, "general": 18482}


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a clone of the work tree holds."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (REPO / f).is_file()]


def copy_repo(root: Path) -> None:
    dest = root / SRC_IN.lstrip("/")
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)


def test_config() -> dict:
    """etc/demo.yaml with the tier's ports."""
    cfg = yaml.safe_load((REPO / "etc" / "demo.yaml").read_text())
    cfg.setdefault("gateway", {})["port"] = GATEWAY_PORT
    for m in cfg["models"]:
        if m["name"] in MODEL_PORTS:
            m["port"] = MODEL_PORTS[m["name"]]
    return cfg


def test_vars() -> dict:
    return {
        "localai_config_file": f"{SRC_IN}/tests-systemd-localai.yaml",
        "localai_tiny_models": list(MODEL_PORTS),
        # HTTPS from the playbook's private CA, on the tier's loopback gateway (auto would not).
        "localai_tls": "true",
        "localai_python_pip_find_links": [str(WHEELS)] if WHEELS.is_dir() else [],
        "localai_python_extra_index_urls": {"cuda": [], "cpu": []} if WHEELS.is_dir()
        else {"cuda": [], "cpu": ["https://download.pytorch.org/whl/cpu"]},
    }


def binds() -> tuple[list[str], list[str]]:
    """(read-write, read-only) bind mounts for systemd-nspawn."""
    return [], ([str(WHEELS)] if WHEELS.is_dir() else [])


def stage(root: Path) -> None:
    copy_repo(root)
    src = root / SRC_IN.lstrip("/")
    (src / "tests-systemd-localai.yaml").write_text(yaml.safe_dump(test_config(), sort_keys=False))
    (src / "tests-systemd-vars.yml").write_text(yaml.safe_dump(test_vars(), sort_keys=False))
    pip_conf = ["[global]"]
    if HOST_CA.exists():
        shutil.copy2(HOST_CA, root / CA_IN.lstrip("/"))
        pip_conf.append(f"cert = {CA_IN}")
    (root / "etc" / "pip.conf").write_text("\n".join(pip_conf) + "\n")
    os.chmod(root / "etc" / "pip.conf", 0o644)


def task_times_env(repo: str) -> dict[str, str]:
    """ansible-playbook's environment for task_times (callback_plugins/): each run's log ends
    with its slowest tasks. repo: where the repository is, as the playbook's runner sees it."""
    return {"ANSIBLE_CALLBACK_PLUGINS": f"{repo}/tests/systemd/callback_plugins",
            "ANSIBLE_CALLBACKS_ENABLED": "task_times"}


INSTALL_ARGV = [*(f"{k}={v}" for k, v in task_times_env(SRC_IN).items()),
                "./install.sh", "-e", "@tests-systemd-vars.yml"]
