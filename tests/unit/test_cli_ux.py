"""The `localai` command as a user meets it: --version, a closed pipe, finding the running service."""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import subprocess
import sys
import threading

import pytest
import yaml

from tests.harness import REPO, GatewayProcess, free_port, wait_until_sync


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


# --- finding the running service ------------------------------------------

KEY = "sk-cli-ux-test-0123"
UNSET = ("LOCALAI_URL", "LOCALAI_CONFIG", "LOCALAI_API_KEY")


def quiet_env(**extra: str) -> dict:
    """os.environ without a say in where the service is, plus extra."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    return {**env, **extra}


def found(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=60)


@pytest.mark.parametrize("command", ["up", "gateway"])
def test_ps_and_status_find_the_gateway_running_here_without_config(tmp_path, command):
    keys = tmp_path / "api-keys"
    keys.write_text(f"me: {KEY}\n")
    keys.chmod(0o600)
    port = free_port()
    config = tmp_path / "localai.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"port": port, "webui": False, "api_key_file": str(keys)},
                                      "models": [{"name": "coder", "url": "http://127.0.0.1:1", "default": True}]}))
    env = quiet_env(XDG_RUNTIME_DIR=str(tmp_path / "run"))
    record = tmp_path / "run" / "localai" / "gateway.json"
    gateway = GatewayProcess(command, config, log=tmp_path / "gateway.log", env=env).start()
    try:
        def recorded() -> bool:
            gateway.assert_running()
            return record.exists()
        wait_until_sync(recorded, 30, "the record of the running gateway")
        assert json.loads(record.read_text())["url"] == f"http://127.0.0.1:{port}"
        assert KEY not in record.read_text()
        assert record.stat().st_mode & 0o777 == 0o644

        ps = found("ps", env=env)  # no --config: the key comes from the config the gateway started with
        assert ps.returncode == 0, ps.stderr
        assert ps.stdout.splitlines()[0].split() == ["NAME", "STATE", "SINCE", "UNTIL", "VRAM"]
        status = found("status", env=env)
        assert status.stdout.splitlines()[0] == f"localai status  (config {config})"
        assert f"GATEWAY  http://127.0.0.1:{port}  /health 200" in status.stdout
    finally:
        gateway.stop(timeout=30)
    assert gateway.returncode == 0, gateway.log_text()
    assert not record.exists()  # gone with the gateway


def test_ps_speaks_to_localai_url_with_localai_api_key():
    seen: list[str | None] = []

    class OllamaPs(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"models": [{"name": "coder", "state": "ready", "expires_at": "9999-01-01T00:00:00Z"}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OllamaPs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        run = found("ps", env=quiet_env(LOCALAI_URL=url, LOCALAI_API_KEY=KEY))
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1].split() == ["coder", "ready", "-", "forever", "always", "loaded"]
    assert seen == [f"Bearer {KEY}"]


@pytest.mark.parametrize("command", [["ps"], ["status"], ["load", "coder"], ["unload", "coder"]])
def test_nothing_running_and_no_config_says_where_it_looked(tmp_path, monkeypatch, capsys, command):
    from gateway.app import runtime
    from gateway.cli import main as cli_main

    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(runtime, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(cli_main, "DEFAULT_CONFIG_PATH", tmp_path / "localai.yaml")
    with pytest.raises(SystemExit) as exit_:
        cli_main.main(command)
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("localai: no running localai found: ")
    for place in (tmp_path / "run" / "localai", tmp_path / "system", tmp_path / "localai.yaml"):
        assert str(place) in err
    assert "localai up --config FILE" in err
