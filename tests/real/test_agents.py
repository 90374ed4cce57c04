"""Real tier: the coding agents a team points at the box complete a turn through the gateway,
against real vLLM (CPU), each unchanged and headless, with no network beyond the gateway.

Claude Code speaks /v1/messages, Codex CLI /v1/responses, opencode and Continue's CLI
/v1/chat/completions. They come pinned from npm (tests/agents/, `make agents-deps`);
docs/ide-setup.md gives the same settings to users and says what each agent sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_MODELS, TINY_VLLM, RealStack, running
from tests.harness import REPO, wait_until_sync

pytestmark = pytest.mark.real

AGENTS_BIN = REPO / "tests" / "agents" / "node_modules" / ".bin"
MODEL = "agent"
PROMPT = "Say hello in one word."
TURN_TIMEOUT_S = 300  # a turn takes 5-30 s on 2 busy cores; this only stops a hung agent


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A stack of its own: the agents' system prompts and tool lists run to 10-20k tokens and
    they ask for up to 32,000 new ones, so the model needs the tiny model's whole 32,768-token
    window and tool calling, which the shared stack's models must not have."""
    if not (AGENTS_BIN / "claude").exists():
        pytest.fail(f"coding agents missing under {AGENTS_BIN}: run `make agents-deps`")
    agent = {"name": MODEL, "model": str(TINY_MODELS / "tiny-general"), "max_model_len": 32768,
             "max_num_seqs": 2, "tool_call_parser": "hermes",
             # The names Claude Code and Codex ask for when not told otherwise
             # (claude-opus-5-5, claude-haiku-*, gpt-6.2-sol, ...).
             "aliases": ["claude-*", "gpt-*"], **TINY_VLLM}
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
            "models": {MODEL: {"name": MODEL}}}}}))
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
""")
    env = {"HOME": str(home), "CONTINUE_CLI_ENABLE_TELEMETRY": "0"}
    run_turn(stack, [str(AGENTS_BIN / "cn"), "--config", str(config), "-p", PROMPT], env,
             "/v1/chat/completions", home / "project")
