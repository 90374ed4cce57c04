"""The WebUI's stand-in stack: the real gateway in front of the fake backend, for tests
that need precise control of the answers.

The gateway is the real one (``tests.harness.serving``: ``create_app`` served by ``serve``,
with an API key and the built WebUI), so its contract (model cards, /health, /ready,
OpenAI-shaped errors, Retry-After, X-LocalAI-Truncated-Messages, X-Request-ID) is the
product's own. Behind it, one ``tests.fakebackend.FakeBackend`` per model plays the
model servers; its scripted controls are exposed here: the canned reply, the delay between
tokens, errors answered next (e.g. 429 with Retry-After), the usage's prompt tokens. A
model's state is set the way `localai up`'s supervisor sets it (the gateway's backend
state, with the fake's health to match).

It runs in a background thread with its own event loop so that synchronous Playwright
tests can drive it. It also offers the ``real_stack`` interface (``url``, ``api_key``,
``vllm_metrics``, ``stop_backend``, ``start_backend``, ``wait_ready``) so the main-flow
tests can be developed against it.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gateway.http.appkeys import REGISTRY
from gateway.plan.validate import parse_config
from gateway.routing.states import State
from tests.fakebackend import FakeBackend, ScriptedError
from tests.harness import InThread, serving, wait_until_sync

DIST = Path(__file__).resolve().parents[2] / "webui" / "dist"

DEFAULT_REPLY = """Here is a small example in **Python**:

```python
def fib(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
```

- It runs in `O(n)` time.
- It uses constant memory.

| n | fib(n) |
|---|--------|
| 10 | 55 |
| 20 | 6765 |
"""

# The models the WebUI sees: name -> their config entry (the fake's id is the name).
MODELS = {
    "coder": {"aliases": ["dev", "python"], "default": True, "max_model_len": 2048, "context_limit": 0.75},
    "chat": {"aliases": ["general"], "max_model_len": 4096, "context_limit": 0.875},
}


def key_file(folder: Path, keys: dict[str, str]) -> str:
    """A gateway key file (name: key lines, 0600, as the gateway requires) in *folder*; its path."""
    path = folder / "keys"
    path.write_text("".join(f"{name}: {key}\n" for name, key in keys.items()))
    path.chmod(0o600)
    return str(path)


class StandIn:
    def __init__(self, port: int, api_key: str = "test-key", gateway: dict | None = None) -> None:
        """gateway: more `gateway:` settings; with an `api_key_file` its keys are the gateway's, and
        api_key is the one of them the UI is opened with."""
        self.port = port
        self.api_key = api_key
        self.gateway = gateway or {}
        self.url = f"http://127.0.0.1:{port}"
        self.requests: list[dict] = []  # what the model servers received, in order
        self.script: deque[ScriptedError] = deque()  # errors the next requests get, any model
        self.backends = {name: FakeBackend(name, max_model_len=entry["max_model_len"], reply=self._reply_for,
                                           received=self.requests, errors=self.script)
                         for name, entry in MODELS.items()}
        self._thread: InThread | None = None  # the loop the fakes and the gateway run in
        self._fake_runners: list[web.AppRunner] = []
        self._fake_urls: dict[str, str] = {}
        self._app: web.Application | None = None  # while the gateway serves
        self.reset()

    # ------------------------------------------------------------ controls
    def reset(self) -> None:
        """Every model ready, answering DEFAULT_REPLY at 10 ms a token, nothing scripted."""
        for fake in self.backends.values():
            fake.reset()
            fake.reply = self._reply_for
            fake.itl = 0.01
        self.reply: str | None = None  # None: DEFAULT_REPLY; "echo:prefix " echoes the last question
        if self._app is not None:
            for name in self.backends:
                self.set_state(name, "ready")
            self.wait_ready(*self.backends)

    @property
    def token_delay(self) -> float:
        return self.backends["coder"].itl

    @token_delay.setter
    def token_delay(self, seconds: float) -> None:
        for fake in self.backends.values():
            fake.itl = seconds

    @property
    def prompt_tokens(self) -> int:
        return self.backends["coder"].prompt_tokens

    @prompt_tokens.setter
    def prompt_tokens(self, n: int) -> None:
        for fake in self.backends.values():
            fake.prompt_tokens = n

    def backend(self, name: str) -> FakeBackend:
        return self.backends[self._resolve(name)]

    def set_state(self, model: str, state: str, reason: str | None = None) -> None:
        """Put a model in a state as `localai up`'s supervisor would, its health agreeing."""
        name = self._resolve(model)
        fake, target = self.backends[name], State(state)
        if target is State.READY:
            fake.health_status = 200  # the gateway's health monitor sees it come up
            return

        async def apply() -> None:
            assert self._app is not None
            fake.health_status = 503
            # Once one probe has seen the new health, none that saw the old can still land.
            seen = fake.probes
            await fake.wait_for(lambda f: f.probes > seen)
            default = "starting vLLM" if target is State.LOADING else "backend exited"
            self._app[REGISTRY].backends[name].set_state(target, reason or default)

        self._run(apply())

    def vllm_metrics(self, model: str) -> str:
        with urllib.request.urlopen(self._fake_urls[self._resolve(model)] + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop_backend(self, model: str) -> None:
        self.set_state(model, "failed", "backend exited (stopped by test)")

    def start_backend(self, model: str) -> None:
        """Loading for a second, then ready (real_stack's models come back by themselves)."""
        self.set_state(model, "loading")
        assert self._thread is not None
        loop = self._thread.loop
        loop.call_soon_threadsafe(loop.call_later, 1.0, self.set_state, model, "ready")

    def wait_ready(self, *models: str, timeout: float = 30.0) -> None:
        def ready() -> bool:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                states = json.load(r)["models"]
            return all(states[self._resolve(m)]["state"] == "ready" for m in models)
        wait_until_sync(ready, timeout, f"{models} ready")

    def _resolve(self, model: str) -> str:
        for name, entry in MODELS.items():
            if model == name or model in entry["aliases"]:
                return name
        raise KeyError(model)

    def _reply_for(self, body: dict) -> str:
        reply = self.reply if self.reply is not None else DEFAULT_REPLY
        last_user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if reply.startswith("echo:"):
            reply = f"{reply[5:]}{last_user}"
        if "long essay" in last_user:  # like a real model without max_tokens: goes on and on
            reply *= 50
        return reply

    # ------------------------------------------------------------ lifecycle
    def start(self) -> StandIn:
        """Serve the gateway (a fresh app, as after a restart); the fakes start once."""
        if self._thread is None:
            self._thread = InThread("standin")
        self._run(self._start_fakes())
        models = [{"name": name, "url": self._fake_urls[name], "served_model": name, **entry}
                  for name, entry in MODELS.items()]
        cfg = parse_config(yaml.safe_dump({
            "gateway": {"host": "127.0.0.1", "port": self.port, "health_interval": 0.1, "webui": True,
                        "webui_dir": str(DIST), **self.gateway},
            "models": models}), "standin.yaml")
        keys = None if "api_key_file" in self.gateway else [self.api_key]
        self._app = self._thread.enter(serving(cfg, api_keys=keys))
        self.wait_ready(*self.backends)
        return self

    @property
    def serving(self) -> bool:
        return self._app is not None

    def stop(self) -> None:
        """Stop the gateway (its port is closed); the fakes and the loop stay for a restart."""
        if self._app is not None:
            assert self._thread is not None
            self._thread.exit()
            self._app = None

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            for runner in self._fake_runners:
                self._run(runner.cleanup())
            self._thread.close()
            self._thread = None

    def _run(self, coro: Coroutine) -> Any:
        assert self._thread is not None
        return self._thread.run(coro)

    async def _start_fakes(self) -> None:
        if not self._fake_runners:
            for name, fake in self.backends.items():
                # Handler cancellation, as vLLM: a gateway that hangs up stops the answer.
                runner = web.AppRunner(fake.app(), handler_cancellation=True, shutdown_timeout=0.5)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                self._fake_runners.append(runner)
                self._fake_urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"


if __name__ == "__main__":  # manual poking: python -m tests.browser.standin
    import sys

    s = StandIn(int(sys.argv[1]) if len(sys.argv) > 1 else 18399).start()
    print(f"stand-in on {s.url} (key {s.api_key})")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        s.close()
