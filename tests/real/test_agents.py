"""Real tier: the coding agents a team points at the box complete a turn through the gateway,
against real vLLM (CPU), each unchanged and headless, with no network beyond the gateway.

Claude Code speaks /v1/messages, Codex CLI /v1/responses, opencode and Continue's CLI
/v1/chat/completions. They come pinned from npm (tests/agents/, `make agents-deps`), and
Claude Code also as the registry's latest at test time; docs/ide-setup.md gives the same
settings to users and says what each agent sends.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from gateway.config.schema import ManagedModel
from tests.conftest import TINY_MODELS, TINY_VLLM, RealStack, running
from tests.harness import REPO, wait_until_sync

pytestmark = pytest.mark.real

AGENTS_BIN = REPO / "tests" / "agents" / "node_modules" / ".bin"
PROMPT = "Say hello in one word."
# A turn takes 5-60 s on 2 busy cores: the tiny model's gibberish ends at a random end token
# (brief_answers) or at max_tokens. This only stops a hung agent.
TURN_TIMEOUT_S = 600
# The most opencode and Continue ask for in one answer, as a user may set it, which keeps
# their turns short. Not Claude Code: cut off at its max_tokens it asks again to continue, and
# Codex has no such setting.
ANSWER_TOKENS = 4096
NPM_TIMEOUT_S = 300  # `npm install` of Claude Code: 6 s here; this only stops a hung registry
PROFILE = REPO / "etc" / "profiles" / "24gb.yaml"
# What CPU vLLM cannot take of the profile's agent model, and what stands in for it: its
# weights (a 4-bit GPTQ MoE of 15.5 GiB, CUDA kernels) are the tiny model's, served in
# float32 without CUDA graphs (TINY_VLLM); gpu_memory_utilization means nothing on a CPU,
# whose KV space is VLLM_CPU_KVCACHE_SPACE (1 GiB: 2M tokens of the tiny model in fp8);
# the port is a free one. Everything else (window, max_num_seqs, FP8 KV cache, prefix
# caching, tool-call parser, context guard) is the profile's own: CPU vLLM accepts it all.
CPU_SUBSTITUTED = ("model", "port", "gpu_memory_utilization")


def profile_agent_model() -> dict:
    """The 24 GB profile's model for coding agents: the one with tool calling and the longest window."""
    models = [m for m in yaml.safe_load(PROFILE.read_text())["models"] if m.get("tool_call_parser")]
    return max(models, key=lambda m: m.get("max_model_len") or 0)


PROFILE_AGENT = profile_agent_model()
MODEL = PROFILE_AGENT["name"]
GUARD_SHARE = ManagedModel.model_fields["context_limit"].default  # where the profile sets none


# Ordinary tokens the agents' model also ends an answer on (its generation_config's eos_token_id):
# with one end token in 3,000 the gibberish ran 500-12,000 tokens (minutes a turn on 2 cores, and
# up to the max_tokens room a 64k window leaves); with six it ends after ~500 on average, and the
# chance that it ends before its first word stays about 0.2 %.
EXTRA_END_TOKENS = [211, 733, 1259, 1801, 2377]


def brief_answers(weights: Path, into: Path) -> Path:
    """The tiny model's weights and tokenizer (linked) with more end-of-answer tokens."""
    for item in weights.iterdir():
        if item.name != "generation_config.json":
            (into / item.name).symlink_to(item)
    generation = json.loads((weights / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    generation["eos_token_id"] = [*(eos if isinstance(eos, list) else [eos]), *EXTRA_END_TOKENS]
    (into / "generation_config.json").write_text(json.dumps(generation))
    return into


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A stack of its own, shaped like the 24 GB profile's agent model (its window, concurrency,
    KV cache, parser and guard): the agents' system prompts and tool lists run to 10-30k tokens
    and they ask for up to 32,000 new ones, which the shared stack's models must not take."""
    if not (AGENTS_BIN / "claude").exists():
        pytest.fail(f"coding agents missing under {AGENTS_BIN}: run `make agents-deps`")
    weights = TINY_MODELS / "tiny-general"
    window = PROFILE_AGENT["max_model_len"]
    native = json.loads((weights / "config.json").read_text())["max_position_embeddings"]
    if native < window:
        pytest.fail(f"{weights} takes {native} tokens, the profile's window is {window}: run `make models`")
    agent = {**{k: v for k, v in PROFILE_AGENT.items() if k not in CPU_SUBSTITUTED},
             "model": str(brief_answers(weights, tmp_path_factory.mktemp("agent-model"))),
             # The names Claude Code and Codex ask for when not told otherwise
             # (claude-opus-5-5, claude-haiku-*, gpt-6.2-sol, ...).
             "aliases": [*PROFILE_AGENT.get("aliases", []), "claude-*", "gpt-*"], **TINY_VLLM}
    with running(RealStack(tmp_path_factory.mktemp("agent-stack"), [agent], name="agent-stack")) as s:
        yield s


def gateway_log(stack: RealStack) -> list[dict]:
    """The gateway's JSON access-log lines (the log also holds vLLM's own lines)."""
    entries = []
    for line in stack.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "path" in entry and "status" in entry:
                entries.append(entry)
    return entries


def run_turn(stack: RealStack, argv: list[str], env: dict[str, str], endpoint: str, cwd: Path) -> str:
    """Run one headless turn of an agent; return what it printed once the gateway has logged
    the model's answer to it on *endpoint*."""
    seen = len(gateway_log(stack))
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env={"PATH": os.environ["PATH"], **env}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TURN_TIMEOUT_S, check=False)
    took = time.monotonic() - started
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"no answer printed\n{done.stderr[-3000:]}"
    # The access line is written as the answer's last byte leaves; the agent may exit first.
    answered = wait_until_sync(
        lambda: [e for e in gateway_log(stack)[seen:] if e["path"] == endpoint and e["status"] == 200], 10,
        f"a 200 on {endpoint} in the gateway log", interval=0.1, detail=lambda: f": {gateway_log(stack)[seen:]}")
    # The backend's own usage, read off the stream: the agent's system prompt reached the model
    # (some agents first ask for a short title; the turn itself is the longest prompt).
    turn = max(answered, key=lambda e: e.get("prompt_tokens") or 0)
    assert turn["model"] == MODEL and turn["prompt_tokens"] > 1000 and turn["completion_tokens"] > 0, turn
    print(f"{argv[0]}: {took:.1f} s, {len(answered)} answered request(s) on {endpoint}")
    return done.stdout


def test_the_agents_model_is_the_24gb_profiles(stack):
    """What the agents below run against: the profile's window, guard and concurrency as the
    gateway serves them, and its KV cache, prefix caching and parser as vLLM took them."""
    request = urllib.request.Request(stack.url + "/v1/models", headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        served = next(m for m in json.load(r)["data"] if m["id"] == MODEL)
    window = PROFILE_AGENT["max_model_len"]
    assert window >= 65536 and served["max_model_len"] == window
    assert served["context_limit"] == int(window * PROFILE_AGENT.get("context_limit", GUARD_SHARE))
    assert served["max_concurrency"] == PROFILE_AGENT["max_num_seqs"]
    # The last such line: the log is appended to, so an earlier run's stack may have written one.
    logged = [json.loads(line)["msg"] for line in stack.log_path.read_text(errors="replace").splitlines()
              if "non-default args: " in line][-1]
    args = ast.literal_eval(logged.split("non-default args: ", 1)[1])
    for key in ("kv_cache_dtype", "enable_prefix_caching", "tool_call_parser", "max_num_seqs", "max_model_len"):
        assert args[key] == PROFILE_AGENT[key], (key, args)


@pytest.fixture
def home(tmp_path) -> Path:
    """A throwaway HOME (and project directory) per agent: nothing of the user's leaks in."""
    (tmp_path / "project").mkdir()
    return tmp_path


def claude_env(stack: RealStack, home: Path) -> dict[str, str]:
    return {"HOME": str(home), "ANTHROPIC_BASE_URL": stack.url, "ANTHROPIC_API_KEY": stack.api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1"}


def test_claude_code_on_messages_with_its_own_model_names(stack, home):
    # No --model: Claude Code asks for its default (claude-opus-5-5), which `claude-*` routes.
    run_turn(stack, [str(AGENTS_BIN / "claude"), "-p", PROMPT], claude_env(stack, home), "/v1/messages",
             home / "project")


def test_claude_code_latest_from_the_registry(stack, home):
    """The Claude Code a new user installs today, not only the pinned one: the registry's latest,
    installed at test time into a throwaway prefix. No registry is a failure, not a skip."""
    prefix = home / "npm"
    try:
        done = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                               "--no-update-notifier", "--loglevel=error", "@anthropic-ai/claude-code@latest"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                              check=False)
        failure = f"exit {done.returncode}: {done.stderr[-2000:]}" if done.returncode else None
    except subprocess.TimeoutExpired:
        failure = f"no answer within {NPM_TIMEOUT_S} s"
    except OSError as exc:  # no npm at all
        failure = str(exc)
    if failure:
        pytest.fail("could not install @anthropic-ai/claude-code@latest from the npm registry, which this "
                    f"test needs to reach ({failure})")
    package = prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "package.json"
    pinned = json.loads((REPO / "tests" / "agents" / "package.json").read_text())["dependencies"]
    print(f"claude-code latest {json.loads(package.read_text())['version']}, "
          f"pinned {pinned['@anthropic-ai/claude-code']}")
    run_turn(stack, [str(prefix / "node_modules" / ".bin" / "claude"), "-p", PROMPT], claude_env(stack, home),
             "/v1/messages", home / "project")


def test_claude_code_with_model_flag(stack, home):
    run_turn(stack, [str(AGENTS_BIN / "claude"), "-p", PROMPT, "--model", MODEL], claude_env(stack, home),
             "/v1/messages", home / "project")


def test_codex_on_responses(stack, home):
    # No `model`: Codex asks for its default (gpt-6.2-sol), which `gpt-*` routes.
    (home / "codex").mkdir()
    (home / "codex" / "config.toml").write_text(f"""\
model_provider = "localai"
check_for_update_on_startup = false

[model_providers.localai]
name = "localai"
base_url = "{stack.url}/v1"
env_key = "LOCALAI_API_KEY"
wire_api = "responses"

[analytics]
enabled = false
""")
    env = {"HOME": str(home), "CODEX_HOME": str(home / "codex"), "LOCALAI_API_KEY": stack.api_key}
    run_turn(stack, [str(AGENTS_BIN / "codex"), "exec", "--skip-git-repo-check", PROMPT], env,
             "/v1/responses", home / "project")


def test_opencode_on_chat_completions(stack, home):
    config = home / ".config" / "opencode"
    config.mkdir(parents=True)
    (config / "opencode.json").write_text(json.dumps({
        "autoupdate": False, "share": "disabled", "model": f"localai/{MODEL}", "small_model": f"localai/{MODEL}",
        "provider": {"localai": {
            "npm": "@ai-sdk/openai-compatible", "name": "localai",
            "options": {"baseURL": f"{stack.url}/v1", "apiKey": "{env:LOCALAI_API_KEY}"},
            "models": {MODEL: {"name": MODEL, "limit": {"context": PROFILE_AGENT["max_model_len"],
                                                        "output": ANSWER_TOKENS}}}}}}))
    # No models.dev catalogue, no plugins, no LSP servers: nothing fetched from the internet.
    env = {"HOME": str(home), "LOCALAI_API_KEY": stack.api_key, "OPENCODE_DISABLE_MODELS_FETCH": "1",
           "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
           "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}
    run_turn(stack, [str(AGENTS_BIN / "opencode"), "run", PROMPT], env, "/v1/chat/completions", home / "project")


def test_continue_cli_on_chat_completions(stack, home):
    config = home / "config.yaml"
    config.write_text(f"""\
name: localai
version: 1.0.0
schema: v1
models:
  - name: {MODEL}
    provider: openai
    model: {MODEL}
    apiBase: {stack.url}/v1
    apiKey: {stack.api_key}
    roles: [chat]
    defaultCompletionOptions:
      maxTokens: {ANSWER_TOKENS}
""")
    env = {"HOME": str(home), "CONTINUE_CLI_ENABLE_TELEMETRY": "0"}
    run_turn(stack, [str(AGENTS_BIN / "cn"), "--config", str(config), "-p", PROMPT], env,
             "/v1/chat/completions", home / "project")
