"""Small helpers shared by the WebUI browser tests."""

from __future__ import annotations

import json
import re
import urllib.request

from playwright.sync_api import Page, expect

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# An answer's data-status once it no longer streams.
SETTLED = re.compile(r"^(done|stopped|error)$")


def models(base_url: str, api_key: str) -> list[dict]:
    req = urllib.request.Request(base_url.rstrip("/") + "/v1/models", headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["data"]


def wait_connected(page: Page, timeout: float = 20_000) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", re.compile("ok|degraded"), timeout=timeout)


def pick_model(page: Page, model_id: str) -> None:
    page.click("#model-btn")
    page.click(f'#model-menu .model-opt[data-model="{model_id}"]')
    expect(page.locator("#model-name")).to_have_text(model_id)


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def answers(page: Page):
    return page.locator("#thread article.assistant")


def last_answer(page: Page):
    return answers(page).last


def wait_answer(page: Page, timeout: float = 60_000, status: str | None = "done"):
    """Wait until the last answer has settled and check how: by default it must be done.

    An answer that settles otherwise (an error, or stopped) fails here, with the UI's
    error text, instead of passing for finished. ``status=None``: any settled state
    (for a caller that looks at it itself)."""
    a = last_answer(page)
    expect(a).to_have_attribute("data-status", SETTLED, timeout=timeout)
    got = a.get_attribute("data-status")
    if status is not None and got != status:
        error = a.locator(".error-box")
        detail = error.inner_text() if error.count() else a.inner_text()
        raise AssertionError(f"answer {got}, not {status}: {detail}")
    return a


def watch_stream(page: Page) -> None:
    """Record every text length the streaming answer goes through (MutationObserver)."""
    page.evaluate(
        """() => {
        window.__lengths = [];
        const obs = new MutationObserver(() => {
          const a = document.querySelector('#thread article.assistant.streaming .body');
          if (a) {
            const n = a.textContent.length, l = window.__lengths;
            if (!l.length || l[l.length-1] !== n) l.push(n);
          }
        });
        obs.observe(document.querySelector('#thread'), {subtree: true, childList: true, characterData: true});
        window.__streamObs = obs;
        window.__stopShown = false;
        const stop = document.querySelector('#stop');
        new MutationObserver(() => {
          if (!stop.hidden && document.querySelector('#send').hidden) window.__stopShown = true;
        }).observe(stop, {attributes: true, attributeFilter: ['hidden']});
      }"""
    )


def stream_lengths(page: Page) -> list[int]:
    return page.evaluate("window.__lengths || []")


def metric(text: str, name: str, model: str | None = None) -> float | None:
    """Sum of a Prometheus metric's samples (optionally for one model_name)."""
    total = None
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", line)
        if not m:
            continue
        labels = m.group(1) or ""
        if model is not None and "model_name=" in labels and f'model_name="{model}"' not in labels:
            continue
        total = (total or 0.0) + float(m.group(2))
    return total


def wait_streaming_text(page: Page, timeout: float = 60_000):
    """Wait until the streaming answer shows text; fail with the UI's error if it failed instead."""
    a = last_answer(page)
    expect(a).to_have_class(re.compile(r"\b(has-text|error|done)\b"), timeout=timeout)
    if a.get_attribute("data-status") == "error":
        raise AssertionError("answer failed: " + a.locator(".error-box").inner_text())
    return a
