"""Issue #18 under systemd: the model servers' own user, and HTTPS from the playbook's private CA.

On the tier's one deployment (conftest.py's `box`): the model units run as localai-model, which
can read neither the API keys (the root-only file, the gateway's copy under /run) nor the TLS
key, and which systemd (polkit) refuses to start or stop a unit. The gateway serves HTTPS with
the certificate the playbook made (stage.py sets localai_tls), which curl in the box and the
openai SDK on the host verify against the CA the playbook says to give clients.
"""

from __future__ import annotations

import ssl
import subprocess

import httpx
import openai
import pytest
import stage

pytestmark = pytest.mark.systemd

MODEL_USER = "localai-model"
MODEL_UNITS = [f"localai-model@{m}.service" for m in stage.MODEL_PORTS]
SECRETS = ["/etc/localai/api-keys", "/run/localai-gateway/api-keys", "/etc/localai/tls/gateway.key",
           "/etc/localai/tls/ca.key"]


def process_user(box, pid: str) -> str:
    """Whom a process runs as (the owner of its /proc folder: its effective user)."""
    return box.sh(f"stat -c %U /proc/{pid}").stdout.strip()


def as_model_user(box, command: str):
    return box.sh(f"runuser -u {MODEL_USER} -- {command} 2>&1", check=False)


def test_model_servers_run_as_their_own_user(box):
    for unit in MODEL_UNITS:
        assert box.prop(unit, "User") == MODEL_USER
        assert process_user(box, box.prop(unit, "MainPID")) == MODEL_USER, unit
    assert process_user(box, box.prop("localai-gateway.service", "MainPID")) == "localai"
    # Not in the gateway's group: the group-readable TLS key stays out of its reach.
    assert "localai" not in box.sh(f"id -nG {MODEL_USER}").stdout.split()


def test_the_model_user_reads_no_key_and_starts_no_unit(box):
    for secret in SECRETS:
        assert box.sh(f"test -e {secret} && echo here").stdout.strip() == "here", secret
        res = as_model_user(box, f"cat {secret}")
        assert res.returncode != 0 and "Permission denied" in res.stdout, (secret, res.stdout)
    # In its unit's view of the file system the key file is replaced outright (InaccessiblePaths=:
    # an empty node of mode 0000, which even root, entering that view, reads nothing from).
    pid = box.prop("localai-model@coder.service", "MainPID")
    res = box.sh(f"nsenter -t {pid} -m stat -c '%a %s' /etc/localai/api-keys", check=False)
    assert res.stdout.split() == ["0", "0"], res.stdout + res.stderr
    unit = "localai-model@general.service"
    before = box.prop(unit, "MainPID")
    for verb in ("stop", "restart"):
        res = as_model_user(box, f"systemctl --no-ask-password {verb} {unit}")
        assert res.returncode != 0, res.stdout
        assert "Interactive authentication required" in res.stdout or "Access denied" in res.stdout, res.stdout
    res = as_model_user(box, "systemctl --no-ask-password start localai-model@x.service")
    assert res.returncode != 0 and ("Interactive authentication required" in res.stdout
                                    or "Access denied" in res.stdout), res.stdout
    assert box.prop(unit, "MainPID") == before and box.prop(unit, "ActiveState") == "active"


def test_https_with_the_certificate_the_playbook_made(box, tmp_path):
    modes = box.sh("stat -c '%n %a %U %G' /etc/localai/tls/ca.pem /etc/localai/tls/ca.key "
                   "/etc/localai/tls/gateway.key").stdout.split("\n")
    assert modes[:3] == ["/etc/localai/tls/ca.pem 644 root root", "/etc/localai/tls/ca.key 600 root root",
                         "/etc/localai/tls/gateway.key 640 root localai"], modes
    port, key = stage.GATEWAY_PORT, box.api_key()
    ca = str(box.c.path("/etc/localai/tls/ca.pem"))
    # curl on the host (the container shares its network), trusting the CA the playbook told the admin to hand out.
    header = tmp_path / "auth"  # the key in a file, not on curl's command line
    header.write_text(f"Authorization: Bearer {key}\n")
    header.chmod(0o600)
    res = subprocess.run(["curl", "-sS", "--fail-with-body", "--cacert", ca, "-H", f"@{header}",
                          f"https://localhost:{port}/v1/models"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and '"coder"' in res.stdout, res.stdout + res.stderr
    # The openai SDK on the host, trusting that CA and nothing else.
    trust = ssl.create_default_context(cafile=ca)
    with httpx.Client(verify=trust, timeout=300) as http:
        client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key=key, http_client=http)
        answer = client.chat.completions.create(model="coder", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=4)
    assert answer.usage.completion_tokens >= 1
    # The playbook's health check, the CLI: plain HTTP on 127.0.0.1 stays.
    res = box.sh("/opt/localai/venv-gateway/bin/localai status --config /etc/localai/localai.yaml", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
