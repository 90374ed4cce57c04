"""Crafted model files (issue 18, defect 9): whatever a model folder holds, /api/tags and
/api/show answer 200 (a fact that cannot be read is left out), and each file is read once
per version of it (path, mtime, size), not per call."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.fakebackend import FakeBackend

GOOD_CONFIG = json.dumps({"model_type": "qwen2"})


def safetensors(header: object, padding: int = 0) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * padding


def tensor(*shape) -> dict:
    return {"dtype": "BF16", "shape": list(shape), "data_offsets": [0, 0]}


async def local_stack(stack, folder):
    s = await stack({"m": FakeBackend(), "local": {"model": str(folder), "port": 1, "max_model_len": 1024}},
                    wait=False)
    await s.ready("m")
    return s


async def listed(s) -> dict:
    async with s.http.get(s.url + "/api/tags") as r:
        assert r.status == 200, await r.text()
        return {m["name"]: m for m in (await r.json())["models"]}["local"]


async def shown(s) -> dict:
    async with s.http.post(s.url + "/api/show", json={"model": "local"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


# (what, config.json, safetensors header)
CRAFTED = [
    ("a config.json of []", "[]", {"w": tensor(4, 4)}),
    ("a config.json of a string", '"qwen2"', {"w": tensor(4, 4)}),
    ("a quantization_config that is a list", json.dumps({"model_type": "x", "quantization_config": [1]}),
     {"w": tensor(4, 4)}),
    ("a string dimension (the 190 MiB string)", GOOD_CONFIG, {"w": tensor("x", 200_000_000)}),
    ("a float dimension", GOOD_CONFIG, {"w": tensor(1.5, 2)}),
    ("a negative dimension", GOOD_CONFIG, {"w": tensor(-4, 4)}),
    ("a shape that is a number", GOOD_CONFIG, {"w": {"dtype": "BF16", "shape": 7}}),
    ("a header that is a list", GOOD_CONFIG, [1, 2]),
    ("a dtype that is an object", GOOD_CONFIG, {"w": {"dtype": {"a": 1}, "shape": [2]}}),
]


@pytest.mark.parametrize(("config", "header"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
async def test_crafted_model_files_do_not_break_the_ollama_listings(stack, tmp_path, config, header):
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(safetensors(header))
    s = await local_stack(stack, folder)
    for _ in range(2):
        entry = await listed(s)
        assert entry["model"] == "local"
        assert (await shown(s))["model_info"]["general.architecture"]


async def test_each_file_is_read_once_per_version(stack, tmp_path):
    """A file that keeps its path, mtime and size is not read again (here: rewritten in place with the
    same length and its mtime put back, the listing still shows what it read first); a new version is."""
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "config.json").write_text(GOOD_CONFIG)
    weights = folder / "model.safetensors"
    weights.write_bytes(safetensors({"w": tensor(1000, 500)}))
    s = await local_stack(stack, folder)
    assert (await listed(s))["details"]["parameter_size"] == "500.00K"
    stamp = weights.stat()
    weights.write_bytes(safetensors({"w": tensor(1000, 600)}))  # as long as the first
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert weights.stat().st_size == stamp.st_size
    assert (await listed(s))["details"]["parameter_size"] == "500.00K"  # not read again
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    assert (await listed(s))["details"]["parameter_size"] == "600.00K"  # a new version: read

