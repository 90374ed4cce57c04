"""The shipped profiles: each one plans, `localai check` shows weights + KV cache per model and
card, the agent model's window holds an agent session, and a window a share cannot hold is
refused with the file, line, model and card."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.plan.catalog import facts

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "etc" / "profiles").glob("*.yaml"))
# Every 2026 profile gives its agent model at least this window (an agent's system prompt and
# tools alone are 15-30k tokens); the 2024 ones are kept as they were.
AGENT_WINDOW = 65536


def check(path: Path, capsys) -> str:
    assert cli_main.main(["check", "--config", str(path)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("profile", [p.stem for p in PROFILES])
def test_check_shows_weights_and_kv_cache_per_model_and_card(profile, capsys):
    path = REPO / "etc" / "profiles" / f"{profile}.yaml"
    source = yaml.safe_load(path.read_text())
    out = check(path, capsys)
    budgets = re.findall(r"^ {8}(its card|GPU \d|GPUs [\d,]+ \(each\)): "
                         r"([\d.]+) GiB \(([\d.]+) x ([\d.]+)\) = ([\d.]+) weights \+ "
                         r"([\d.]+) runtime \+ ([\d.]+) KV cache at ([\d.]+) KiB/token \((fp8|bf16)\): "
                         r"(\d+) x (\d+) tokens at full length", out, re.M)
    assert len(budgets) == len(source["models"]), out
    card_gib = source["vllm"]["gpu_memory_gib"]
    # Each card's total: the shares of its always-resident models, in GiB of the card.
    assert re.search(rf"of 1 always resident: [\d.]+ of {card_gib:g} GiB\)$", out, re.M), out
    for entry, (_, share_gib, share, card, weights, runtime, kv, _, dtype, full, window) in zip(
            source["models"], budgets, strict=True):
        known = facts(entry["model"])
        assert known is not None, f"{entry['model']} is not in the catalog"
        assert float(card) == card_gib and float(share) == entry["gpu_memory_utilization"]
        cards = len(entry.get("env", {}).get("CUDA_VISIBLE_DEVICES", "0").split(","))  # tensor parallel
        assert float(weights) == pytest.approx(known.weights_gib / cards, abs=0.05)
        # The parts add up to the share, and the KV cache holds at least one full-length sequence.
        assert float(weights) + float(runtime) + float(kv) == pytest.approx(float(share_gib), abs=0.15)
        assert int(window) == entry["max_model_len"] <= known.context and int(full) >= 1
        assert dtype == ("fp8" if entry.get("kv_cache_dtype") == "fp8" else "bf16")
        if not profile.endswith("-2024"):  # those are kept as they were, without tools
            assert entry.get("tool_call_parser") == known.tool_call_parser
    shares: dict[str, float] = {}
    for entry in source["models"]:
        for card_key in entry.get("env", {}).get("CUDA_VISIBLE_DEVICES", "0").split(","):
            shares[card_key] = shares.get(card_key, 0.0) + entry["gpu_memory_utilization"]
    assert max(shares.values()) <= 0.92 + 1e-9  # room for the desktop and CUDA contexts
    if not profile.endswith("-2024"):
        coder = next(m for m in source["models"] if m.get("default"))
        assert coder["max_model_len"] >= AGENT_WINDOW and coder.get("enable_prefix_caching") is True


def test_a_window_the_share_cannot_hold_is_refused_naming_file_line_model_and_card(tmp_path, capsys):
    text = (REPO / "etc" / "profiles" / "24gb.yaml").read_text().replace("gpu_memory_utilization: 0.92",
                                                                          "gpu_memory_utilization: 0.8")
    path = tmp_path / "small.yaml"
    path.write_text(text)
    line = text.splitlines().index("    max_model_len: 65536") + 1
    with pytest.raises(SystemExit) as exit_:
        cli_main.main(["check", "--config", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: models[0].max_model_len: model 'coder' " \
           "(cpatonn/Qwen3-Coder-30B-A3B-Instruct-GPTQ-4bit) on its card: its share 0.8 x 22.4 GiB" in err
    assert "less than one sequence of max_model_len 65536 (3.0 GiB)" in err
    assert "gpu_memory_utilization 0.92 or max_model_len 10240" in err
    # Without the FP8 cache the same window needs twice the memory: the fix says so.
    path.write_text(text.replace("0.8", "0.92").replace("    kv_cache_dtype: fp8\n", ""))
    with pytest.raises(SystemExit):
        cli_main.main(["check", "--config", str(path)])
    assert "(6.0 GiB); it needs: max_model_len 34816 or kv_cache_dtype: fp8" in capsys.readouterr().err


def test_a_window_past_the_native_context_is_refused(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    text = (REPO / "etc" / "profiles" / "80gb.yaml").read_text()
    general = text.index("name: general")  # gpt-oss-20b: 131,072 native
    path.write_text(text[:general] + text[general:].replace("max_model_len: 131072", "max_model_len: 262144"))
    with pytest.raises(SystemExit):
        cli_main.main(["check", "--config", str(path)])
    assert "models[1].max_model_len: 262144 is past openai/gpt-oss-20b's native context of 131072" \
           in capsys.readouterr().err


def test_the_plan_gives_each_server_its_budget_and_each_model_its_download():
    from gateway.plan.document import full_plan
    from gateway.plan.validate import load_config

    plan = full_plan(load_config(REPO / "etc" / "profiles" / "80gb.yaml"))
    assert [m["weights_gib"] for m in plan["models"]] == [29.0, 12.8]
    memory = {p["unit"]: p["memory"] for p in plan["placements"]}
    assert memory["coder"]["kv_bytes_per_token"] == 48 * 4 * 128 * 2 * 1  # layers x KV heads x head dim x K,V x fp8
    assert memory["general"]["kv_bytes_per_token"] == 24 * 8 * 64 * 2 * 2  # bf16
    assert (memory["coder"]["full_sequences"], memory["general"]["full_sequences"]) == (2, 1)
    # Split over two cards (tensor parallel): each holds half the weights and half of each token's KV.
    (two,) = [p["memory"] for p in full_plan(load_config(REPO / "etc" / "profiles" / "2x24gb.yaml"))["placements"]]
    assert two["card"] == "GPUs 0,1 (each)" and two["weights_gib"] == 15.5 / 2
    assert two["kv_bytes_per_token"] == 48 * 4 * 128 * 2 // 2 and two["full_sequences"] == 3


def test_a_model_the_catalog_lacks_is_planned_and_said_unknown(tmp_path, capsys):
    path = tmp_path / "own.yaml"
    path.write_text("vllm: {gpu_memory_gib: 22.4}\nmodels:\n  - {name: m, model: someone/new-model, port: 8101}\n")
    assert "someone/new-model is not in the plan's catalog (gateway/plan/catalog.py): memory not reckoned" \
        in check(path, capsys)
