"""The WebUI with load: on_demand models (#13): the picker lists stopped models as available
and failed ones with the reason; picking a stopped model and sending shows
"loading coder… N s", counting, until the model answers.

The stack is `localai up` itself (gateway.app.up.run_up, in a thread of its own): its
real supervisor starts and stops the model servers, whose "vLLM" is the stand-in
(tests/harness.py's standin_python, as in tests/unit/test_lifecycle_process.py). A model started with
`--fake-gate FILE` loads until the test creates FILE, so the test decides how long a start
takes; the real tier starts real vLLM (tests/real/test_lifecycle_real.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import expect
from uihelp import last_answer, models, pick_model, send, wait_answer, wait_connected

from gateway.plan.validate import load_config
from tests.harness import REPO, InThread, free_port, running_up, standin_python, wait_until_sync

pytestmark = pytest.mark.browser

KEY = "sk-webui-swap"
STARTED = {"chat": "ready", "coder": "stopped", "general": "stopped", "broken": "stopped"}
DIST = REPO / "webui" / "dist"

class Up:
    """`localai up` serving a config, in a background thread with its own event loop."""

    def __init__(self, tmp_path: Path, models: list[dict]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp_path / "localai.yaml").write_text(yaml.safe_dump({
            "gateway": {"port": self.port, "health_interval": 0.05, "webui": True, "webui_dir": str(DIST)},
            "vllm": {"python": str(standin_python(tmp_path))}, "models": models}))
        self.cfg = load_config(tmp_path / "localai.yaml")
        self._thread = InThread("localai-up")

    def __enter__(self) -> Up:
        self._thread.enter(running_up(self.cfg, api_keys=[KEY]))
        return self

    def __exit__(self, *exc) -> None:
        self._thread.close()  # every model server it started is stopped


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
    return {m["id"]: m["state"] for m in models(url, KEY)}


@pytest.fixture
def ui(up, open_ui):
    wait_until_sync(lambda: states(up.url) == STARTED, 20, "chat ready, the rest stopped",
                    ignoring=(OSError,))  # `localai up` is not listening yet
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
