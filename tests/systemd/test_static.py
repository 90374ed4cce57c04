"""Fast checks of the deployment pieces that need no container (default tier).

Profiles fit the cards they are picked for, the budget check says something
useful, the config the role writes is one the gateway accepts, the unit
templates render to units `systemd-analyze verify` is silent about.
(The GPU and `localai status`/`logs` helpers are tested in tests/unit/test_ops.py.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import render  # noqa: E402

_spec = importlib.util.spec_from_file_location("localai_filters", REPO / "ansible" / "filter_plugins" / "localai.py")
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

DEFAULTS = render.role_defaults()
FLOORS = DEFAULTS["localai_profile_floors_mib"]
NAMED = DEFAULTS["localai_profiles_named"]
PROFILES = sorted((REPO / "etc" / "profiles").glob("*.yaml"))
# What nvidia-smi reports for real cards of each class (MiB).
CARDS = {"16gb": [16376, 16380], "24gb": [23028, 24564], "32gb": [32607], "48gb": [46068, 49140],
         "80gb": [81559, 95830, 97887]}


def plan_of(source: dict) -> dict:
    """`localai plan --json` of a config source, as the playbook asks it (the product decides)."""
    from gateway.plan.document import full_plan
    from gateway.plan.validate import parse_config

    return json.loads(json.dumps(full_plan(parse_config(yaml.safe_dump(source), "/dev/stdin"))))


def budget(source: dict, mib: int) -> dict:
    """The plan of a config as the playbook makes it on a host whose cards have `mib` MiB."""
    return plan_of(F.effective_config(source, accelerator="cuda", gpu_memory_gib=mib / 1024))


def test_every_profile_is_picked_by_vram_or_by_name():
    assert sorted(p.stem for p in PROFILES) == sorted([*FLOORS, *NAMED])
    assert sorted(FLOORS) == sorted(CARDS)


@pytest.mark.parametrize("profile", sorted(FLOORS))
def test_profile_fits_every_card_it_is_picked_for(profile):
    cfg = yaml.safe_load((REPO / "etc" / "profiles" / f"{profile}.yaml").read_text())
    for mib in CARDS[profile] + [FLOORS[profile]]:
        assert F.select_profile(mib, FLOORS) == profile
        servers = F.placements(budget(cfg, mib))  # the plan refuses a card too small (ConfigError)
        assert all(s["memory"]["full_sequences"] >= 1 for s in servers), servers
    names = {m["name"]: m for m in cfg["models"]}
    assert names["coder"].get("default") is True and names["coder"]["max_model_len"] >= 65536


@pytest.mark.parametrize("profile", [p.stem for p in PROFILES] + ["demo"])
def test_written_config_is_one_the_gateway_accepts(profile, tmp_path):
    from gateway.plan.validate import parse_config

    src = REPO / "etc" / ("demo.yaml" if profile == "demo" else f"profiles/{profile}.yaml")
    cfg = F.effective_config(yaml.safe_load(src.read_text()), all_tiny=profile == "demo",
                             models_dir="/var/lib/localai/models", vllm_python="/opt/localai/venv-vllm/bin/python",
                             api_key_file="/run/localai-gateway/api-keys",
                             webui_dir="/opt/localai/webui")
    parsed = parse_config(yaml.safe_dump(cfg, sort_keys=False), tmp_path / "localai.yaml")
    assert str(parsed.vllm.python) == "/opt/localai/venv-vllm/bin/python"
    if profile == "demo":
        assert [m.model for m in parsed.managed_models] == [
            f"/var/lib/localai/models/tiny-{m.name}" for m in parsed.managed_models]


def test_profile_picked_by_vram():
    assert F.select_profile(8192, FLOORS) == ""
    assert F.select_profile(16376, FLOORS) == "16gb"
    assert F.select_profile(22528, FLOORS) == "16gb"  # a 22 GiB card: the 24gb agent window does not fit
    assert F.select_profile(24564, FLOORS) == "24gb"
    assert F.select_profile(32607, FLOORS) == "32gb"
    assert F.select_profile(81559, FLOORS) == "80gb"
    assert F.select_profile(97887, FLOORS) == "80gb"


def test_the_play_refuses_a_model_its_card_cannot_hold_in_the_plans_words():
    from gateway.config.schema import ConfigError

    models = [{"name": "big", "model": "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ", "port": 8101,
               "gpu_memory_utilization": 0.5, "max_model_len": 32768}]
    with pytest.raises(ConfigError, match=r"models\[0\]\.max_model_len: model 'big' .* on its card: its share "
                                          r"0\.5 x 23\.99 GiB .* less than one sequence of max_model_len 32768"):
        budget({"models": models}, 24564)


def _models(*shares, on_demand=()):
    return [{"name": n, "model": "Qwen/Qwen2.5-7B-Instruct-AWQ", "port": 8101 + i, "gpu_memory_utilization": u,
             "max_model_len": 2048, "default": i == 0, **({"load": "on_demand"} if n in on_demand else {})}
            for i, (n, u) in enumerate(zip("abc"[:len(shares)], shares, strict=True))]


def test_which_models_share_a_card_is_the_products_reckoning():
    from gateway.config.schema import ConfigError

    # Shares that leave no room for each other: the product refuses the config (the playbook
    # shows its message); at most 1.0 of a card, not the 0.92 the playbook once used.
    with pytest.raises(ConfigError, match="sums to 1.10"):
        plan_of({"models": _models(0.6, 0.5)})
    assert budget({"models": _models(0.5, 0.5)}, 49140)
    # on_demand models need only fit one at a time beside the always ones (0.45 + 0.5 + 0.5 is
    # more than a card, and fine): the old sum over every model refused this.
    models = _models(0.45, 0.5, 0.5, on_demand=("b", "c"))
    plan = plan_of({"models": models})
    assert plan["residency"] == {"always": ["a"], "on_demand_together": [["b"], ["c"]]}
    assert len(F.memory_lines(F.placements(budget({"models": models}, 24564)))) == 3


def test_a_model_pinned_to_a_card_the_host_lacks_is_named():
    models = _models(0.9)
    models[0]["env"] = {"CUDA_VISIBLE_DEVICES": "1"}
    servers = F.placements(plan_of({"models": models}))
    assert [s["devices"] for s in servers] == ["1"]
    gpus = [{"index": 0, "name": "small", "memory_total_mib": 4096},
            {"index": 1, "name": "big", "memory_total_mib": 24564}]
    assert F.missing_cards(servers, gpus) == []
    assert F.missing_cards(servers, gpus[:1]) == ["Model 'a' is placed on GPU 1, but this host has no such GPU."]


def test_nvidia_smi_parsing():
    rows = ["0, NVIDIA L4, 23034, 580.95.05", "1, NVIDIA RTX 6000 Ada Generation, 49140, 580.95.05", "junk"]
    gpus = F.parse_nvidia_smi(rows)
    assert gpus == [
        {"index": 0, "name": "NVIDIA L4", "memory_total_mib": 23034, "driver_version": "580.95.05"},
        {"index": 1, "name": "NVIDIA RTX 6000 Ada Generation", "memory_total_mib": 49140,
         "driver_version": "580.95.05"},
    ]


def test_ram_budget_for_the_cpu_build():
    demo = yaml.safe_load((REPO / "etc" / "demo.yaml").read_text())
    servers = F.placements(plan_of(demo))
    assert [s["env"]["VLLM_CPU_KVCACHE_SPACE"] for s in servers] == ["1", "1"]  # vllm.env, as the plan merges it
    assert F.ram_report(servers, 24 * 1024)["ok"]
    assert not F.ram_report(servers, 4 * 1024)["ok"]


def test_a_model_server_restarts_only_when_what_it_runs_changes():
    demo = yaml.safe_load((REPO / "etc" / "demo.yaml").read_text())

    def prints(cfg):
        return {s["unit"]: F.server_fingerprint(s) for s in F.placements(plan_of(cfg))}

    before = prints(demo)
    assert set(before) == {"coder", "general"} and len(set(before.values())) == 2
    edited = yaml.safe_load(yaml.safe_dump(demo))
    edited["models"][0]["aliases"].append("py")
    edited["models"][1]["presets"]["po"]["temperature"] = 0.7
    edited["gateway"]["max_queue"] = 5
    assert prints(edited) == before  # aliases, presets, gateway: the gateway reloads, no server restarts
    edited["models"][1]["max_model_len"] = 1024
    after = prints(edited)
    assert after["coder"] == before["coder"] and after["general"] != before["general"]
    edited["vllm"]["env"]["OMP_NUM_THREADS"] = "2"
    assert all(prints(edited)[u] != after[u] for u in after)  # every server's env


def test_on_demand_models_sleep_as_the_installed_vllm_can_whatever_host_plans_them():
    """The plan runs before vLLM is installed (and a gateway host may never have it): the
    playbook says which sleep mode the hosts' vLLM has, so the argv is the same on every run."""
    demo = yaml.safe_load((REPO / "etc" / "demo.yaml").read_text())
    for m in demo["models"]:
        m.update(load="on_demand", gpu_memory_utilization=0.45)
    demo["models"][1]["sleep_mode"] = "off"  # said outright: kept

    def argv(accelerator):
        plan = plan_of(F.effective_config(demo, accelerator=accelerator))
        return {p["unit"]: p["argv"] for p in F.placements(plan)}

    on_cuda, on_cpu = argv("cuda"), argv("cpu")
    assert "--enable-sleep-mode" in on_cuda["coder"] and "--enable-sleep-mode" not in on_cpu["coder"]
    assert "--enable-sleep-mode" not in on_cuda["general"]


def test_placements_per_host_from_a_config_with_hosts():
    demo = yaml.safe_load((REPO / "etc" / "demo.yaml").read_text())
    demo["hosts"] = [{"name": "gpu1", "address": "10.0.0.11"},
                     {"name": "gpu2", "address": "10.0.0.12", "port_offset": 10}]
    demo["models"][0]["replicas"] = 2
    plan = plan_of(demo)
    assert sorted(p["unit"] for p in F.placements(plan)) == ["coder", "coder.1", "general"]
    on_gpu2 = F.placements(plan, "gpu2")
    assert [p["model"] for p in on_gpu2] == ["coder"] and on_gpu2[0]["port"] == 8111
    assert "8111" in on_gpu2[0]["argv"]  # the argv the unit on gpu2 execs: its own port
    assert F.placements(plan, "gpu3") == []


def test_nodes_of_a_model_spanning_hosts_must_run_one_vllm():
    cfg = {"hosts": [{"name": "a", "address": "10.0.0.1"}, {"name": "b", "address": "10.0.0.2"},
                     {"name": "c", "address": "10.0.0.3"}],
           "models": [{"name": "big", "model": "/m/big", "port": 8001, "nodes": 2, "hosts": ["a", "b"],
                       "default": True},
                      {"name": "small", "model": "/m/small", "port": 8002, "hosts": ["c"]}]}
    plan = plan_of(cfg)
    assert F.node_mismatches(plan, {"a": "0.32.0", "b": "0.32.0", "c": "0.31.0"}) == []  # c is no node of big
    (problem,) = F.node_mismatches(plan, {"a": "0.32.0", "b": "", "c": "0.32.0"})
    assert "Model 'big' (replica 0) spans hosts whose vLLM differ (a 0.32.0, b none)" in problem


def test_hub_ids_and_mounts():
    assert F.is_hub_id("Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert not F.is_hub_id("/var/lib/localai/models/tiny-coder") and not F.is_hub_id("~/m/x")
    assert F.hub_cache_dirname("Qwen/Qwen2.5-7B") == "models--Qwen--Qwen2.5-7B"
    mounts = [{"mount": "/", "size_available": 10}, {"mount": "/var/lib", "size_available": 20},
              {"mount": "/var/lib/localai-other", "size_available": 30}]
    assert F.mount_free_bytes(mounts, "/var/lib/localai") == 20
    assert F.mount_free_bytes(mounts, "/opt/localai") == 10


# --- units -------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    prefix = root / "opt"
    cli = prefix / "venv-gateway" / "bin" / "localai"
    cli.parent.mkdir(parents=True)
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    units = root / "etc"
    render.render_units(units, localai_prefix=str(prefix))
    return units


def test_model_unit_runs_the_plan_not_an_argv(rendered):
    text = (rendered / "localai-model@.service").read_text()
    assert re.search(r"^ExecStart=\S+/localai run-model %i --config /etc/localai/localai.yaml$", text, re.M)
    assert re.search(r"^ExecStartPost=\S+/localai wait-ready %i ", text, re.M)
    assert "vllm.entrypoints" not in text and "--model" not in text
    for line in ["DevicePolicy=closed", "DeviceAllow=char-nvidia* rw", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "ProtectHome=yes", "Restart=on-failure", "PartOf=localai.target",
                 "SyslogIdentifier=localai-model-%i", "WantedBy=localai.target"]:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not re.search(r"^(PrivateDevices|MemoryDenyWriteExecute)=", text, re.M)
    assert int(re.search(r"^TimeoutStartSec=(\d+)", text, re.M).group(1)) >= 900


def test_gateway_unit_notifies_reloads_and_takes_a_private_copy_of_the_keys(rendered):
    text = (rendered / "localai-gateway.service").read_text()
    copy = "/usr/bin/install -m 0400 -o localai -g localai /etc/localai/api-keys /run/localai-gateway/api-keys"
    for line in ["Type=notify", "NotifyAccess=main", "WatchdogSec=30", "SyslogIdentifier=localai-gateway",
                 "RuntimeDirectoryMode=0711", f"ExecStartPre=+{copy}",
                 f"ExecReload=+/bin/sh -c '{copy} && kill -HUP $$MAINPID'",  # fresh keys, then SIGHUP
                 "Requires=localai-gateway.socket", "LogNamespace=localai", "PartOf=localai.target"]:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not re.search(r"^PrivateDevices=", text, re.M)
    assert "LogNamespace=localai" in (rendered / "localai-model@.service").read_text()
    socket_unit = (rendered / "localai-gateway.socket").read_text()
    assert re.search(r"^ListenStream=127\.0\.0\.1:8080$", socket_unit, re.M)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_analyze
def test_units_verify_silently(rendered):
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", "localai-gateway.service", "localai-gateway.socket",
                          "localai.target", "localai-model@coder.service"], cwd=rendered, capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


@needs_analyze
@pytest.mark.parametrize("unit,limit", [("localai-gateway.service", 5.0), ("localai-model@coder.service", 5.0)])
def test_exposure_scores(rendered, unit, limit):
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit], cwd=rendered,
                         capture_output=True, text=True)
    m = re.search(r"exposure level for \S+: ([\d.]+)", res.stdout)
    assert m, res.stdout[-500:] + res.stderr
    assert float(m.group(1)) <= limit, res.stdout[-300:]



# --- role argument specs -------------------------------------------------------

ROLES = sorted(p.parent.parent for p in (REPO / "ansible" / "roles").glob("*/defaults/main.yml"))


@pytest.mark.parametrize("role", [r.name for r in ROLES])
def test_argument_spec_describes_every_default_and_nothing_else(role):
    """meta/argument_specs.yml says what each knob is; defaults/main.yml alone says its value."""
    root = REPO / "ansible" / "roles" / role
    defaults = yaml.safe_load((root / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((root / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, spec in options.items():
        assert spec.get("type") and spec.get("description"), name
        assert "default" not in spec, f"{name}: its value belongs in defaults/main.yml only"
        assert not spec.get("required"), f"{name} has a default, so it is not required"
