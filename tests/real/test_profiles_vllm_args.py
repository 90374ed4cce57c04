"""Every shipped profile's model servers start with arguments the pinned vLLM accepts: the argv the
plan gives each server is parsed by vLLM's own API server parser (the CPU build of the pinned
version; one interpreter for all of them), checked as vLLM checks it before loading, turned into
its engine arguments, and every tool-call and reasoning parser named is one it has."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.plan.document import full_plan
from gateway.plan.placement import VLLM_ENTRYPOINT
from gateway.plan.validate import load_config
from tests.conftest import VLLM_PYTHON

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "etc" / "profiles").glob("*.yaml"))

# Runs in vLLM's venv: the parser its api_server entrypoint builds, then what it checks.
PARSE = """
import json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.utils.argparse_utils import FlexibleArgumentParser

tools, reasoning = set(ToolParserManager.list_registered()), set(ReasoningParserManager.list_registered())
out = {}
for unit, argv in json.load(sys.stdin).items():
    try:
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        validate_parsed_serve_args(args)
        engine = AsyncEngineArgs.from_cli_args(args)
    except (Exception, SystemExit) as exc:
        out[unit] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    out[unit] = {"max_model_len": engine.max_model_len, "kv_cache_dtype": engine.kv_cache_dtype,
                 "enable_prefix_caching": engine.enable_prefix_caching,
                 "tool_call_parser": args.tool_call_parser,
                 "tool_parser_known": not args.tool_call_parser or args.tool_call_parser in tools,
                 "reasoning_parser": args.reasoning_parser or None,
                 "reasoning_parser_known": not args.reasoning_parser or args.reasoning_parser in reasoning}
print(json.dumps(out))
"""


def test_every_profiles_argv_is_accepted_by_the_pinned_vllm():
    servers, expected = {}, {}
    for path in PROFILES:
        for p in full_plan(load_config(path))["placements"]:
            argv = p["argv"]
            assert argv[1:3] == ["-m", VLLM_ENTRYPOINT]
            servers[f"{path.stem}/{p['unit']}"] = argv[3:]
            expected[f"{path.stem}/{p['unit']}"] = argv
    run = subprocess.run([str(VLLM_PYTHON), "-c", PARSE], input=json.dumps(servers), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    parsed = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(parsed) == sorted(servers)
    for unit, seen in parsed.items():
        assert "error" not in seen, (unit, seen)
        argv = expected[unit]
        assert seen["max_model_len"] == int(argv[argv.index("--max-model-len") + 1]), unit
        assert seen["kv_cache_dtype"] == (argv[argv.index("--kv-cache-dtype") + 1]
                                          if "--kv-cache-dtype" in argv else "auto"), unit
        assert seen["enable_prefix_caching"] is True, unit
        assert seen["tool_parser_known"] and seen["reasoning_parser_known"], (unit, seen)
    # The 2026 profiles all turn tools on (agents need them).
    assert all(parsed[u]["tool_call_parser"] for u in parsed if not u.split("/")[0].endswith("-2024"))
