"""A model with replicas, through the real gateway: each replica a fake vLLM on a port of its own
(two or three `hosts` on this machine, set apart by their port offsets). The fast tier's
`replicated` fixture (tests/unit/conftest.py) makes one."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re

import aiohttp
import yaml

from gateway.base.observability import setup_logging
from gateway.plan.validate import parse_config
from tests.fakebackend import FakeBackend
from tests.harness import free_port, serving, wait_until


class Replicated:
    def __init__(self, url: str, http: aiohttp.ClientSession, fakes: list[FakeBackend], ports: list[int],
                 servers: list, app, config: dict):
        self.url, self.http, self.fakes, self.ports, self.servers, self.app = url, http, fakes, ports, servers, app
        self.config = config  # as YAML data

    async def chat(self, conversation: int, turn: int = 1, **extra) -> tuple[int, dict]:
        messages = [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": f"conversation {conversation}"}]
        for t in range(1, turn):
            messages += [{"role": "assistant", "content": f"reply {t}"}, {"role": "user", "content": f"turn {t}"}]
        async with self.http.post(self.url + "/v1/chat/completions",
                                  json={"model": "m", "messages": messages, **extra}) as r:
            return r.status, await r.json()

    async def replicas(self) -> list[dict]:
        async with self.http.get(self.url + "/v1/models") as r:
            return (await r.json())["data"][0]["replicas"]

    async def capacity(self) -> int:
        """The model's max_concurrency as /v1/models says it."""
        async with self.http.get(self.url + "/v1/models") as r:
            return (await r.json())["data"][0]["max_concurrency"]

    def metrics_text(self) -> str:
        from prometheus_client import generate_latest

        from gateway.http.appkeys import METRICS
        return generate_latest(self.app[METRICS].registry).decode()

    def metric(self, name: str, port: int) -> float:
        text = self.metrics_text()
        found = re.search(rf'^{name}{{model="m",replica="127.0.0.1:{port}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    def served_by(self, conversation: int) -> list[int]:
        """Which fakes got a request of this conversation."""
        return [i for i, f in enumerate(self.fakes)
                if any(b["messages"][1]["content"] == f"conversation {conversation}" for b in f.received)]


def release(r: Replicated, gate: asyncio.Event) -> None:
    """Let the gated streams run to their end (a fake's gate lets one chunk through per set())."""
    for f in r.fakes:
        f.gate = None
    gate.set()


async def all_ready(r: Replicated) -> bool:
    return all(x["state"] == "ready" for x in await r.replicas())


def replicated_factory(aiohttp_server, contexts: contextlib.AsyncExitStack):
    """make(n, model={settings of the model}, **gateway settings) -> Replicated, every replica ready."""
    async def make(n: int = 2, model: dict | None = None, api_keys: list[str] | None = None,
                   **gateway) -> Replicated:
        """api_keys: the gateway's (named key-1, key-2, ...; the client sends the first); none: open."""
        ports = sorted(free_port() for _ in range(n))
        fakes = [FakeBackend("m") for _ in range(n)]
        servers = [await aiohttp_server(f.app(), port=p) for f, p in zip(fakes, ports, strict=True)]
        data = {
            "gateway": {"port": free_port(), "health_interval": 0.05, "webui": False, **gateway},
            "hosts": [{"name": f"h{i}", "address": "127.0.0.1", "gpus": 0, "port_offset": p - ports[0]}
                      for i, p in enumerate(ports)],
            "models": [{"name": "m", "model": "fake", "port": ports[0], "hosts": [f"h{i}" for i in range(n)],
                        "default": True, **(model or {})}],
        }
        cfg = parse_config(yaml.safe_dump(data), "replicas.yaml")
        setup_logging("info", stream=io.StringIO())
        app = await contexts.enter_async_context(serving(cfg, api_keys=api_keys or []))
        auth = {"Authorization": f"Bearer {api_keys[0]}"} if api_keys else None
        http = await contexts.enter_async_context(aiohttp.ClientSession(headers=auth))
        r = Replicated(f"http://127.0.0.1:{cfg.gateway.port}", http, fakes, ports, servers, app, data)
        await wait_until(lambda: all_ready(r))
        return r

    return make
