"""Fast tier: the real gateway, served the way production serves it, in front of fake backends."""

from __future__ import annotations

import contextlib
import io
import json

import aiohttp
import pytest
import uvloop

from gateway.base.observability import setup_logging
from tests.fakebackend import FakeBackend
from tests.harness import free_port, make_config, serving, wait_until
from tests.replicated import replicated_factory


def pytest_asyncio_loop_factories(config, item):
    # `localai gateway` and `localai up` run on uvloop, which differs from asyncio's loop in
    # places (its subprocess_exec takes fewer arguments, for one): test on the loop we ship.
    return {"uvloop": uvloop.new_event_loop}


class Stack:
    def __init__(self, url: str, session: aiohttp.ClientSession, app, fakes: dict[str, FakeBackend], logs):
        self.url = url
        self.http = session
        self.app = app
        self.fakes = fakes
        self._logs = logs

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self._logs.getvalue()

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def metrics_text(self) -> str:
        from prometheus_client import generate_latest

        from gateway.http.appkeys import METRICS
        return generate_latest(self.app[METRICS].registry).decode()

    async def ready(self, *names: str) -> None:
        async def all_ready():
            async with self.http.get(self.url + "/health") as r:
                states = (await r.json())["models"]
            return all(states[n]["state"] == "ready" for n in names)
        await wait_until(all_ready)


@pytest.fixture
async def stack(aiohttp_server):
    """Factory: stack(models={name: FakeBackend | (FakeBackend, entry keys) | entry dict}, api_keys, **gateway)."""
    async def make(models: dict, api_keys: list[str] | None = None, wait: bool = True, **gateway):
        entries, fakes, servers = [], {}, {}
        for i, (name, spec) in enumerate(models.items()):
            entry = {"name": name, "default": i == 0}
            if isinstance(spec, tuple):  # (FakeBackend, extra config keys)
                spec, extra = spec
                entry.update(extra)
            if isinstance(spec, FakeBackend) and "model" in entry:
                # A managed model whose "vLLM" is this fake, already listening on the model's port
                # (for sleep mode, which the gateway drives over HTTP; it serves as the model's name).
                port = free_port()
                server = await aiohttp_server(spec.app(), port=port)
                entry["port"] = port
                fakes[name], servers[name] = spec, server
            elif isinstance(spec, FakeBackend):
                server = await aiohttp_server(spec.app())  # test servers cancel handlers on disconnect
                entry["url"] = str(server.make_url("/")).rstrip("/")
                entry["served_model"] = spec.model_id
                fakes[name], servers[name] = spec, server
            else:
                entry.update(spec)
            entries.append(entry)
        cfg = make_config(entries, **gateway)
        logs = io.StringIO()
        setup_logging("info", stream=logs)
        # A key file in the config is read as production reads it; otherwise the keys given (or none).
        app = await contexts.enter_async_context(
            serving(cfg, api_keys=None if "api_key_file" in gateway else (api_keys or [])))
        session = await contexts.enter_async_context(aiohttp.ClientSession())
        s = Stack(f"http://127.0.0.1:{cfg.gateway.port}", session, app, fakes, logs)
        s.servers = servers
        if wait:
            await s.ready(*fakes)
        return s

    async with contextlib.AsyncExitStack() as contexts:
        yield make


@pytest.fixture
async def replicated(aiohttp_server):
    """Factory: replicated(n, model={settings of the model}, **gateway settings) -> Replicated
    (tests/replicated.py), every replica ready."""
    async with contextlib.AsyncExitStack() as contexts:
        yield replicated_factory(aiohttp_server, contexts)
