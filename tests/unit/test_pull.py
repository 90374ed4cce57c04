"""Pulling a model's weights from a stand-in hub (tests/standin_hub.py): `localai pull` with its
progress and its resume after a cut transfer, and Ollama's /api/pull through the ollama client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pty
import random
from collections.abc import AsyncIterator
from pathlib import Path

import ollama
import pytest
import yaml
from aiohttp import web

from gateway.lifecycle.pull import PullError, pull
from tests.fakebackend import FakeBackend
from tests.harness import REPO, cli_argv, free_port, wait_until
from tests.standin_hub import COMMIT, StandinHub

REPO_ID = "org/tiny"
TOKEN = "hf_standin_secret"
WEIGHTS = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
FILES = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "tokenizer.json": b"{}",
         "model.safetensors": WEIGHTS, "README.md": b"not fetched: vLLM does not read it"}
CUT = 1024 * 1024 + 4321


@contextlib.asynccontextmanager
async def serving_hub(token: str | None) -> AsyncIterator[StandinHub]:
    standin = StandinHub(REPO_ID, dict(FILES), token=token)
    runner = web.AppRunner(standin.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    standin.url = f"http://127.0.0.1:{port}"
    try:
        yield standin
    finally:
        await runner.cleanup()


@pytest.fixture
async def hub():
    async with serving_hub(TOKEN) as standin:
        yield standin


def snapshot_files(hf_home: Path) -> dict[str, bytes]:
    snapshot = hf_home / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    return {p.name: p.read_bytes() for p in snapshot.iterdir() if not p.name.startswith(".")}


async def run_cli(args: list[str], env: dict[str, str], tty: bool = False) -> tuple[int, str, str]:
    """`localai ARGS` to its end: exit status, stdout (read through a terminal with tty), stderr."""
    if not tty:
        proc = await asyncio.create_subprocess_exec(*cli_argv(*args), cwd=REPO, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(*cli_argv(*args), cwd=REPO, env=env, stdout=follower,
                                                stderr=asyncio.subprocess.PIPE)
    os.close(follower)
    seen = bytearray()
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    os.set_blocking(leader, False)
    loop.add_reader(leader, readable.set)
    try:
        # Read the terminal as the command writes (its buffer is small), until the command closes it.
        while True:
            try:
                chunk = os.read(leader, 65536)
            except BlockingIOError:
                readable.clear()
                await asyncio.wait_for(readable.wait(), 60)
                continue
            except OSError:  # EIO: the command has closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        loop.remove_reader(leader)
        os.close(leader)
    err = await asyncio.wait_for(proc.stderr.read(), 60)  # type: ignore[union-attr]
    return await asyncio.wait_for(proc.wait(), 60), seen.decode(), err.decode()


async def test_cli_pull_shows_progress_and_resumes_a_cut_transfer(hub, tmp_path):
    hf_home = tmp_path / "hf"
    config = tmp_path / "localai.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "coder", "model": REPO_ID, "port": free_port()}],
                                      "vllm": {"env": {"HF_HOME": str(hf_home)}}}))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    blobs = hf_home / "hub" / "models--org--tiny" / "blobs"
    part = blobs / (hashlib.sha256(WEIGHTS).hexdigest() + ".incomplete")
    hub.cut["model.safetensors"], hub.drop = CUT, asyncio.Event()
    first = asyncio.create_task(run_cli(["pull", "coder", "--config", str(config)], env))
    # The connection drops once the command has written what came before the cut.
    await wait_until(lambda: part.exists() and part.stat().st_size == CUT, what="the bytes before the cut on disk")
    hub.drop.set()
    code, out, err = await first
    assert code == 1, (out, err)
    assert "pull again to resume" in err
    assert "model.safetensors: 3.0 MiB\n" in out  # plain lines, not a terminal's bar
    assert "\r" not in out
    assert part.read_bytes() == WEIGHTS[:CUT]  # kept for the next try

    code, out, err = await run_cli(["pull", "coder", "--config", str(config)], env, tty=True)
    assert code == 0, (out, err)
    assert hub.ranges[-1] == ("model.safetensors", f"bytes={CUT}-")  # resumed, not started over
    bar = [line for line in out.split("\r") if line.startswith("\x1b[Kmodel.safetensors: 3.0 MiB/3.0 MiB 100.0%")]
    assert bar and bar[-1].rstrip().endswith("/s"), out
    assert f"snapshots/{COMMIT}" in out and "success" in out
    assert snapshot_files(hf_home) == {k: v for k, v in FILES.items() if k != "README.md"}
    assert TOKEN not in out + err
    assert set(hub.authorizations) == {f"Bearer {TOKEN}"}

    # Pulled again: nothing is fetched twice.
    requests = len(hub.ranges)
    code, out, err = await run_cli(["pull", REPO_ID, "--config", str(config)], env)
    assert code == 0 and len(hub.ranges) == requests, (out, err)
    assert "model.safetensors: 3.0 MiB, already here\n" in out


async def test_cli_pull_of_a_gated_model_says_what_to_do(hub, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_TOKEN": "", "LOCALAI_CONFIG": str(tmp_path / "none.yaml"),
           "PYTHONPATH": str(REPO)}
    env.pop("HF_ENDPOINT", None)
    code, out, err = await run_cli(["pull", f"{hub.url}/{REPO_ID}"], env)  # the model's page on that hub
    assert code == 1 and "org/tiny is gated or private" in err and "HF_TOKEN" in err, (out, err)
    assert hub.authorizations == [None]


def pull_stack(stack, hub, hf_home: Path):
    env = {"HF_HOME": str(hf_home), "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    return stack({"coder": (FakeBackend(), {"model": REPO_ID, "env": env})}, api_keys=["sk-a"])


def client(s, key: str | None = "sk-a") -> ollama.AsyncClient:
    return ollama.AsyncClient(host=s.url, headers={"Authorization": f"Bearer {key}"} if key else None)


async def test_api_pull_streams_ollama_progress(stack, hub, tmp_path):
    s = await pull_stack(stack, hub, tmp_path)
    steps = [p async for p in await client(s).pull("coder", stream=True)]
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    weights = [p for p in steps if p.digest == f"sha256:{hashlib.sha256(WEIGHTS).hexdigest()}"]
    assert weights[-1].completed == weights[-1].total == len(WEIGHTS)
    assert snapshot_files(tmp_path)["model.safetensors"] == WEIGHTS
    assert (await client(s).pull("coder:latest", stream=False)).status == "success"
    # vLLM finds hub models through huggingface_hub: offline, it reads the same snapshot.
    hf = pytest.importorskip("huggingface_hub")
    found = hf.snapshot_download(REPO_ID, cache_dir=tmp_path / "hub", local_files_only=True)
    assert Path(found) == tmp_path / "hub" / "models--org--tiny" / "snapshots" / COMMIT


async def test_api_pull_a_second_caller_follows_the_first(stack, hub, tmp_path):
    s = await pull_stack(stack, hub, tmp_path)
    hub.hold = asyncio.Event()

    seen: list[list[str]] = [[], []]

    async def pull(caller: int) -> None:
        async for p in await client(s).pull("coder", stream=True):
            seen[caller].append(p.status)

    first = asyncio.create_task(pull(0))
    await wait_until(lambda: hub.ranges, what="the first file requested")
    second = asyncio.create_task(pull(1))
    await wait_until(lambda: seen[1], what="the second caller's first line")
    hub.hold.set()
    await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert seen[0][-1] == seen[1][-1] == "success"
    assert sorted(path for path, _ in hub.ranges) == ["config.json", "model.safetensors", "tokenizer.json"]


async def test_api_pull_refuses_unknown_models_hub_ids_and_keyless_callers(stack, hub, tmp_path):
    s = await pull_stack(stack, hub, tmp_path)
    for name in ("nope", "org/other"):  # a hub id not configured: nothing arbitrary is fetched
        with pytest.raises(ollama.ResponseError) as info:
            await client(s).pull(name, stream=False)
        assert info.value.status_code == 404 and "does not exist" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        await client(s, None).pull("coder")
    assert info.value.status_code == 401
    assert hub.ranges == []


async def test_api_pull_of_corrupt_weights_fails_in_ollamas_shape_and_keeps_nothing(stack, hub, tmp_path):
    s = await pull_stack(stack, hub, tmp_path)
    hub.corrupt.add("model.safetensors")
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client(s).pull("coder", stream=True):
            pass
    assert "model.safetensors: sha256 mismatch" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        await client(s).pull("coder", stream=False)
    assert info.value.status_code == 502 and "sha256 mismatch" in info.value.error
    assert not list((tmp_path / "hub" / "models--org--tiny" / "blobs").glob("*.incomplete"))
    hub.corrupt.clear()
    assert (await client(s).pull("coder", stream=False)).status == "success"
    assert snapshot_files(tmp_path)["model.safetensors"] == WEIGHTS


async def test_api_pull_follows_the_hubs_redirect_to_its_cdn_without_the_token(stack, hub, tmp_path):
    async with serving_hub(None) as cdn:
        hub.cdn = cdn.url
        s = await pull_stack(stack, hub, tmp_path)
        assert (await client(s).pull("coder", stream=False)).status == "success"
    assert [path for path, _ in cdn.ranges] == ["model.safetensors"]
    assert cdn.authorizations == [None]  # the hub's token stays with the hub
    assert snapshot_files(tmp_path)["model.safetensors"] == WEIGHTS


async def test_a_second_pull_of_a_file_being_fetched_is_refused_not_interleaved(stack, hub, tmp_path):
    s = await pull_stack(stack, hub, tmp_path)
    part = tmp_path / "hub" / "models--org--tiny" / "blobs" / (hashlib.sha256(WEIGHTS).hexdigest() + ".incomplete")
    hub.cut["model.safetensors"], hub.drop = CUT, asyncio.Event()
    first = asyncio.create_task(client(s).pull("coder", stream=False))
    await wait_until(lambda: part.exists() and part.stat().st_size == CUT, what="the gateway's pull under way")
    # `localai pull` of the same model meanwhile, into the same cache (the CLI runs this coroutine).
    with pytest.raises(PullError, match="another pull is fetching it now"):
        await pull(REPO_ID, tmp_path / "hub", lambda p: None, endpoint=hub.url, token=TOKEN)
    hub.drop.set()
    with pytest.raises(ollama.ResponseError, match="pull again to resume"):
        await first
    assert part.read_bytes() == WEIGHTS[:CUT]
    assert (await client(s).pull("coder", stream=False)).status == "success"
    assert snapshot_files(tmp_path)["model.safetensors"] == WEIGHTS
