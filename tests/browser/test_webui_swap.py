"""The WebUI with load: on_demand models (#13): the picker lists stopped models as available
and failed ones with the reason; picking a stopped model and sending shows
"loading coder… N s", counting, until the model answers.

The stack is `localai up` itself (gateway.app.up.run_up, in a thread of its own): its
real supervisor starts and stops the model servers, whose "vLLM" is tests/fakebackend.py run
as a program (as tests/unit/test_lifecycle_process.py does). A model started with
`--fake-gate FILE` loads until the test creates FILE, so the test decides how long a start
takes; the real tier starts real vLLM (tests/real/test_lifecycle_real.py).
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import expect
from uihelp import last_answer, models, pick_model, poll, send, wait_answer, wait_connected

from gateway.app.factory import create_app
from gateway.app.up import run_up
from gateway.plan.validate import load_config
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.browser

KEY = "sk-webui-swap"
STARTED = {"chat": "ready", "coder": "stopped", "general": "stopped", "broken": "stopped"}
DIST = REPO / "webui" / "dist"

# The fake "vLLM": with --fake-gate FILE it loads (does not listen yet) until FILE exists.
FAKE_VLLM = f"""#!{sys.executable}
import os, sys, time
sys.path.insert(0, {str(REPO)!r})
from tests.fakebackend import main
argv = sys.argv[1:]
if "--fake-gate" in argv:
    gate = argv[argv.index("--fake-gate") + 1]
    while not os.path.exists(gate):
        time.sleep(0.05)
main(argv)
"""


class Up:
    """`localai up` serving a config, in a background thread with its own event loop."""

    def __init__(self, tmp_path: Path, models: list[dict]):
        python = tmp_path / "python"
        python.write_text(FAKE_VLLM)
        python.chmod(0o755)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp_path / "localai.yaml").write_text(yaml.safe_dump({
            "gateway": {"port": self.port, "health_interval": 0.05, "webui": True, "webui_dir": str(DIST)},
            "vllm": {"python": str(python)}, "models": models}))
        self.cfg = load_config(tmp_path / "localai.yaml")
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="localai-up", daemon=True)

    def __enter__(self) -> Up:
        self._thread.start()

        async def start() -> None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(run_up(self.cfg, create_app(self.cfg, api_keys=[KEY.encode()]),
                                                    self._stop))

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            assert self._stop is not None and self._task is not None
            self._stop.set()
            await asyncio.wait_for(self._task, 30)  # every model server it started is stopped

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(40)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def model(name: str, share: float, load: str = "on_demand", **extra) -> dict:
    entry = {"name": name, "model": f"/m/{name}", "port": free_port(), "gpu_memory_utilization": share,
             "max_model_len": 2048, **extra}
    if load == "on_demand":
        entry.update(load="on_demand", sleep_mode="off")  # stopped and started, as on a CPU host
    return entry


@pytest.fixture
def gate(tmp_path) -> Path:
    return tmp_path / "coder-loaded"


@pytest.fixture
def up(tmp_path, gate):
    models = [
        model("chat", 0.3, load="always", default=True),
        model("coder", 0.3, extra_args=["--fake-gate", str(gate), "--fake-chunks", "8"]),
        model("general", 0.3),
        model("broken", 0.3, extra_args=["--fake-fail", "no weights under /m/broken"]),
    ]
    with Up(tmp_path, models) as stack:
        yield stack


def states(url: str) -> dict[str, str]:
    try:
        return {m["id"]: m["state"] for m in models(url, KEY)}
    except OSError:
        return {}  # `localai up` is not listening yet


@pytest.fixture
def ui(up, open_ui):
    poll(lambda: states(up.url) == STARTED, what="chat ready, the rest stopped")
    u = open_ui(up.url, KEY)
    wait_connected(u.page)
    return u


def option(page, model_id: str):
    return page.locator(f'#model-menu .model-opt[data-model="{model_id}"]')


def test_the_picker_lists_stopped_models_as_available_and_failed_ones_with_the_reason(ui):
    page = ui.page
    page.click("#model-btn")
    for name in ("coder", "general"):
        expect(option(page, name).locator(".opt-name")).to_have_text(f"{name} (stopped)")
        expect(option(page, name).locator(".opt-meta")).to_contain_text("loads when used")
        expect(option(page, name).locator(".opt-reason")).to_have_count(0)
    expect(option(page, "chat").locator(".opt-name")).to_contain_text("chat")
    expect(option(page, "chat").locator(".opt-meta")).to_contain_text("Ready")
    # A stopped model is picked like any other, and the chat says what sending will do.
    option(page, "general").click()
    expect(page.locator("#model-name")).to_have_text("general")
    expect(page.locator("#model-state")).to_have_text("Stopped")
    expect(page.locator("#empty-sub")).to_have_text(
        "general is stopped: it loads when you send a message, which can take a while.")
    # A model whose server cannot start: the answer says so, and the picker gives the reason.
    pick_model(page, "broken")
    send(page, "hello")
    a = wait_answer(page, status="error")
    expect(a.locator(".error-title")).to_have_text("The model “broken” is unavailable.")
    expect(a.locator(".error-detail")).to_contain_text("no weights under /m/broken")
    page.click("#model-btn")
    expect(option(page, "broken")).to_have_attribute("data-state", "failed")
    expect(option(page, "broken").locator(".opt-reason")).to_contain_text("no weights under /m/broken")
    expect(option(page, "general").locator(".opt-name")).to_have_text("general (stopped)")
    ui.shot("webui-swap-picker")
    ui.assert_clean()


def test_a_stopped_model_shows_loading_with_a_counter_until_it_answers(ui, gate):
    page = ui.page
    pick_model(page, "coder")
    send(page, "write me a function")
    wait = last_answer(page).locator(".wait")
    expect(wait).to_have_text(re.compile(r"^loading coder… [01] s$"))
    expect(page.locator("#model-state")).to_have_text("Loading…")  # the picker too, no longer "Stopped"
    # It counts while the model loads (the stream is open, the gateway sends only heartbeats).
    expect(wait).to_have_text("loading coder… 2 s", timeout=10_000)
    expect(last_answer(page).locator(".body")).to_have_text("")
    ui.shot("webui-swap-loading")
    gate.touch()  # the server has loaded
    a = wait_answer(page, timeout=30_000)
    expect(a.locator(".body")).to_have_text("tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7")
    expect(a.locator(".wait")).to_be_hidden()
    # The picker follows: coder is ready now.
    expect(page.locator("#model-dot")).to_have_attribute("data-state", "ready")
    expect(page.locator("#model-state")).to_have_text("")
    ui.assert_clean()
