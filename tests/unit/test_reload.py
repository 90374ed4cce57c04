"""Reload on SIGHUP without dropping a stream, and a listening socket taken from systemd.

`localai gateway` runs as a process of its own here, as systemd runs it: its
listening socket is handed over the way systemd's socket activation does it
(descriptor 3, LISTEN_FDS, LISTEN_PID), and the reload comes as a real SIGHUP.
"""

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import aiohttp
import yaml

from tests.fakebackend import FakeBackend
from tests.harness import GatewayProcess, free_port, serving, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def write_config(path: Path, backend_url: str, key_file: Path, webui: Path, aliases=(), **gateway) -> None:
    cfg = {"gateway": {"port": free_port(), "api_key_file": str(key_file), "webui_dir": str(webui),
                       "health_interval": 0.05, **gateway},
           "models": [{"name": "m", "url": backend_url, "served_model": "fake", "default": True,
                       "aliases": list(aliases)}]}
    path.write_text(yaml.safe_dump(cfg))


def start_socket_activated(config: Path, listener: socket.socket, log: Path) -> GatewayProcess:
    """`localai gateway` with `listener` as systemd would pass it (fd 3, LISTEN_FDS=1, LISTEN_PID)."""
    env = {k: v for k, v in os.environ.items() if k != "LOCALAI_API_KEY"}
    return GatewayProcess("gateway", config, log=log, listener=listener, env=env).start()


def log_records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def test_sighup_reloads_keys_config_and_webui_while_a_stream_runs(aiohttp_server, tmp_path):
    fake = FakeBackend(chunks=3, gate=asyncio.Event())
    backend = await aiohttp_server(fake.app())
    backend_url = str(backend.make_url("/")).rstrip("/")
    keys, webui, config, log = tmp_path / "api-keys", tmp_path / "webui", tmp_path / "localai.yaml", tmp_path / "log"
    keys.write_text("alice: sk-alice-0123456789ab\n")
    keys.chmod(0o600)
    webui.mkdir()
    (webui / "index.html").write_text("<!doctype html><title>build one</title>")
    write_config(config, backend_url, keys, webui)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"  # not the config's port: the socket wins
    proc = start_socket_activated(config, listener, log)
    listener.close()  # the gateway holds its own copy, as it would hold systemd's
    alice, bob = {"Authorization": "Bearer sk-alice-0123456789ab"}, {"Authorization": "Bearer sk-bob-0123456789ab"}
    try:
        async with aiohttp.ClientSession() as http:
            async def status(path: str, headers: dict, body: dict | None = None) -> int:
                async with http.request("POST" if body else "GET", url + path, json=body, headers=headers) as r:
                    return r.status

            async def model_ready() -> bool:
                try:
                    return await status("/v1/chat/completions", alice, CHAT) == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(model_ready, timeout=30)
            assert any(r.get("socket_activated") for r in log_records(log))
            assert await status("/v1/chat/completions", bob, CHAT) == 401

            stream = await http.post(url + "/v1/chat/completions", headers=alice, json=dict(CHAT, stream=True))
            assert stream.status == 200
            first = await stream.content.readuntil(b"\n\n")
            assert first.startswith(b"data: ")

            keys.write_text("alice: sk-alice-0123456789ab\nsk-bob-0123456789ab  # bob\n")
            write_config(config, backend_url, keys, webui, aliases=["dev"], port=free_port(),
                         key_limits={"per_key": {"bob": {"requests_per_minute": 1}}})
            (webui / "index.html").write_text("<!doctype html><title>build two</title>")
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return await status("/v1/chat/completions", bob, dict(CHAT, model="dev")) == 200
            await wait_until(reloaded, timeout=10)
            assert await status("/v1/chat/completions", bob, CHAT) == 429  # bob's new limit: 1 a minute
            async with http.get(url + "/") as r:
                assert "build two" in await r.text()
            records = log_records(log)
            assert any("gateway.port changed: needs restart" in r["msg"] for r in records), records[-5:]

            # The stream that began before the reload runs to its end.
            rest = b""
            while not stream.content.at_eof():
                fake.gate.set()
                rest += await stream.content.readany()
            assert rest.count(b"data: {") == 2 and rest.endswith(b"data: [DONE]\n\n")
            assert fake.completed >= 1 and not fake.cancelled

            # A broken config on reload changes nothing and says where it is broken.
            config.write_text(config.read_text().replace("health_interval: 0.05", "health_interval: fast"))
            proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: any(r["msg"].startswith("reload failed") for r in log_records(log)))
            failed = next(r for r in log_records(log) if r["msg"].startswith("reload failed"))
            assert f"{config}:" in failed["msg"] and "gateway.health_interval" in failed["msg"]
            assert failed["level"] == "ERROR"
            assert await status("/v1/chat/completions", alice, dict(CHAT, model="dev")) == 200
        assert "sk-" not in log.read_text()
    finally:
        proc.stop(timeout=30)


async def test_reload_adds_and_removes_models_and_resizes_slots(aiohttp_server, tmp_path):
    from gateway.app.factory import REGISTRY
    from gateway.app.reload import RELOADER
    from gateway.plan.validate import load_config

    fakes = {"m": FakeBackend("fake-m"), "n": FakeBackend("fake-n")}
    urls = {name: str((await aiohttp_server(f.app())).make_url("/")).rstrip("/") for name, f in fakes.items()}
    config = tmp_path / "localai.yaml"
    port = free_port()

    def write(models: dict[str, int]) -> None:
        entries = [{"name": name, "url": urls[name], "served_model": fakes[name].model_id, "default": i == 0,
                    "max_concurrency": limit} for i, (name, limit) in enumerate(models.items())]
        config.write_text(yaml.safe_dump({"gateway": {"port": port, "webui": False, "health_interval": 0.05},
                                          "models": entries}))

    write({"m": 2})
    async with serving(load_config(config), api_keys=[]) as app, aiohttp.ClientSession() as http:
        async def status(model: str) -> int:
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=dict(CHAT, model=model)) as r:
                return r.status

        await wait_until(lambda: _is(status("m"), 200))
        assert await status("n") == 404
        write({"n": 1, "m": 5})
        assert app[RELOADER].reload()
        await wait_until(lambda: _is(status("n"), 200))  # watched by the health monitor, then ready
        assert app[REGISTRY].backends["m"].slots.limit == 5 and app[REGISTRY].default.name == "n"
        write({"n": 1})
        assert app[RELOADER].reload()
        assert await status("m") == 404 and await status("n") == 200


async def _is(status, expected: int) -> bool:
    return await status == expected


async def test_connections_made_while_the_gateway_restarts_are_served_not_refused(aiohttp_server, tmp_path):
    backend = await aiohttp_server(FakeBackend().app())
    keys, config, webui = tmp_path / "api-keys", tmp_path / "localai.yaml", tmp_path / "webui"
    keys.write_text("alice: sk-alice-0123456789ab\n")
    keys.chmod(0o600)
    write_config(config, str(backend.make_url("/")).rstrip("/"), keys, webui)
    # The test holds the listening socket as systemd's localai-gateway.socket does.
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/models"
    first = start_socket_activated(config, listener, tmp_path / "log-1")
    second = None
    try:
        async with aiohttp.ClientSession() as http:
            async def served() -> bool:
                try:
                    async with http.get(url, headers={"Authorization": "Bearer sk-alice-0123456789ab"}) as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False
            await wait_until(served, timeout=30)
            assert first.stop(timeout=30) == set() and first.returncode == 0
            # No gateway runs now: a connection is still accepted (into the socket's backlog)...
            reader, writer = await asyncio.open_connection(*listener.getsockname())
            body = json.dumps(CHAT).encode()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer sk-alice-0123456789ab\r\n"
                         b"Content-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            # ...and answered by the next gateway, which knows the model is ready before it listens.
            second = start_socket_activated(config, listener, tmp_path / "log-2")
            answer = await asyncio.wait_for(reader.read(), timeout=60)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ") and b'"chat.completion"' in answer
    finally:
        listener.close()
        for proc in (first, second):
            if proc is not None:
                proc.stop(timeout=30)


async def test_a_reload_takes_a_managed_models_new_context_window(aiohttp_server, tmp_path):
    """The playbook restarts a server whose max_model_len changed, then reloads the gateway:
    /v1/models and the context guard use the new window, not the one the old server had."""
    from gateway.app.reload import RELOADER
    from gateway.plan.validate import load_config

    model_port, port = free_port(), free_port()
    await aiohttp_server(FakeBackend("m", max_model_len=4096).app(), port=model_port)
    config = tmp_path / "localai.yaml"

    def write(window: int) -> None:
        config.write_text(yaml.safe_dump({"gateway": {"port": port, "webui": False, "health_interval": 0.05},
                                          "models": [{"name": "m", "model": "/m", "port": model_port,
                                                      "max_model_len": window}]}))

    write(4096)
    async with serving(load_config(config), api_keys=[]) as app, aiohttp.ClientSession() as http:
        async def window() -> int:
            async with http.get(f"http://127.0.0.1:{port}/v1/models") as r:
                return (await r.json())["data"][0]["max_model_len"]

        assert await window() == 4096
        write(1024)
        assert app[RELOADER].reload()
        assert await window() == 1024
