"""The plan across hosts: replicas placed on the cards with room, explicit hosts, models spanning
hosts (head and workers), ports per host, unit names; a plan that can't be made says which host
and card lack what, at the config's line."""

import json
from pathlib import Path

import pytest

from gateway.plan.document import full_plan
from gateway.plan.placement import endpoints, placements, server_plan
from gateway.plan.validate import parse_config
from tests.harness import (
    GatewayProcess,
    free_port,
    localai,
    running_up,
    standin_python,
    wait_until,
    wait_until_sync,
)
from tests.unit.test_config import problems

TWO_HOSTS = """\
hosts:
  - name: gpu1
    address: 10.0.0.11
  - name: gpu2
    address: 10.0.0.12
    gpus: 2
    port_offset: 100
    node_ip: 192.168.0.12
models:
  - name: coder
    default: true
    model: /m/coder
    port: 8001
    replicas: 2
    gpu_memory_utilization: 0.5
  - name: chat
    model: /m/chat
    port: 8002
    hosts: [gpu2]
    gpu_memory_utilization: 0.7
  - name: big
    model: /m/big
    port: 8010
    nodes: 2
    gpu_memory_utilization: 0.4
  - name: remote
    url: http://10.1.2.3:8000/v1
"""


def table(cfg) -> list[tuple]:
    return [(p.unit, p.host, p.port, p.devices, p.role, p.url) for p in placements(cfg)]


def test_replicas_spread_over_hosts_onto_the_card_with_room():
    cfg = parse_config(TWO_HOSTS)
    assert table(cfg) == [
        # The explicit host is placed first (chat takes gpu2's GPU 0), then the multi-node model,
        # then replicas spread over hosts, each on the card with the most room.
        ("coder", "gpu1", 8001, "0", "server", "http://10.0.0.11:8001"),
        ("coder.1", "gpu2", 8101, "1", "server", "http://10.0.0.12:8101"),
        ("chat", "gpu2", 8102, "0", "server", "http://10.0.0.12:8102"),
        ("big", "gpu1", 8010, "0", "head", "http://10.0.0.11:8010"),
        ("big.node1", "gpu2", 0, "1", "worker", ""),
    ]
    # The gateway balances over servers and heads; an external model is its one URL.
    assert [p.url for p in endpoints(cfg, "coder")] == ["http://10.0.0.11:8001", "http://10.0.0.12:8101"]
    assert [p.unit for p in endpoints(cfg, "big")] == ["big"]
    (remote,) = endpoints(cfg, "remote")
    assert (remote.role, remote.url, remote.host, remote.port) == ("external", "http://10.1.2.3:8000", "10.1.2.3", 8000)
    # Computed once per config (a changed copy is planned afresh); the same text gives the same plan.
    assert cfg.seating() is cfg.seating() and table(parse_config(TWO_HOSTS)) == table(cfg)
    moved = cfg.model_copy(update={"hosts": list(reversed(cfg.hosts or []))})
    assert placements(moved)[0].host == "gpu2" and placements(cfg)[0].host == "gpu1"
    coder1 = server_plan(cfg.model("coder"), cfg.vllm, placements(cfg)[1])
    assert coder1.env["CUDA_VISIBLE_DEVICES"] == "1" and coder1.unit == "coder.1"
    assert "--host 10.0.0.12 --port 8101" in " ".join(coder1.argv)


def test_a_model_spanning_hosts_gets_vllms_multinode_launch():
    cfg = parse_config(TWO_HOSTS)
    head, worker = (p for p in placements(cfg) if p.model == "big")
    big = cfg.model("big")
    h, w = server_plan(big, cfg.vllm, head), server_plan(big, cfg.vllm, worker)
    common = "--nnodes 2 --node-rank {} --master-addr 10.0.0.11 --master-port 18010 --pipeline-parallel-size 2"
    assert common.format(0) in " ".join(h.argv) and "--headless" not in h.argv
    assert common.format(1) in " ".join(w.argv) and w.argv[-1] == "--headless"
    # vLLM's API server module ignores --headless: a worker runs `vllm serve --headless` by our script.
    assert h.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and w.argv[1].endswith("headless.py")
    assert "--port" not in w.argv  # a worker serves no API
    # Inter-node traffic on each host's private interface (node_ip, else its address).
    assert h.env["VLLM_HOST_IP"] == "10.0.0.11" and w.env["VLLM_HOST_IP"] == "192.168.0.12"
    # The model's own extra_args come last, so they may choose other parallel sizes.
    own = "    extra_args: [--tensor-parallel-size, '2', --pipeline-parallel-size, '1']\n"
    cfg = parse_config(TWO_HOSTS.replace("    nodes: 2\n", "    nodes: 2\n    master_port: 29600\n" + own))
    head = next(p for p in placements(cfg) if p.model == "big")
    argv = server_plan(cfg.model("big"), cfg.vllm, head).argv
    assert "--master-port 29600" in " ".join(argv) and argv[-4:] == ["--tensor-parallel-size", "2",
                                                                     "--pipeline-parallel-size", "1"]


def test_pipeline_across_cpu_hosts_needs_compilation():
    cpu = (TWO_HOSTS.replace("    address: 10.0.0.12\n    gpus: 2\n", "    address: 10.0.0.12\n    gpus: 0\n")
           .replace("gpu_memory_utilization: 0.7", "gpu_memory_utilization: 0.1"))
    assert [p.devices for p in placements(parse_config(cpu)) if p.host == "gpu2"] == [None, None, None]
    # A CPU host is one budget of 1.0, named by the host alone.
    assert any(p[2] == "no room for big replica 0 node 1: host gpu2: big needs 0.40, 0.30 left (chat 0.70)"
               for p in problems(cpu.replace("gpu_memory_utilization: 0.1", "gpu_memory_utilization: 0.7")))
    eager = cpu.replace("    nodes: 2\n", "    nodes: 2\n    extra_args: [--enforce-eager]\n")
    assert problems(eager) == [(25, "models[2].extra_args",
                                "--enforce-eager with pipeline parallel across CPU hosts fails at the first request "
                                "(vLLM's CPU build sets up its pipeline in the compiled warm-up): drop "
                                "--enforce-eager, or add --tensor-parallel-size 2 --pipeline-parallel-size 1")]
    # Tensor parallel across them works eager (measured: /tmp/team/multinode.md), and so do GPU hosts.
    parse_config(eager.replace("[--enforce-eager]", "[--enforce-eager, --tensor-parallel-size, '2', '-pp=1']"))
    parse_config(TWO_HOSTS.replace("    nodes: 2\n", "    nodes: 2\n    extra_args: [--enforce-eager]\n"))


def test_explicit_hosts_and_same_host_replicas_get_their_own_ports():
    cfg = parse_config(TWO_HOSTS.replace("    replicas: 2\n", "    hosts: [gpu2, gpu2, gpu1]\n")
                       .replace("gpu_memory_utilization: 0.5", "gpu_memory_utilization: 0.3")
                       .replace("port: 8002", "port: 8003"))
    coder = [(p.unit, p.host, p.port, p.devices) for p in placements(cfg) if p.model == "coder"]
    # Both replicas on gpu2 fit beside chat only on GPU 1 (0.3 + 0.7 would fill GPU 0 exactly,
    # the freest card wins); the replica index is global, the port counts per host.
    assert coder == [("coder", "gpu2", 8101, "1"), ("coder.1", "gpu2", 8102, "1"), ("coder.2", "gpu1", 8001, "0")]


def test_a_config_without_hosts_plans_exactly_as_before():
    text = """\
models:
  - name: coder
    default: true
    model: /m/coder
    port: 8101
    gpu_memory_utilization: 0.45
    env: {CUDA_VISIBLE_DEVICES: "0,1"}
  - name: general
    model: /m/general
    port: 8102
"""
    cfg = parse_config(text)
    assert table(cfg) == [("coder", "local", 8101, "0,1", "server", "http://127.0.0.1:8101"),
                          ("general", "local", 8102, None, "server", "http://127.0.0.1:8102")]
    # general sets no share: it takes what coder's leaves of vLLM's 0.9 on the cards they share.
    assert [p.share for p in placements(cfg)] == [0.45, 0.45]
    # Two replicas on the one machine: two ports, and the budget counts both (0.9: general needs its own share).
    cfg = parse_config(text.replace("    port: 8101\n", "    port: 8101\n    replicas: 2\n").replace("8102", "8110")
                       .replace("port: 8110\n", "port: 8110\n    gpu_memory_utilization: 0.1\n"))
    assert [(p.unit, p.port) for p in placements(cfg)] == [("coder", 8101), ("coder.1", 8102), ("general", 8110)]
    (found,) = problems(text.replace("    port: 8101\n", "    port: 8101\n    replicas: 3\n").replace("8102", "8110"))
    assert found[1:] == ("models[0].gpu_memory_utilization",  # general sets no share: takes none
                         "gpu_memory_utilization of coder (load: always) sums to 1.35 on one card; "
                         "it must be at most 1")


@pytest.mark.parametrize("change, line, key, words", [
    # A plan that doesn't fit: which host and card lack what, and who holds it.
    (("replicas: 2", "replicas: 3"), 15, "models[0].gpu_memory_utilization",
     "no room for coder replica 2: host gpu2 GPU 0: coder needs 0.50, 0.30 left (chat 0.70); "
     "host gpu1 GPU 0: coder needs 0.50, 0.10 left (big 0.40, coder 0.50)"),
    (("hosts: [gpu2]", "hosts: [gpu1, gpu1]"), 20, "models[1].gpu_memory_utilization",
     "no room for chat on host gpu1: host gpu1 GPU 0: chat needs 0.70, 0.30 left (chat 0.70)"),
    (("hosts: [gpu2]", "hosts: [gpu3]"), 19, "models[1].hosts[0]", "no host named 'gpu3' (hosts: gpu1, gpu2)"),
    (("hosts: [gpu2]", "hosts: [gpu2]\n    replicas: 2"), 20, "models[1].replicas",
     "replicas: 2 but hosts lists 1 replica"),
    (("nodes: 2", "nodes: 3"), 24, "models[2].nodes", "nodes: 3 needs 3 hosts; the config has 2 (gpu1, gpu2)"),
    (("    nodes: 2\n", "    hosts: [gpu1, gpu1]\n    nodes: 2\n"), 24, "models[2].hosts",
     "the 2 nodes of one server need 2 different hosts (gpu1, gpu1)"),
    (("    nodes: 2\n", "    hosts: [gpu1, gpu2, gpu1]\n    nodes: 2\n"), 24, "models[2].hosts",
     "3 hosts for a model of nodes: 2"),
    (("    port: 8002\n", "    port: 8002\n    master_port: 9000\n"), 19, "models[1].master_port",
     "nodes > 1 only"),
    (("  - name: gpu2\n", "  - name: gpu1\n"), 4, "hosts[1].name", "host 'gpu1' is already hosts[0]"),
    # Ports collide per host, after port_offset and replicas' own ports: coder.1 is 8101 on gpu2.
    (("port: 8002", "port: 8001"), 18, "models[1].port",
     "port 8101 on host gpu2 is already used by models[0].port (replica 1)"),
    (("port: 8010", "port: 8001"), 23, "models[2].port", "port 8001 on host gpu1 is already used by models[0].port"),
    (("    nodes: 2\n", "    nodes: 2\n    master_port: 8001\n"), 25, "models[2].master_port",
     "port 8001 on host gpu1 is already used by models[0].port"),
    (("port_offset: 100", "port_offset: 57600"), 13, "models[0].port",
     "port 65601 on host gpu2 (after port_offset and the replica's own port) is above 65535"),
    # A card the model pins itself: on an explicit host it must exist; free replicas skip hosts without it.
    (("hosts: [gpu2]\n", "hosts: [gpu1]\n    env: {CUDA_VISIBLE_DEVICES: '1'}\n"), 20,
     "models[1].env.CUDA_VISIBLE_DEVICES", "pins GPU 1, but host gpu1 has 1 GPU (0 to 0)"),
    (("    replicas: 2\n", "    replicas: 2\n    env: {CUDA_VISIBLE_DEVICES: '1'}\n"), 16,
     "models[0].gpu_memory_utilization", "no room for coder replica 1: host gpu1 has no GPU 1"),
])
def test_bad_plans_name_key_and_line(change, line, key, words):
    found = problems(TWO_HOSTS.replace(*change))
    assert any(p[0] == line and p[1] == key and words in p[2] for p in found), found


def test_on_demand_models_take_turns_on_the_freest_card_of_any_host():
    text = TWO_HOSTS.replace("  - name: remote\n", """\
  - name: swap1
    model: /m/s1
    port: 8020
    gpu_memory_utilization: 0.3
    load: on_demand
  - name: swap2
    model: /m/s2
    port: 8021
    gpu_memory_utilization: 0.3
    load: on_demand
  - name: remote
""").replace("gpu_memory_utilization: 0.4", "gpu_memory_utilization: 0.3")
    cfg = parse_config(text)
    # Only load: always models count against room: each on_demand model goes to the freest card
    # beside them (gpu2's GPU 0, 0.3 left beside chat), and there they take turns.
    seats = {p.unit: (p.host, p.devices) for p in placements(cfg)}
    assert seats["swap1"] == seats["swap2"] == ("gpu2", "0")
    assert cfg.residency().together() == [["swap1"], ["swap2"]]
    # Pinned beside the always models where they don't fit: named by host and card.
    found = problems(text.replace("    load: on_demand\n  - name: swap2", "    load: on_demand\n    hosts: [gpu1]\n"
                                  "    env: {CUDA_VISIBLE_DEVICES: '0'}\n  - name: swap2"))
    assert [p[1:] for p in found] == [("models[3].gpu_memory_utilization",
                                       "swap1 (load: on_demand) does not fit beside the load: always models coder, "
                                       "big on host gpu1 GPU 0: together they take 1.10 of one card, more than 1")]


def test_an_explicit_host_pinned_past_its_card_names_host_and_card():
    pinned = "hosts: [gpu2]\n    env: {CUDA_VISIBLE_DEVICES: '1'}\n"
    found = problems(TWO_HOSTS.replace("hosts: [gpu2]\n", pinned).replace("replicas: 2\n", pinned))
    assert [p[1:] for p in found] == [("models[1].gpu_memory_utilization",
                                       "gpu_memory_utilization of coder, chat (load: always) sums to 1.20 "
                                       "on host gpu2 GPU 1; it must be at most 1")]


def test_hosts_of_a_single_host_config_are_local_only():
    text = "models:\n  - name: m\n    model: /m\n    port: 8101\n    hosts: [gpu1]\n"
    assert problems(text) == [(5, "models[0].hosts[0]",
                               "no host named 'gpu1': without a 'hosts:' list the only host is 'local'")]
    assert [p.host for p in placements(parse_config(text.replace("gpu1", "local")))] == ["local"]


def test_check_and_plan_show_every_host_and_card(tmp_path):
    path = tmp_path / "localai.yaml"
    path.write_text(TWO_HOSTS)
    run = localai("check", config=path, check=True)
    # Each replica adds its slots (vLLM's default max_num_seqs, 256) to the model's.
    assert ("model coder  (default): managed at http://10.0.0.11:8001, 2 replicas, max_concurrency 512 "
            "(256 per replica)") in run.stdout
    assert ("host gpu2 at 10.0.0.12, 2 GPUs, port_offset 100: 3 servers\n"
            "    GPU 0: chat 0.7  (0.70 of 1 always resident)\n"
            "    GPU 1: coder 0.5, big 0.4  (0.90 of 1 always resident)\n"
            "    localai-model@coder.1: coder replica 1, server, port 8101, CUDA_VISIBLE_DEVICES=1\n") in run.stdout
    assert ("localai-model@big.node1: big replica 0, worker (node 1 of 2, master 10.0.0.11:18010, "
            "VLLM_HOST_IP=192.168.0.12), no HTTP port, CUDA_VISIBLE_DEVICES=1") in run.stdout
    run = localai("plan", "--json", config=path, check=True)
    plan = json.loads(run.stdout)
    cfg = parse_config(TWO_HOSTS)
    assert [p["unit"] for p in plan["placements"]] == [p.unit for p in placements(cfg)]
    worker = plan["placements"][-1]
    assert worker["argv"] == server_plan(cfg.model("big"), cfg.vllm, placements(cfg)[-1]).argv
    assert plan["hosts"][0]["cards"] == {"0": {"coder": 0.5, "big": 0.4}}
    assert full_plan(cfg)["models"][0]["replicas"] == 2
    run = localai("plan", "--host", "gpu2", config=path, check=True)
    assert [p["unit"] for p in json.loads(run.stdout)["placements"]] == ["coder.1", "chat", "big.node1"]


def recording_python(tmp_path: Path, wait: bool = True) -> Path:
    """A stand-in vLLM that writes down its argv and pinned cards (to tmp_path/ran-PORT), then
    serves until stopped (or exits)."""
    return standin_python(tmp_path, "--fake-record", str(tmp_path), *([] if wait else ["--fake-then", "exit"]))


def test_run_model_execs_the_placement_its_unit_names(tmp_path):
    path = tmp_path / "localai.yaml"
    path.write_text(TWO_HOSTS.replace("models:", f"vllm:\n  python: {recording_python(tmp_path, wait=False)}\n"
                                                 "models:"))
    for unit in ("coder.1", "big.node1"):
        localai("run-model", unit, config=path, check=True)
    argv, devices = json.loads((tmp_path / "ran-8101").read_text())
    assert argv[argv.index("--served-model-name") + 1] == "coder" and devices == "1"
    argv, devices = json.loads((tmp_path / "ran-worker").read_text())
    assert argv[-1] == "--headless" and argv[argv.index("--node-rank") + 1] == "1"
    missing = localai("run-model", "coder.7", config=path)
    assert missing.returncode == 2
    assert "no server named 'coder.7' in the plan (servers: coder, coder.1, chat, big, big.node1)" in missing.stderr


def test_up_on_a_config_with_hosts_asks_which_host_this_is(tmp_path):
    path = tmp_path / "localai.yaml"
    path.write_text(TWO_HOSTS)
    for extra, says in (([], "no host named local (hosts: gpu1, gpu2); say which host this machine is with --host"),
                        (["--host", "gpu1", "--host", "gpu9"], "no host named gpu9 (hosts: gpu1, gpu2)")):
        run = localai("up", *extra, config=path)
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr


def test_up_starts_only_the_servers_placed_on_its_host(tmp_path):
    port, gateway = free_port(), free_port()
    path = tmp_path / "localai.yaml"
    path.write_text(f"vllm:\n  python: {recording_python(tmp_path)}\ngateway:\n  port: {gateway}\n  webui: false\n"
                    "hosts:\n  - {name: a, address: 127.0.0.1, gpus: 0}\n"
                    "  - {name: b, address: 127.0.0.1, gpus: 0, port_offset: 1}\n"
                    f"models:\n  - name: m\n    model: /m\n    port: {port}\n    replicas: 2\n")
    up = GatewayProcess("up", path, "--host", "b", log=tmp_path / "up.log").start()
    try:
        wait_until_sync(lambda: (tmp_path / f"ran-{port + 1}").exists(), 30, "m.1 started")
    finally:
        assert up.stop(timeout=30) == set()
    out = up.log_text()
    started = [json.loads(line)["msg"] for line in out.splitlines()
               if line.startswith("{") and "started model server" in line]
    assert [s.split(" (pid")[0] for s in started] == ["started model server m.1"], out
    argv, _ = json.loads((tmp_path / f"ran-{port + 1}").read_text())
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


async def test_up_starts_every_replica_placed_on_this_machine(tmp_path):
    port = free_port()
    text = (f"vllm:\n  python: {recording_python(tmp_path)}\ngateway:\n  port: {free_port()}\n  webui: false\n"
            f"models:\n  - name: m\n    model: /m\n    port: {port}\n    replicas: 2\n")
    cfg = parse_config(text, tmp_path / "localai.yaml")
    ran = [tmp_path / f"ran-{port}", tmp_path / f"ran-{port + 1}"]
    async with running_up(cfg, api_keys=[]):
        await wait_until(lambda: all(p.exists() and p.read_text() for p in ran))
    for p, want in zip(ran, (port, port + 1), strict=True):
        argv, _ = json.loads(p.read_text())
        assert argv[argv.index("--port") + 1] == str(want)


def test_an_on_demand_model_with_replicas_is_placed_on_each_host_and_resident_whole():
    cfg = parse_config("""\
hosts:
  - {name: a, gpus: 0}
  - {name: b, gpus: 0}
models:
  - {name: coder, model: /m/c, port: 8001, default: true, gpu_memory_utilization: 0.5}
  - {name: swap, model: /m/s, port: 8002, replicas: 2, load: on_demand, gpu_memory_utilization: 0.5}
  - {name: other, model: /m/o, port: 8003, hosts: [b], load: on_demand, gpu_memory_utilization: 0.6}
""")
    assert sorted(p.host for p in placements(cfg) if p.model == "swap") == ["a", "b"]  # one replica on each
    # swap needs its share on both hosts; other takes more of b than swap leaves: the two take turns.
    assert cfg.residency().together() == [["swap"], ["other"]]
