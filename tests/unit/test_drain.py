"""Draining a replica before its server restarts (a rolling restart): through the real gateway, with
fake vLLM replicas (tests/replicated.py), and `localai drain` / `localai undrain` against it."""

from __future__ import annotations

import asyncio
import re

import pytest
import yaml

from gateway.cli.main import main as localai
from tests.harness import wait_until
from tests.replicated import Replicated, release

ADMIN = "admin-key-0123456789abcdef"  # key-1
OTHER = "other-key-0123456789abcdef"  # key-2


async def _post(r: Replicated, path: str, body: dict | None = None, key: str = ADMIN) -> tuple[int, dict]:
    async with r.http.post(r.url + path, json={} if body is None else body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json()


async def _drain(r: Replicated, n: int, **body) -> tuple[int, dict]:
    return await _post(r, f"/v1/admin/models/m/replicas/{n}/drain", body)


async def _undrain(r: Replicated, n: int, **body) -> tuple[int, dict]:
    return await _post(r, f"/v1/admin/models/m/replicas/{n}/undrain", body)


async def _admin_gateway(replicated, n: int = 2, **model) -> Replicated:
    return await replicated(n, model={"max_num_seqs": 4, **model}, api_keys=[ADMIN, OTHER], admin_keys=["key-1"])


async def test_a_drained_replica_gets_no_new_request_and_finishes_those_in_flight(replicated):
    r = await _admin_gateway(replicated)
    gate = asyncio.Event()
    for f in r.fakes:
        f.gate = gate
    # Token-id prompts name no conversation: least outstanding puts one stream on each replica.
    streams = [await r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [i], "stream": True})
               for i in (1, 2)]
    assert [f.active for f in r.fakes] == [1, 1]
    assert await r.capacity() == 8

    status, card = await _drain(r, 1)
    assert status == 200, card
    assert (card["model"], card["replica"], card["draining"], card["in_flight"]) == ("m", 1, True, 1)
    replicas = await r.replicas()
    assert [(x["state"], x["draining"], x["max_concurrency"]) for x in replicas] == \
        [("ready", False, 4), ("ready", True, 0)]
    assert await r.capacity() == 4  # its slots left the model's

    for i in range(6):
        async with r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [10 + i]}) as resp:
            assert resp.status == 200
    assert len(r.fakes[1].received) == 1 and len(r.fakes[0].received) == 7

    # The drain's wait ends when the stream on it has ended, whole.
    waiting = asyncio.create_task(_drain(r, 1, wait=30))
    release(r, gate)
    bodies = [await s.text() for s in streams]
    status, card = await waiting
    assert status == 200 and card["in_flight"] == 0, card
    assert all(b.rstrip().endswith("data: [DONE]") for b in bodies), bodies

    status, card = await _undrain(r, 1, wait=30)
    assert (status, card["draining"], card["state"], card["max_concurrency"]) == (200, False, "ready", 4), card
    assert await r.capacity() == 8
    for i in range(8):
        async with r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [20 + i]}) as resp:
            assert resp.status == 200
    assert len(r.fakes[1].received) > 1


async def test_a_drained_replica_that_restarts_stays_drained_until_undrained(replicated):
    r = await _admin_gateway(replicated)
    assert (await _drain(r, 0))[0] == 200
    r.fakes[0].health_status = 503  # its server restarts...
    await wait_until(lambda: _states(r, ["failed", "ready"]))
    r.fakes[0].health_status = 200  # ...and serves again
    await wait_until(lambda: _states(r, ["ready", "ready"]))
    for c in range(6):
        assert (await r.chat(c))[0] == 200
    assert not r.fakes[0].received
    assert (await r.replicas())[0]["draining"] is True


async def _states(r: Replicated, expected: list[str]) -> bool:
    return [x["state"] for x in await r.replicas()] == expected


async def test_only_admin_keys_drain(replicated):
    r = await _admin_gateway(replicated)
    status, body = await _post(r, "/v1/admin/models/m/replicas/0/drain", key=OTHER)
    assert status == 403
    assert body["error"]["code"] == "admin_only" and body["error"]["type"] == "permission_error"
    assert "key-2" in body["error"]["message"]
    status, body = await _post(r, "/v1/admin/models/m/replicas/0/undrain", key=OTHER)
    assert status == 403
    assert [x["draining"] for x in await r.replicas()] == [False, False]


async def test_the_last_serving_replica_drains_only_when_forced(replicated):
    r = await _admin_gateway(replicated)
    assert (await _drain(r, 0))[0] == 200
    status, body = await _drain(r, 1)
    assert status == 409 and body["error"]["code"] == "last_replica", body
    status, card = await _drain(r, 1, force=True)
    assert status == 200 and card["draining"] is True
    status, body = await r.chat(1)
    assert status == 503 and body["error"]["code"] == "model_unavailable", body
    assert "2 draining" in body["error"]["message"]
    assert (await _undrain(r, 0))[0] == 200
    assert (await r.chat(1))[0] == 200


@pytest.mark.parametrize("path,body,status,code", [
    ("/v1/admin/models/m/replicas/2/drain", {}, 404, "replica_not_found"),
    ("/v1/admin/models/nope/replicas/0/drain", {}, 404, "model_not_found"),
    ("/v1/admin/models/m/replicas/x/drain", {}, 404, "replica_not_found"),
    ("/v1/admin/models/m/replicas/0/drain", {"wait": -1}, 400, "invalid_value"),
    ("/v1/admin/models/m/replicas/0/drain", {"force": "yes"}, 400, "invalid_type"),
])
async def test_a_drain_of_nothing_or_with_bad_settings_is_refused(replicated, path, body, status, code):
    r = await _admin_gateway(replicated)
    got, answer = await _post(r, path, body)
    assert (got, answer["error"]["code"]) == (status, code), answer


async def test_a_model_with_one_replica_is_not_drained(replicated):
    r = await _admin_gateway(replicated, 1)
    status, body = await _drain(r, 0, force=True)
    assert status == 409 and body["error"]["code"] == "last_replica", body
    assert (await r.chat(1))[0] == 200


async def test_localai_drain_and_undrain_verbs(replicated, monkeypatch, capsys):
    r = await _admin_gateway(replicated)
    monkeypatch.setenv("LOCALAI_URL", r.url)
    monkeypatch.setenv("LOCALAI_API_KEY", ADMIN)
    gate = asyncio.Event()
    for f in r.fakes:
        f.gate = gate
    streams = [await r.http.post(r.url + "/v1/completions", json={"model": "m", "prompt": [i], "stream": True})
               for i in (1, 2)]
    assert await asyncio.to_thread(localai, ["drain", "m", "--replica", "1", "--wait", "0.3"]) == 1
    assert "still 1 requests in flight after 0.3 s" in capsys.readouterr().err
    release(r, gate)
    for s in streams:
        await s.read()
        s.release()
    assert await asyncio.to_thread(localai, ["drain", "m", "--replica", "1", "--wait", "10"]) == 0
    assert "draining m replica 1 (h1 127.0.0.1:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="last one serving"):
        await asyncio.to_thread(localai, ["drain", "m", "--replica", "0"])
    assert await asyncio.to_thread(localai, ["undrain", "m", "--replica", "1", "--wait", "10"]) == 0
    assert "undrained m replica 1" in capsys.readouterr().out
    assert [x["draining"] for x in await r.replicas()] == [False, False]
    monkeypatch.setenv("LOCALAI_API_KEY", OTHER)
    with pytest.raises(SystemExit, match="may not drain replicas"):
        await asyncio.to_thread(localai, ["drain", "m", "--replica", "1"])


async def test_status_says_which_replica_drains(replicated, tmp_path):
    from gateway.cli.ops import collect_status, render_status

    r = await _admin_gateway(replicated)
    keys = tmp_path / "api-keys"
    keys.write_text(f"{ADMIN}\n{OTHER}\n")
    keys.chmod(0o600)
    config = tmp_path / "localai.yaml"
    config.write_text(yaml.safe_dump({**r.config, "gateway": {**r.config["gateway"], "api_key_file": str(keys)}}))
    assert (await _drain(r, 1))[0] == 200
    st = await asyncio.to_thread(collect_status, config)
    assert [x["draining"] for x in st["models"][0]["replicas"]] == [False, True]
    text = render_status(st)
    assert re.search(rf"^  #1 h1\s+ready\s+{r.ports[1]} .*\(localai-model@m.1.service, draining: no new request\)$",
                     text, re.M), text
