"""Two hosts from one inventory: two booted containers, one ansible-playbook run over SSH.

What an operator with two boxes does: an inventory with the gateway on one
host (group localai_gateway) and model servers on both (localai_models), run
from a controller that reaches each host over SSH. Here the controller is this
machine (ansible-core at install.sh's pin, in a venv of its own), the hosts are
two containers booted from the tier's rootfs plus openssh-server, each sshd on
its own port. The containers share this machine's network, so each host gets
its own model ports through localai_port_offset (hosts: port_offset in the
config), and every address is 127.0.0.1.

The hosts start with the single box's vLLM venv (conftest.py's `box`) linked in, as
from an image with vLLM baked in: installing vLLM on a bare host is the box's
first run and its reinstall, and the pair's deploy skips two more installs of
the same wheels (two minutes of the tier).

Deployed: the demo's tiny coder model with `replicas: 2` (one on each host),
its general model load: on_demand on node-b (started there by the gateway, over
SSH) and the gateway on node-a. One deployment for every test, which run in any
order: a test that stops a server starts it again and waits until the gateway
routes to it before it ends.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

import container as ct
import pytest
import stage
import yaml
from conftest import OUT, TIMINGS, deploy_failed, save_journals, torn_down_on_sigterm
from test_deploy import http

from tests.harness import wait_until_sync

pytestmark = pytest.mark.systemd

REPO = stage.REPO
NODES = {"node-a": {"ssh": 18422, "offset": 0}, "node-b": {"ssh": 18423, "offset": 10}}
GATEWAY_PORT = 18490
MODEL_PORT = 18491  # node-b's replica listens on MODEL_PORT + 10
GATEWAY = f"http://127.0.0.1:{GATEWAY_PORT}"
CONTROLLER_VENV = ct.CACHE.parent / "controller-venv"
VLLM_VENV = "/opt/localai/venv-vllm"  # the role's default localai_vllm_venv


def _ansible_core_pin() -> str:
    return re.search(r'^ANSIBLE_CORE_VERSION="([^"]+)"', (REPO / "install.sh").read_text(), re.M).group(1)


def controller() -> Path:
    """ansible-playbook at the version install.sh pins, in a venv of its own (built once, ~20 s)."""
    pin = f"ansible-core=={_ansible_core_pin()}"
    stamp = CONTROLLER_VENV / ".pin"
    if not stamp.exists() or stamp.read_text() != pin:
        venv.create(CONTROLLER_VENV, with_pip=True, clear=True)
        subprocess.run([CONTROLLER_VENV / "bin" / "pip", "install", "-q", pin], check=True)
        stamp.write_text(pin)
    return CONTROLLER_VENV / "bin" / "ansible-playbook"


def recaps(stdout: str) -> dict[str, dict]:
    """PLAY RECAP counters per host."""
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
            for host, rest in re.findall(r"^(node-\w)\s+:\s+(.*)$", stdout, re.M)}


class Pair:
    def __init__(self, work: Path, key: Path):
        self.work, self.key = work, key
        self.nodes: dict[str, ct.Container] = {}

    def sh(self, node: str, script: str, check: bool = True, timeout: float = 600):
        return self.nodes[node].sh(script, check=check, timeout=timeout)

    def prop(self, node: str, unit: str, name: str) -> str:
        return self.sh(node, f"systemctl show -p {name} --value {unit}").stdout.strip()

    def deploy(self, log_name: str) -> tuple[subprocess.CompletedProcess, dict]:
        argv = [str(controller()), "-i", str(self.work / "inventory.yml"), "site.yml",
                "-e", f"@{self.work / 'vars.yml'}"]
        env = {"ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"), "NO_COLOR": "1",
               "ANSIBLE_HOST_KEY_CHECKING": "False", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
               **stage.task_times_env(str(REPO))}
        started = time.monotonic()
        res = subprocess.run(argv, cwd=REPO / "ansible", capture_output=True, text=True, env=env, timeout=3000)
        TIMINGS[f"pair-{log_name}"] = time.monotonic() - started
        (OUT / f"pair-{log_name}.log").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
        return res, recaps(res.stdout)


def _inventory(key: Path) -> dict:
    ssh = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes"
    hosts = {name: {"ansible_port": n["ssh"], "localai_port_offset": n["offset"]} for name, n in NODES.items()}
    return {"all": {
        "vars": {"ansible_host": "127.0.0.1", "ansible_user": "root", "ansible_ssh_private_key_file": str(key),
                 "ansible_ssh_common_args": ssh, "ansible_python_interpreter": "/usr/bin/python3"},
        "hosts": hosts,
        "children": {"localai_gateway": {"hosts": {"node-a": None}},
                     "localai_models": {"hosts": {name: None for name in NODES}}}}}


def _config() -> dict:
    cfg = yaml.safe_load((REPO / "etc" / "demo.yaml").read_text())
    cfg["gateway"]["port"] = GATEWAY_PORT
    coder = next(m for m in cfg["models"] if m["name"] == "coder")
    coder.update(port=MODEL_PORT, replicas=2)
    cfg["models"] = [coder, _remote_on_demand(cfg)]
    return cfg


def _vars(work: Path) -> dict:
    return {**{k: v for k, v in stage.test_vars().items() if k != "localai_config_file"},
            "localai_config_file": str(work / "localai.yaml"), "localai_tiny_models": ["coder", ON_DEMAND]}


def _boot(name: str, ssh_port: int, tarball: Path, pubkey: str, vllm_venv: Path | None) -> ct.Container:
    c = ct.Container(f"localai-tier-{name}", binds_ro=stage.binds()[1], log_path=OUT / f"console-{name}.log",
                     workdir=Path("/var/tmp"))
    c.create(tarball)
    if vllm_venv is not None:
        # Hard links: no copy of its 3.7 GB. pip and Python never write an installed file in
        # place (they add and unlink), so neither host's changes reach the other's venv.
        dest = c.path(VLLM_VENV)
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(vllm_venv), str(dest)], check=True)
    stage.stage(c.root)  # the CA and pip.conf the installs need (and a copy of the tree, for debugging)
    ssh_dir = c.root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pubkey)
    (ssh_dir / "authorized_keys").chmod(0o600)
    (c.root / "etc" / "ssh" / "sshd_config.d" / "localai-tier.conf").write_text(
        f"Port {ssh_port}\nListenAddress 127.0.0.1\nPasswordAuthentication no\n")
    c.boot()
    return c


@pytest.fixture(scope="module")
def pair(tier_lock, box, tmp_path_factory):
    OUT.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("pair")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "localai-tier", "-f", str(key)], check=True)
    (work / "inventory.yml").write_text(yaml.safe_dump(_inventory(key), sort_keys=False))
    (work / "localai.yaml").write_text(yaml.safe_dump(_config(), sort_keys=False))
    (work / "vars.yml").write_text(yaml.safe_dump(_vars(work), sort_keys=False))
    p = Pair(work, key)

    started = time.monotonic()
    with torn_down_on_sigterm():
        try:
            tarball = ct.cached_rootfs(include=(*ct.INCLUDE, "openssh-server"))
            seed = box.c.path(VLLM_VENV)  # absent if a failed test left the box uninstalled
            for name, n in NODES.items():
                p.nodes[name] = _boot(name, n["ssh"], tarball, (work / "id_ed25519.pub").read_text(),
                                      seed if seed.is_dir() else None)
            for name, n in NODES.items():
                wait_until_sync(lambda n=n: subprocess.run(
                    ["ssh", "-i", str(key), "-p", str(n["ssh"]), "-o", "StrictHostKeyChecking=no", "-o",
                     "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "root@127.0.0.1", "true"],
                    capture_output=True).returncode == 0, 60, f"sshd of {name}", interval=0.5)
            res, counts = p.deploy("install-1")
            if res.returncode != 0 or any(c.get("failed", 1) or c.get("unreachable", 1) for c in counts.values()):
                deploy_failed("ansible-playbook", res, counts, OUT / "pair-install-1.log")
            p.first_recap = counts
            yield p
        finally:
            for name, c in p.nodes.items():
                save_journals(c, f"-{name}")
                c.teardown()
            TIMINGS["pair"] = time.monotonic() - started
            (OUT / "timings-pair.txt").write_text("".join(f"{k}: {v:.1f} s\n" for k, v in TIMINGS.items()
                                                          if k.startswith("pair")))


def key(pair) -> str:
    return pair.nodes["node-a"].path("/etc/localai/api-keys").read_text().split()[0]


def chat(pair, content: str = "Say hi"):
    return http("POST", f"{GATEWAY}/v1/chat/completions", key(pair),
                {"model": "coder", "messages": [{"role": "user", "content": content}], "max_tokens": 4})


def served(port: int) -> float:
    """Requests this vLLM finished (its own counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    return sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} ([\d.e+]+)$", body, re.M))


def test_one_run_deploys_the_gateway_on_one_host_and_a_replica_on_each(pair):
    assert set(pair.first_recap) == set(NODES)
    assert all(c["failed"] == 0 and c["changed"] > 0 for c in pair.first_recap.values()), pair.first_recap
    assert pair.prop("node-a", "localai-gateway.service", "ActiveState") == "active"
    assert pair.sh("node-b", "systemctl list-unit-files 'localai-gateway*' --no-legend", check=False).stdout == ""
    assert pair.prop("node-a", "localai-model@coder.service", "ActiveState") == "active"
    assert pair.prop("node-b", "localai-model@coder.1.service", "ActiveState") == "active"
    # Each host runs only its own placement; the API keys stay on the gateway host.
    assert pair.sh("node-a", "systemctl list-units 'localai-model@*' --no-legend --plain").stdout.split()[0] \
        == "localai-model@coder.service"
    assert pair.sh("node-b", "test -e /etc/localai/api-keys || echo none").stdout.strip() == "none"
    # The config every host got lists both, as the inventory named them.
    cfg = yaml.safe_load(pair.nodes["node-b"].path("/etc/localai/localai.yaml").read_text())
    assert [(h["name"], h["port_offset"]) for h in cfg["hosts"]] == [("node-a", 0), ("node-b", 10)]
    plan = pair.nodes["node-b"].path("/etc/systemd/system/localai-model@coder.1.service.d/20-plan.conf").read_text()
    assert f"--port {MODEL_PORT + 10}" in plan


def replicas(pair) -> list[dict]:
    """coder's replicas as the gateway lists them ([] while it does not answer)."""
    status, body = http("GET", f"{GATEWAY}/v1/models", key(pair))
    if status != 200:
        return []
    (coder,) = [m for m in body["data"] if m["id"] == "coder"]
    return coder.get("replicas") or []


def replicas_listed(pair) -> None:
    """The gateway lists both of coder's replicas (the plan's, one per host), each ready."""
    wait_until_sync(lambda: [r["state"] for r in replicas(pair)] == ["ready", "ready"], 120,
                    "both of coder's replicas listed ready", detail=lambda: f"; listed: {replicas(pair)}")


def test_the_gateway_balances_over_both_hosts(pair):
    replicas_listed(pair)
    before = {p: served(p) for p in (MODEL_PORT, MODEL_PORT + 10)}
    results: list = []

    def client(i: int) -> None:
        for j in range(4):
            results.append(chat(pair, f"Question {i}-{j}: name a colour")[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == [200] * 16, results
    after = {p: served(p) for p in before}
    assert all(after[p] > before[p] for p in before), (before, after)
    models = http("GET", f"{GATEWAY}/v1/models", key(pair))[1]["data"]
    (coder,) = [m for m in models if m["id"] == "coder"]
    assert sorted(r["host"] for r in coder["replicas"]) == ["node-a", "node-b"], coder


# The requests that reach node-b's vLLM in the ~15 ms between SIGTERM and its listener
# closing get HTTP 500 ("cannot schedule new futures after shutdown": vLLM 0.32 aborts on
# SIGTERM); the gateway tries those on node-a, as it does a refused connection.
def test_stopping_one_hosts_model_server_loses_no_request(pair):
    replicas_listed(pair)
    results: list[tuple[float, object]] = []
    stop = threading.Event()

    def knock(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            results.append((time.monotonic(), chat(pair, f"client {i} turn {n}")[0]))

    threads = [threading.Thread(target=knock, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until_sync(lambda: len(results) >= 4, 60, "requests before the stop", interval=0.2)
        stopped = time.monotonic()
        pair.sh("node-b", "systemctl stop localai-model@coder.1.service")
        wait_until_sync(lambda: sum(1 for t, _ in results if t > stopped) >= 10, 120, "requests after the stop",
                        interval=0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        pair.sh("node-b", "systemctl start localai-model@coder.1.service", timeout=900)
    assert [s for _, s in results] == [200] * len(results), results
    wait_until_sync(lambda: pair.prop("node-b", "localai-model@coder.1.service", "ActiveState") == "active", 60,
                    "node-b's replica to be back", interval=0.2)
    replicas_listed(pair)  # routed to again, as any test that follows expects


def test_second_run_changes_nothing_on_either_host(pair):
    res, counts = pair.deploy("install-2")
    assert res.returncode == 0, res.stdout[-3000:]
    changed = re.findall(r"^TASK \[(.*?)\].*?\n(?:.*\n)*?changed:", res.stdout, re.M)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), f"{counts}; changed: {changed}"
    assert set(counts) == set(NODES)


# --- A rolling restart (issue #19): a change to what coder's servers run restarts them one at a
# time, each drained in the gateway first, while clients keep asking. ---

ROLLING_UNITS = {"node-a": "localai-model@coder.service", "node-b": "localai-model@coder.1.service"}
PACE_S = 1.0


def _streamed_chat(pair, content: str) -> tuple[int | None, str]:
    """A streamed chat through the gateway: (status, how it went: "" when it ended whole, with
    [DONE] after its finish reason, else what it sent)."""
    req = urllib.request.Request(f"{GATEWAY}/v1/chat/completions", method="POST", data=json.dumps(
        {"model": "coder", "messages": [{"role": "user", "content": content}], "max_tokens": 4,
         "stream": True}).encode(), headers={"content-type": "application/json",
                                             "authorization": f"Bearer {key(pair)}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, str(exc)
    events = [e.removeprefix("data: ") for e in body.split("\n\n") if e.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    finished = any(c.get("finish_reason") for chunk in chunks for c in chunk.get("choices", []))
    # An error event, not the text: the tiny model's random words include "error" now and then.
    broken = any("error" in chunk for chunk in chunks)
    return status, "" if events and events[-1] == "[DONE]" and finished and not broken else body


def _whole_chat(pair, content: str) -> tuple[int | None, str]:
    status, body = chat(pair, content)
    if status == 200 and body["choices"][0].get("finish_reason"):
        return status, ""
    return status, str(body)


def _restart_marks(pair) -> dict[str, tuple[str, int, int]]:
    """Each replica's unit: (MainPID, when it last left active, when it last turned active), the
    times on the kernel's monotonic clock, which both containers share."""
    out = {}
    for node, unit in ROLLING_UNITS.items():
        props = dict(line.split("=", 1) for line in pair.sh(node, f"systemctl show {unit} -p MainPID "
                     "-p ActiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic").stdout.split())
        out[node] = (props["MainPID"], int(props["ActiveExitTimestampMonotonic"]),
                     int(props["ActiveEnterTimestampMonotonic"]))
    return out


def _rolled(pair, before: dict, label: str) -> None:
    """Both replicas restarted, one after the other: one was back before the other went down."""
    after = _restart_marks(pair)
    assert all(after[n][0] != before[n][0] for n in ROLLING_UNITS), (label, before, after)
    (first, a), (second, b) = sorted(after.items(), key=lambda kv: kv[1][1])
    assert a[1] > before[first][2] and b[1] > before[second][2], (label, before, after)  # each went down
    assert a[2] < b[1], f"{label}: {first} was down until {a[2]}, {second} went down at {b[1]}"


def test_a_rolling_restart_of_the_replicas_loses_no_request(pair):
    replicas_listed(pair)
    source = pair.work / "localai.yaml"
    changed = yaml.safe_load(source.read_text())
    # A new environment variable for coder's servers: what they run changes, so both restart
    # (as for an upgrade of vLLM); the gateway only reloads. It stays in the pair's config (one
    # run, not a second to undo it): any later run of the playbook deploys the same thing.
    changed["models"][0]["env"] = {"LOCALAI_TIER_ROLLING": "1"}
    results: list[tuple[str, int | None, str]] = []
    stop = threading.Event()

    def ask(kind: str, send) -> None:
        n = 0
        # A request a second each (a pause between answers, not a wait for anything): at five a
        # second each the playbook's tasks ran 2-3 times slower on the two-core machine (the run took
        # 460 s, against ~60 s for one that changes nothing), and back to back it starves them.
        while not stop.wait(PACE_S):
            n += 1
            status, problem = send(pair, f"{kind} client, turn {n}: name a colour")
            results.append((kind, status, problem))

    clients = [threading.Thread(target=ask, args=args) for args in (("whole", _whole_chat),
                                                                   ("streamed", _streamed_chat))]
    for t in clients:
        t.start()
    try:
        before = _restart_marks(pair)
        source.write_text(yaml.safe_dump(changed, sort_keys=False))
        res, counts = pair.deploy("rolling")
        assert res.returncode == 0, res.stdout[-3000:]
        _rolled(pair, before, "rolling")
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=180)
    lost = [r for r in results if r[1] != 200 or r[2]]
    served = len(results) - len(lost)
    (OUT / "pair-rolling.txt").write_text(
        "a rolling restart of coder's 2 replicas, one at a time\n"
        f"requests during them: {len(results)} (whole and streamed), served {served}, lost {len(lost)}\n"
        + "".join(f"lost: {kind} {status} {problem[:300]}\n" for kind, status, problem in lost[:20]))
    assert not lost, lost[:5]
    assert served >= 10, results  # the clients did ask throughout
    assert all(c["failed"] == 0 and c["changed"] > 0 for c in counts.values()), counts
    replicas_listed(pair)


# --- a load: on_demand model on the other host -------------------------------------------------
# The demo's general model, placed on node-b only: the gateway on node-a starts and stops its unit
# there with `systemctl -H node-b` (ssh as the playbook's login user, whose key runs the bus bridge
# only; polkit there allows the model units only).
ON_DEMAND = "general"
ON_DEMAND_PORT = 18493  # node-b listens on it + 10
ON_DEMAND_UNIT = f"localai-model@{ON_DEMAND}.service"


def _remote_on_demand(cfg: dict) -> dict:
    """general, on_demand on node-b; with an on_demand model every model states its share (CPU: nominal)."""
    for m in cfg["models"]:
        m.setdefault("gpu_memory_utilization", 0.45)
    general = next(m for m in cfg["models"] if m["name"] == ON_DEMAND)
    cfg["gateway"]["min_residency"] = 0  # an unload takes effect at once
    return {**general, "port": ON_DEMAND_PORT, "hosts": ["node-b"], "load": "on_demand"}


def ask(pair, content: str):
    return http("POST", f"{GATEWAY}/v1/chat/completions", key(pair),
                {"model": ON_DEMAND, "messages": [{"role": "user", "content": content}], "max_tokens": 4},
                timeout=600)


def on_demand_state(pair) -> str:
    return pair.prop("node-b", ON_DEMAND_UNIT, "ActiveState")


def unloaded(pair) -> None:
    """Ask the gateway to unload it (Ollama's keep_alive 0) and wait until its unit on node-b is stopped."""
    status, body = http("POST", f"{GATEWAY}/api/generate", key(pair), {"model": ON_DEMAND, "keep_alive": 0})
    assert status == 200, (status, body)
    wait_until_sync(lambda: on_demand_state(pair) == "inactive", 120, f"{ON_DEMAND_UNIT} stopped on node-b",
                    interval=0.5)


def test_a_remote_on_demand_model_starts_on_its_host_and_loses_no_request(pair):
    unloaded(pair)  # as the gateway leaves it at its start (and any test before this one)
    results: list = []

    def client(i: int) -> None:
        results.append(ask(pair, f"Question {i}: name a colour"))

    # Every request arrives while the unit starts on node-b: each waits for it, none is lost.
    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=700)
    assert [status for status, _ in results] == [200] * 4, results
    assert on_demand_state(pair) == "active"
    assert pair.prop("node-a", ON_DEMAND_UNIT, "ActiveState") == "inactive"  # not started on the gateway's host
    assert served(ON_DEMAND_PORT + 10) >= 4
    unloaded(pair)


def test_the_gateways_key_manages_only_model_units_on_the_other_host(pair):
    def as_gateway(command: str):
        return pair.sh("node-a", f"runuser -u localai -- {command}", check=False, timeout=120)

    # What the key can do: speak to node-b's systemd, as the playbook's login user ...
    shown = as_gateway(f"systemctl -H node-b show -p Id --value {ON_DEMAND_UNIT}")
    assert (shown.returncode, shown.stdout.strip()) == (0, ON_DEMAND_UNIT), shown
    # ... which polkit lets manage the model units only: stopping any other unit is refused.
    refused = as_gateway("systemctl -H node-b --no-ask-password stop systemd-journald.service")
    assert refused.returncode != 0, refused
    assert "authentication required" in refused.stderr.lower() or "access denied" in refused.stderr.lower(), refused
    assert pair.prop("node-b", "systemd-journald.service", "ActiveState") == "active"
    # Any other command over the key runs the bus bridge instead (its forced command); no shell.
    other = as_gateway("ssh node-b echo forced-command-bypassed </dev/null")
    assert "forced-command-bypassed" not in other.stdout, other
