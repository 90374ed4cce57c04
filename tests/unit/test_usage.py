"""Issue #20: usage per key in a real SQLite file, token budgets, model allow-lists, key expiry,
GET /v1/usage(/team) and `localai usage`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.config.schema import ConfigError
from gateway.http.appkeys import ACCESS
from tests.fakebackend import FakeBackend
from tests.harness import free_port, localai, make_config, serving, wait_until
from tests.unit.test_gateway import CHAT, assert_openai_error

KEYS = ["sk-alice-0123456789ab", "sk-bob-0123456789abc"]  # named key-1 (alice) and key-2 (bob)
ALICE, BOB = ({"Authorization": f"Bearer {k}"} for k in KEYS)
# The fake's every answer: 7 prompt tokens and 5 completion tokens.
PER_REQUEST = 7 + 5
MESSAGES = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


class Gateway:
    def __init__(self, url: str, http: aiohttp.ClientSession, app: web.Application):
        self.url, self.http, self.app = url, http, app

    async def post(self, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        async with self.http.post(self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None), dict(r.headers)

    async def get(self, path: str, headers: dict) -> tuple[int, dict]:
        async with self.http.get(self.url + path, headers=headers) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def upstream(aiohttp_server):
    """Two fake models, coder and gen, each answering 7 prompt + 5 completion tokens."""
    fakes = {name: FakeBackend(chunks=5) for name in ("coder", "gen")}
    servers = {name: await aiohttp_server(f.app()) for name, f in fakes.items()}
    return [{"name": name, "url": str(s.make_url("/")).rstrip("/"), "served_model": fakes[name].model_id,
             "default": name == "coder"} for name, s in servers.items()]


@contextlib.asynccontextmanager
async def gateway(models: list[dict], **settings) -> AsyncIterator[Gateway]:
    cfg = make_config(models, **settings)
    async with serving(cfg, api_keys=KEYS) as app, aiohttp.ClientSession() as http:
        yield Gateway(f"http://127.0.0.1:{cfg.gateway.port}", http, app)


def budget(**alice) -> dict:
    return {"per_key": {"key-1": alice}}


async def test_a_key_over_its_daily_budget_gets_429_in_its_familys_shape_and_after_a_restart(upstream, tmp_path):
    db = tmp_path / "state" / "usage.db"
    settings = {"usage_db": str(db), "key_limits": budget(tokens_per_day=30)}
    async with gateway(upstream, **settings) as g:
        for _ in range(3):  # 12, 24, then 24 < 30 lets the third in: 36
            status, _, _ = await g.post("/v1/chat/completions", CHAT, ALICE)
            assert status == 200
        status, body, headers = await g.post("/v1/chat/completions", CHAT, ALICE)
        assert status == 429
        assert_openai_error(body, "quota_exceeded")
        assert "tokens_per_day budget of 30" in body["error"]["message"]
        assert 1 <= int(headers["Retry-After"]) <= 86400 + 3600
        assert (await g.post("/v1/chat/completions", CHAT, BOB))[0] == 200  # bob has no budget
    assert db.parent.stat().st_mode & 0o777 == 0o700
    # A new gateway on the same file: alice's 36 tokens are still spent today.
    async with gateway(upstream, **settings) as g:
        status, body, _ = await g.post("/v1/chat/completions", CHAT, ALICE)
        assert status == 429 and body["error"]["code"] == "quota_exceeded"
        status, body, _ = await g.post("/v1/messages", MESSAGES, {**ALICE, "anthropic-version": "2023-06-01"})
        assert status == 429 and body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert "tokens_per_day" in body["error"]["message"]
        status, body, _ = await g.post("/api/chat", {"model": "coder", **MESSAGES}, ALICE)
        assert status == 429 and "tokens_per_day" in body["error"]
        status, own = await g.get("/v1/usage", ALICE)
        assert status == 200
        day = own["quota"]["tokens_per_day"]
        assert (day["limit"], day["used"], day["remaining"]) == (30, 36, 0) and day["resets_at"].endswith("Z")
        assert own["quota"]["tokens_per_month"]["limit"] is None


async def test_a_reload_applies_new_budgets_and_models_at_once_and_keeps_what_was_spent(upstream, tmp_path):
    from gateway.app.reload import RELOADER
    from gateway.plan.validate import load_config

    keys, config, port = tmp_path / "api-keys", tmp_path / "localai.yaml", free_port()
    keys.write_text("".join(f"{name}: {key}\n" for name, key in zip(("alice", "bob"), KEYS, strict=True)))
    keys.chmod(0o600)

    def write(alice: dict) -> None:
        config.write_text(yaml.safe_dump({
            "gateway": {"port": port, "webui": False, "health_interval": 0.05, "api_key_file": str(keys),
                        "usage_db": None, "key_limits": {"per_key": {"alice": alice}}},
            "models": upstream}))

    write({"tokens_per_day": 10})
    async with serving(load_config(config)) as app, aiohttp.ClientSession() as http:
        g = Gateway(f"http://127.0.0.1:{port}", http, app)
        assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200
        assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 429
        write({"tokens_per_day": 20, "models": ["gen"]})
        assert app[RELOADER].reload()
        assert [m["id"] for m in (await g.get("/v1/models", ALICE))[1]["data"]] == ["gen"]
        assert (await g.post("/v1/chat/completions", {**CHAT, "model": "gen"}, ALICE))[0] == 200  # 12 < 20
        status, body, _ = await g.post("/v1/chat/completions", {**CHAT, "model": "gen"}, ALICE)
        assert status == 429 and "used 24 of its tokens_per_day budget of 20" in body["error"]["message"]


async def test_a_monthly_budget_counts_too(upstream):
    async with gateway(upstream, key_limits=budget(tokens_per_month=10)) as g:
        assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200
        status, body, _ = await g.post("/v1/chat/completions", CHAT, ALICE)
        assert status == 429 and "tokens_per_month budget of 10" in body["error"]["message"]


async def test_a_keys_models_are_all_it_sees_and_others_do_not_exist_for_it(upstream):
    async with gateway(upstream, key_limits=budget(models=["cod*"])) as g:
        for path, field, name in (("/v1/models", "data", "id"), ("/api/tags", "models", "name"),
                                  ("/api/ps", "models", "name")):
            assert [m[name] for m in (await g.get(path, ALICE))[1][field]] == ["coder"], path
            assert sorted(m[name] for m in (await g.get(path, BOB))[1][field]) == ["coder", "gen"], path
        status, anthropic_list = await g.get("/v1/models", {**ALICE, "anthropic-version": "2023-06-01"})
        assert [m["id"] for m in anthropic_list["data"]] == ["coder"]
        status, body = await g.get("/v1/models/gen", ALICE)
        assert status == 404
        assert_openai_error(body, "model_not_found")
        assert "gen" not in body["error"]["message"].split("Available models:")[1]
        assert (await g.get("/v1/models/gen", BOB))[0] == 200
        status, body, _ = await g.post("/v1/chat/completions", {**CHAT, "model": "gen"}, ALICE)
        assert status == 404 and body["error"]["code"] == "model_not_found"
        status, body, _ = await g.post("/v1/messages", {**MESSAGES, "model": "gen"},
                                       {**ALICE, "anthropic-version": "2023-06-01"})
        assert status == 404 and body["error"]["type"] == "not_found_error"
        status, body, _ = await g.post("/api/chat", {**MESSAGES, "model": "gen"}, ALICE)
        assert status == 404 and "does not exist" in body["error"]
        status, body, _ = await g.post("/api/show", {"model": "gen"}, ALICE)
        assert status == 404
        assert (await g.post("/v1/chat/completions", {**CHAT, "model": "coder"}, ALICE))[0] == 200


async def test_an_expired_key_is_refused_with_401_saying_so(upstream):
    limits = {"per_key": {"key-1": {"expires": "2020-01-31"}, "key-2": {"expires": "2999-12-31"}}}
    async with gateway(upstream, key_limits=limits) as g:
        status, body, _ = await g.post("/v1/chat/completions", CHAT, ALICE)
        assert status == 401
        assert_openai_error(body, "key_expired")
        assert "expired on 2020-01-31" in body["error"]["message"]
        assert (await g.get("/v1/models", ALICE))[0] == 401
        status, body, _ = await g.post("/api/chat", {"model": "coder", **MESSAGES}, ALICE)
        assert status == 401 and "expired" in body["error"]
        assert (await g.post("/v1/chat/completions", CHAT, BOB))[0] == 200


def test_bad_quota_settings_name_file_and_line():
    with pytest.raises(ConfigError) as err:
        make_config([{"name": "m", "url": "http://127.0.0.1:1"}], admin_keys=["bad name"],
                    key_limits={"per_key": {"alice": {"expires": "next week", "tokens_per_day": 0}}})
    message = str(err.value)
    assert "gateway.key_limits.per_key.alice.expires: Value error, 'next week' is not a date" in message
    assert "gateway.key_limits.per_key.alice.tokens_per_day: Input should be greater than or equal to 1" in message
    assert "test.yaml:3: gateway.admin_keys[0]:" in message
    assert "test.yaml:" in message


async def _sequence(g: Gateway) -> dict[str, int]:
    """Requests of every family; the usage each answer reported, summed as the client saw it."""
    seen = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def add(prompt: int, completion: int) -> None:
        seen["requests"] += 1
        seen["prompt_tokens"] += prompt
        seen["completion_tokens"] += completion

    for headers in (ALICE, BOB, BOB):
        _, body, _ = await g.post("/v1/chat/completions", CHAT, headers)
        add(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    _, body, _ = await g.post("/v1/completions", {"model": "gen", "prompt": "x"}, ALICE)
    add(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    anthropic = {**ALICE, "anthropic-version": "2023-06-01"}
    _, body, _ = await g.post("/v1/messages", {**MESSAGES, "model": "gen"}, anthropic)
    usage = body["usage"]
    add(usage["input_tokens"] + usage.get("cache_read_input_tokens", 0), usage["output_tokens"])
    _, body, _ = await g.post("/api/chat", {"model": "coder", **MESSAGES, "stream": False}, BOB)
    add(body["prompt_eval_count"], body["eval_count"])
    async with g.http.post(g.url + "/v1/chat/completions", headers=ALICE,
                           json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = [json.loads(line[6:]) for line in (await r.text()).splitlines()
                  if line.startswith("data: {")]
    add(events[-1]["usage"]["prompt_tokens"], events[-1]["usage"]["completion_tokens"])
    status, _, _ = await g.post("/v1/chat/completions", {**CHAT, "model": "nope"}, ALICE)
    assert status == 404  # no model: no row
    return seen


async def test_localai_usage_totals_equal_what_the_upstream_reported(upstream, tmp_path):
    db = tmp_path / "usage.db"
    async with gateway(upstream, usage_db=str(db)) as g:
        seen = await _sequence(g)
    # The gateway has stopped: the CLI reads the file alone.
    result = await asyncio.to_thread(localai, "usage", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    totals = report["totals"]
    assert {k: totals[k] for k in seen} == seen
    assert totals["errors"] == 0 and totals["gpu_seconds"] > 0
    assert {r["key"]: r["requests"] for r in report["by_key"]} == {"key-1": 4, "key-2": 3}
    assert {r["model"] for r in report["by_model"]} == {"coder", "gen"}
    assert sum(r["gpu_share"] for r in report["by_key"]) == pytest.approx(1.0, abs=0.01)
    table = await asyncio.to_thread(localai, "usage", "--db", str(db), "--by", "model")
    lines = table.stdout.splitlines()
    assert lines[1].split()[:7] == ["MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "GPU", "SECONDS"]
    assert lines[-1].split()[:5] == ["total", str(seen["requests"]), "0", str(seen["prompt_tokens"]),
                                     str(seen["completion_tokens"])]


async def test_a_key_reads_its_own_usage_and_only_an_admin_the_teams(upstream, tmp_path):
    async with gateway(upstream, usage_db=str(tmp_path / "u.db"), admin_keys=["key-2"],
                       key_limits=budget(tokens_per_day=1000, models=["coder", "gen"])) as g:
        seen = await _sequence(g)

        async def team():
            status, body = await g.get("/v1/usage/team", BOB)
            assert status == 200
            return body if body["totals"]["requests"] == seen["requests"] else None
        body = await wait_until(team, what="the usage written")
        alice = next(r for r in body["by_key"] if r["key"] == "key-1")
        assert alice["tokens_per_day"] == 1000 and alice["tokens_today"] == alice["tokens_month"] > 0
        assert alice["tokens_today"] == alice["prompt_tokens"] + alice["completion_tokens"]
        assert all(m["gpu_share"] == 1.0 for m in body["by_model"])
        assert body["by_day"][-1]["requests"] == seen["requests"]
        status, denied = await g.get("/v1/usage/team", ALICE)
        assert status == 403
        assert_openai_error(denied, "admin_only")
        status, own = await g.get("/v1/usage?since=1d", ALICE)
        assert status == 200 and own["key"] == "key-1" and own["admin"] is False
        assert own["models"] == ["coder", "gen"] and own["expires"] is None
        assert own["totals"]["requests"] == 4
        assert own["quota"]["tokens_per_day"]["used"] == alice["tokens_today"]
        shares = {m["model"]: m["gpu_share"] for m in own["by_model"]}
        assert set(shares) == {"coder", "gen"} and all(0 < s <= 1 for s in shares.values())
        assert (await g.get("/v1/usage", BOB))[1]["admin"] is True
        status, bad = await g.get("/v1/usage?since=yesterday", ALICE)
        assert status == 400 and bad["error"]["param"] == "since"


async def test_a_corrupt_database_leaves_the_gateway_serving_and_budgets_held(upstream, tmp_path):
    db = tmp_path / "usage.db"
    db.write_bytes(b"this is not a database" * 100)
    async with gateway(upstream, usage_db=str(db), key_limits=budget(tokens_per_day=20)) as g:
        for _ in range(2):
            assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200
        status, body, _ = await g.post("/v1/chat/completions", CHAT, ALICE)
        assert status == 429 and body["error"]["code"] == "quota_exceeded"  # from memory
        async with g.http.get(g.url + "/metrics", headers=BOB) as r:
            metrics = await r.text()
        assert "localai_usage_db_up 0.0" in metrics
        assert "localai_usage_write_errors_total" in metrics
        status, body = await g.get("/v1/usage", ALICE)
        assert status == 503 and body["error"]["code"] == "usage_unavailable"
    result = await asyncio.to_thread(localai, "usage", "--db", str(db))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and str(db) in result.stderr and "cannot be read" in result.stderr


async def test_a_database_locked_while_serving_loses_no_request(upstream, tmp_path):
    db = tmp_path / "usage.db"

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    async def db_up() -> str:
        async with g.http.get(g.url + "/metrics", headers=BOB) as r:
            return next(line.split()[1] for line in (await r.text()).splitlines()
                        if line.startswith("localai_usage_db_up "))

    async with gateway(upstream, usage_db=str(db)) as g:
        assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200
        await wait_until(lambda: rows() == 1, what="the first row written")
        # Another process holds the write lock (a backup, a stuck `sqlite3` shell): past the busy
        # timeout the writer fails, and the requests are served all the same.
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            for _ in range(3):
                assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200
            async def down() -> bool:
                return await db_up() == "0.0"
            await wait_until(down, what="localai_usage_db_up 0", interval=0.1)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # Unlocked: the rows kept from the failed batch are written with the next try.
        await wait_until(lambda: rows() == 4, what="every request's row written", interval=0.1)
        assert await db_up() == "1.0"


async def test_concurrent_requests_at_the_budget_boundary_overshoot_by_one_request_at_most(upstream):
    async with gateway(upstream, key_limits=budget(tokens_per_day=100)) as g:
        for _ in range(7):  # 84 spent, 16 left: less than two requests' worth
            assert (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200
        answers = await asyncio.gather(*(g.post("/v1/chat/completions", CHAT, ALICE) for _ in range(20)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 429}
        limiter = g.app[ACCESS].limiter
        spent = limiter.spending.of("key-1").day_tokens
        assert spent == (7 + statuses.count(200)) * PER_REQUEST
        assert spent <= 100 + PER_REQUEST
        # Spent: from now on every request is refused for its budget.
        while (await g.post("/v1/chat/completions", CHAT, ALICE))[0] == 200:
            assert limiter.spending.of("key-1").day_tokens <= 100 + PER_REQUEST
        status, body, _ = await g.post("/v1/chat/completions", CHAT, ALICE)
        assert status == 429 and body["error"]["code"] == "quota_exceeded"

