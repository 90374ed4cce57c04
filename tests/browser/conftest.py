"""Fixtures for the WebUI browser tests (Playwright + Debian's headless Chromium).

* ``chromium``: one browser per test module, launched from ``/usr/bin/chromium``
  (browsers cannot be downloaded here); a missing Chromium fails the tier, never skips it.
* ``standin``: the real gateway in front of the scripted fake backend (``standin.py``),
  reset per test.
* ``stack``: the real stack (the ``real_stack`` fixture from ``tests/conftest.py``);
  with ``LOCALAI_WEBUI_STANDIN=1`` the stand-in instead (a quick loop while developing).
* ``open_ui``: opens the UI in a fresh browser context (isolated localStorage) at a
  given viewport / colour scheme, with the API key pre-seeded, and records console
  errors and CSP violations so that tests can assert there are none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("gateway") is None:  # running from a checkout without an install
    sys.path.insert(0, str(REPO))

SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = os.environ.get("LOCALAI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STANDIN_PORT = 18310



# Module scope, not session: Playwright's sync API keeps its event loop registered as
# "running" in the main thread while it is started, which would break the
# pytest-asyncio tests of other modules run in the same session.
@pytest.fixture(scope="module")
def chromium():
    from playwright import sync_api  # in the test extra

    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make system-deps` (Debian's chromium)")
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@pytest.fixture(scope="session")
def _standin_server():
    from standin import StandIn

    s = StandIn(STANDIN_PORT).start()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def standin(_standin_server):
    if not _standin_server.serving:  # a test stopped the gateway
        _standin_server.start()
    _standin_server.reset()
    yield _standin_server


class _AttachedStack:
    """A stack that is already running (dev loop): LOCALAI_WEBUI_STACK_JSON={"url","key","ports"}."""

    def __init__(self, path: str) -> None:
        info = json.loads(Path(path).read_text())
        self.url, self.api_key, self.model_ports = info["url"], info["key"], info["ports"]

    def vllm_metrics(self, name: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.model_ports[name]}/metrics", timeout=10) as r:
            return r.read().decode()

    def kill_backend(self, name: str) -> None:
        import signal

        port = str(self.model_ports[name]).encode()
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--port" in argv and argv[argv.index(b"--port") + 1] == port and b"vllm" in b" ".join(argv):
                os.killpg(int(proc.name), signal.SIGKILL)
                return
        raise AssertionError(f"no vLLM process for {name}")

    def wait_ready(self, *names: str, timeout: float = 600) -> None:
        import urllib.request

        from tests.harness import wait_until_sync

        def ready() -> bool:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                states = json.load(r)["models"]
            return all(states[n]["state"] == "ready" for n in names)
        wait_until_sync(ready, timeout, f"{names} ready", interval=0.5, ignoring=(OSError,))


@pytest.fixture
def stack(request):
    if os.environ.get("LOCALAI_WEBUI_STACK_JSON"):
        return _AttachedStack(os.environ["LOCALAI_WEBUI_STACK_JSON"])
    if os.environ.get("LOCALAI_WEBUI_STANDIN") == "1":
        return request.getfixturevalue("standin")
    return request.getfixturevalue("real_stack")


class UI:
    """A page on the WebUI plus what it logged."""

    def __init__(self, context, page, base_url: str) -> None:
        self.context = context
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def goto(self) -> None:
        self.page.goto(self.base_url + "/")
        self.page.wait_for_selector("#app.ready")

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__cspViolations || []")

    def assert_clean(self, allow: tuple[str, ...] = (), allow_csp_attrs: bool = False) -> None:
        """No JS errors and no CSP violation (messages containing an *allow* string are expected).

        ``allow_csp_attrs``: Chromium reports inline handler/style *attributes* it refused
        while an HTML fragment is parsed (even in DOMPurify's inert document), so tests
        that feed hostile HTML accept exactly those reports.
        """
        if allow_csp_attrs:
            allow = (*allow, "violates the following Content Security Policy directive")
        errs = [e for e in self.errors if not any(a in e for a in allow)]
        assert not errs, errs
        csp = self.csp_violations()
        if allow_csp_attrs:
            csp = [v for v in csp if not v.startswith(("script-src-attr inline", "style-src-attr inline"))]
        assert not csp, csp


@pytest.fixture
def open_ui(chromium):
    contexts = []

    def _open(base_url: str, api_key: str | None = None, *, viewport=None, color_scheme="light", goto=True, **kw) -> UI:
        ctx = chromium.new_context(
            viewport=viewport or {"width": 1280, "height": 800},
            color_scheme=color_scheme,
            reduced_motion="reduce",  # no transitions: screenshots show settled states
            accept_downloads=True,
            **kw,
        )
        contexts.append(ctx)
        init = ("window.__cspViolations = []; document.addEventListener('securitypolicyviolation',"
                " e => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));")
        if api_key is not None:
            init += (
                f"\nconst __k = {json.dumps(api_key)};"
                "\ntry { if (localStorage.getItem('localai.apiKey') === null)"
                " localStorage.setItem('localai.apiKey', JSON.stringify(__k)); } catch (e) {}"
            )
        ctx.add_init_script(init)
        page = ctx.new_page()
        page.set_default_timeout(15000)
        ui = UI(ctx, page, base_url.rstrip("/"))
        if goto:
            ui.goto()
        return ui

    yield _open
    for c in contexts:
        c.close()
