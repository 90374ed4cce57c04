"""Main WebUI flows in headless Chromium against the real stack.

The ``stack`` fixture is the lead's ``real_stack`` (gateway in front of real vLLM
servers on generated tiny models). Answers of tiny models are gibberish, so the
tests look at structure and behaviour, not wording.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect
from uihelp import (
    DESKTOP,
    PHONE,
    answers,
    last_answer,
    metric,
    models,
    pick_model,
    send,
    stream_lengths,
    wait_answer,
    wait_connected,
    wait_streaming_text,
    watch_stream,
)

from tests.harness import wait_until_sync

pytestmark = [pytest.mark.browser, pytest.mark.real]


def _chat_models(stack) -> list[dict]:
    return [m for m in models(stack.url, stack.api_key) if m.get("task", "generate") == "generate"]


def _ready_models(stack) -> list[str]:
    """Ready chat models, real servers first (presets run on one of them)."""
    ms = [m for m in _chat_models(stack) if m.get("state", "ready") == "ready"]
    return [m["id"] for m in sorted(ms, key=lambda m: bool(m.get("preset_of")))]


def _default_model(stack) -> str:
    ms = _chat_models(stack)
    d = next((m for m in ms if m.get("default")), None) or ms[0]
    return d["id"]


def _set_max_tokens(page, n: int | None, temperature: float | None = None) -> None:
    """Chat settings (max tokens, temperature) of the open conversation."""
    page.click("#chat-settings-btn")
    page.fill("#maxtok-input", "" if n is None else str(n))
    page.fill("#temp-input", "" if temperature is None else str(temperature))
    page.click("#chat-save")
    expect(page.locator("#chat-dialog")).not_to_be_visible()


def test_send_and_stream(stack, open_ui):
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    model = _default_model(stack)
    expect(page.locator("#model-name")).to_have_text(model)
    _set_max_tokens(page, 300)
    watch_stream(page)
    send(page, "Hello! Please tell me a story about a robot.")
    user = page.locator("#thread article.user").last
    expect(user.locator(".bubble")).to_have_text("Hello! Please tell me a story about a robot.")
    a = wait_answer(page)
    # A random tiny model may sample EOS early; regenerate until it writes all 300 tokens.
    for _ in range(5):
        assert a.get_attribute("data-status") == "done", a.inner_text()
        if a.get_attribute("data-finish") == "length":
            break
        watch_stream(page)
        a.locator('[data-act="regen"]').click()
        a = wait_answer(page)
    # The stop button replaced send while the answer streamed, and send is back.
    assert page.evaluate("window.__stopShown")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    # Rendered as it arrived, not once at the end: text showed in two or more states while
    # streaming. (How many depends on the machine's load; the stand-in tier pins chunk timing.)
    # Not always growing: Markdown shrinks it when a closing `*` or backtick turns shown
    # marks into formatting, and the tiny model writes such characters at random.
    lengths = [n for n in stream_lengths(page) if n > 0]
    assert len(lengths) >= 2, lengths
    # Per-answer stats from the usage chunk.
    stats = a.locator(".stats")
    expect(stats).to_contain_text("to first token")
    expect(stats).to_contain_text("tok/s")
    expect(stats).to_contain_text(re.compile(r"\d+ prompt \+ \d+ completion tokens"))
    completion = int(re.search(r"\+ (\d+) completion", stats.inner_text()).group(1))
    assert completion == 300
    expect(a.locator(".flag")).to_have_text("Cut off (max tokens)")
    expect(a.locator(".msg-model")).to_have_text(model)
    # The meter now counts from the real usage.
    expect(page.locator("#meter-text")).to_contain_text(re.compile(r"^\d[\d,]* / [\d,]+ tokens$"))
    # The sidebar lists the chat, titled after the first message.
    expect(page.locator(".conv-item.active .conv-link")).to_have_text("Hello! Please tell me a story about a robot.")
    ui.shot("real-desktop-light-chat")
    ui.assert_clean()


def test_stop_cancels_generation_in_backend(stack, open_ui):
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    model = "general"  # the stack's long-context model: the answer cannot end before the stop
    pick_model(page, model)
    before = stack.vllm_metrics(model)
    tokens_before = metric(before, "vllm:generation_tokens_total", model) or 0
    prompt_before = metric(before, "vllm:prompt_tokens_total", model) or 0
    # Greedy decoding: the tiny models never sample EOS then (they repeat a token, here
    # new lines), so with no max_tokens the answer runs for minutes, to the context limit.
    _set_max_tokens(page, None, temperature=0)
    send(page, "Write a very long essay about the history of computing, with many chapters.")
    a = wait_streaming_text(page)
    page.keyboard.press("Escape")  # the stop shortcut
    expect(a).to_have_attribute("data-status", "stopped")
    ui.shot("real-desktop-light-stopped")
    expect(a.locator(".flag")).to_have_text("Stopped")
    expect(page.locator("#send")).to_be_visible()
    text_at_stop = a.locator(".body").inner_text()
    # The backend stopped generating: nothing runs any more and the token counter
    # stands still (two reads in a row; a live request adds tens of tokens between them) ...
    t_stop = time.monotonic()
    seen = {}

    def settled() -> bool:
        text = stack.vllm_metrics(model)
        running = metric(text, "vllm:num_requests_running", model) or 0
        tokens = metric(text, "vllm:generation_tokens_total", model)
        still = running == 0 and tokens == seen.get("tokens")
        seen["tokens"], seen["text"] = tokens, text
        return still

    wait_until_sync(settled, 30, "vLLM no longer generating", interval=0.25)
    print(f"vLLM settled {time.monotonic() - t_stop:.2f} s after the stop")
    after = seen["text"]
    assert (metric(after, "vllm:num_requests_waiting", model) or 0) == 0
    # vLLM did generate for us, but not to the end: run to the end, the answer would
    # have filled the context (max_model_len - prompt tokens; greedy never stops early).
    generated = metric(after, "vllm:generation_tokens_total", model) - tokens_before
    prompt = metric(after, "vllm:prompt_tokens_total", model) - prompt_before
    full = next(m for m in models(stack.url, stack.api_key) if m["id"] == model)["max_model_len"] - prompt
    print(f"stopped after {generated:.0f} of {full:.0f} tokens")
    assert 0 < generated < full, (generated, full)
    assert a.locator(".body").inner_text() == text_at_stop
    # The partial answer is kept and saved.
    page.reload()
    page.wait_for_selector("#app.ready")
    expect(last_answer(page)).to_have_attribute("data-status", "stopped")
    ui.assert_clean()


def test_model_switch(stack, open_ui):
    ids = _ready_models(stack)
    assert len(ids) >= 2, f"the stack should serve two chat models, has {ids}"
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    page.click("#model-btn")
    menu = page.locator("#model-menu")
    expect(menu).to_be_visible()
    for mid in ids:
        opt = menu.locator(f'.model-opt[data-model="{mid}"]')
        expect(opt).to_have_attribute("data-state", "ready")
        expect(opt.locator(".opt-meta")).to_contain_text("ctx")
    expect(menu.locator(".model-opt")).to_have_count(len(_chat_models(stack)))
    for m in models(stack.url, stack.api_key):
        if m.get("task", "generate") != "generate":  # e.g. embedding models: not for chat
            expect(menu.locator(f'.model-opt[data-model="{m["id"]}"]')).to_have_count(0)
        if m.get("preset_of"):
            alias = menu.locator(f'.model-opt[data-model="{m["id"]}"] .opt-alias')
            expect(alias).to_contain_text(f"preset of {m['preset_of']}")
    ui.shot("real-desktop-light-model-menu")
    page.keyboard.press("Escape")
    _set_max_tokens(page, 16)
    first, second = ids[0], ids[1]
    pick_model(page, first)
    send(page, "Hi there")
    expect(wait_answer(page).locator(".msg-model")).to_have_text(first)
    pick_model(page, second)
    send(page, "And now the other model")
    a = wait_answer(page)
    assert a.get_attribute("data-status") == "done"
    expect(a.locator(".msg-model")).to_have_text(second)
    # The meter follows the chosen model's limit.
    limit = next(m for m in models(stack.url, stack.api_key) if m["id"] == second)
    limit = limit.get("context_limit") or limit["max_model_len"]
    expect(page.locator("#meter-text")).to_contain_text(f"/ {limit:,} tokens")
    # The choice is remembered with the conversation.
    page.reload()
    page.wait_for_selector("#app.ready")
    expect(page.locator("#model-name")).to_have_text(second)
    ui.assert_clean()


def test_reload_keeps_history(stack, open_ui):
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    _set_max_tokens(page, 12)
    send(page, "First question")
    wait_answer(page)
    send(page, "Second question")
    wait_answer(page)
    first_answer = answers(page).first.locator(".body").inner_text()
    page.reload()
    page.wait_for_selector("#app.ready")
    expect(page.locator("#thread article.msg")).to_have_count(4)
    expect(page.locator("#thread article.user .bubble").first).to_have_text("First question")
    assert answers(page).first.locator(".body").inner_text() == first_answer
    expect(page.locator(".conv-item")).to_have_count(1)
    # A new chat, then back to the old one from the sidebar.
    page.keyboard.press("Control+Shift+O")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#thread article")).to_have_count(0)
    page.click(".conv-item .conv-link")
    expect(page.locator("#thread article.msg")).to_have_count(4)
    ui.assert_clean()


def test_export_import_round_trip(stack, open_ui, tmp_path):
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    _set_max_tokens(page, 12)
    send(page, "Remember the word pineapple")
    wait_answer(page)
    answer_text = last_answer(page).locator(".body").inner_text()
    with page.expect_download() as dl:
        page.click("#export-btn")
    path = tmp_path / "export.json"
    dl.value.save_as(path)
    data = json.loads(path.read_text())
    assert data["format"] == "localai-chats"
    (conv,) = data["conversations"]
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][0]["content"] == "Remember the word pineapple"
    assert conv["messages"][1]["stats"]["completion_tokens"] >= 1

    # Delete it, then import the file back.
    page.hover(".conv-item")
    page.click('.conv-item [data-act="delete"]')
    page.click("#confirm-ok")
    expect(page.locator(".conv-item")).to_have_count(0)
    page.set_input_files("#import-file", str(path))
    expect(page.locator(".toast", has_text="Imported 1 chat")).to_be_visible()
    expect(page.locator(".conv-item")).to_have_count(1)
    page.click(".conv-item .conv-link")
    expect(page.locator("#thread article.user .bubble")).to_have_text("Remember the word pineapple")
    assert last_answer(page).locator(".body").inner_text() == answer_text

    # Importing into a fresh browser (another person) gives the same chat.
    other = open_ui(stack.url, stack.api_key)
    other.page.set_input_files("#import-file", str(path))
    expect(other.page.locator(".conv-item")).to_have_count(1)
    other.page.click(".conv-item .conv-link")
    expect(other.page.locator("#thread article.msg")).to_have_count(2)
    ui.assert_clean()


def test_context_warning(stack, open_ui):
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    model = _default_model(stack)
    m = next(x for x in models(stack.url, stack.api_key) if x["id"] == model)
    limit = m.get("context_limit") or m["max_model_len"]
    warn = page.locator("#ctx-warn")
    expect(warn).to_be_hidden()
    # A draft worth ~65% of the context (the meter estimates 4 characters a token).
    page.fill("#input", "lorem ipsum " * int(limit * 0.65 * 4 / 12))
    expect(page.locator("#meter")).to_have_attribute("data-level", "warn")
    expect(warn).to_be_visible()
    expect(warn).to_contain_text(re.compile(r"\d+% of .* context used"))
    ui.shot("real-desktop-light-context-warning")
    page.fill("#input", "")
    expect(warn).to_be_hidden()
    # After a real exchange the meter uses usage.prompt_tokens from the gateway.
    _set_max_tokens(page, 8)
    send(page, "short")
    a = wait_answer(page)
    stats = a.locator(".stats").inner_text()
    p, c = map(int, re.search(r"(\d+) prompt \+ (\d+) completion", stats).groups())
    expect(page.locator("#meter-text")).to_have_text(f"{p + c:,} / {limit:,} tokens")
    ui.assert_clean()


def _take_down(stack, model: str):
    """Stop one model's vLLM server; returns how to bring it back (if it is not automatic)."""
    if hasattr(stack, "stop_backend"):
        stack.stop_backend(model)
        return lambda: stack.start_backend(model)
    stack.kill_backend(model)  # `localai up` restarts a crashed server by itself
    return lambda: None


def test_backend_down_then_up(stack, open_ui):
    model = _default_model(stack)
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    dot = page.locator("#model-dot")
    expect(dot).to_have_attribute("data-state", "ready")
    bring_back = _take_down(stack, model)
    try:
        # The UI notices through /health and shows the model as not ready (not a crash).
        expect(dot).not_to_have_attribute("data-state", "ready", timeout=30_000)
        expect(page.locator("#model-state")).not_to_be_empty()
        expect(page.locator("#conn")).not_to_have_attribute("data-state", "ok")
        ui.shot("real-desktop-light-backend-down")
        # Sending now gives a readable answer: a wait-and-retry notice or an error box.
        _set_max_tokens(page, 8)
        send(page, "Are you there?")
        a = last_answer(page)
        expect(a.locator(".error-box, .wait")).to_be_visible(timeout=30_000)
        ui.shot("real-desktop-light-backend-down-send")
    finally:
        bring_back()
    stack.wait_ready(model)
    expect(dot).to_have_attribute("data-state", "ready", timeout=30_000)
    wait_connected(page)
    # Either the pending request retried by itself, or it failed and "Try again" works.
    a = wait_answer(page, timeout=600_000, status=None)
    if a.get_attribute("data-status") == "error":
        a.locator('.error-box [data-act="regen"]').click()
        a = wait_answer(page)
    assert a.get_attribute("data-status") == "done", a.inner_text()
    ui.assert_clean(allow=("Failed to load resource",))


def test_wrong_key(stack, open_ui):
    ui = open_ui(stack.url, "definitely-not-the-key")
    page = ui.page
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-error")).to_contain_text("did not accept")
    # The page behind it is intact.
    expect(page.locator("#sidebar")).to_be_attached()
    expect(page.locator("#composer")).to_be_attached()
    ui.shot("real-desktop-light-wrong-key")
    # Another wrong key: a plain message, the dialog stays.
    page.fill("#key-input", "still-wrong")
    page.click("#key-save")
    expect(page.locator("#key-error")).to_contain_text("not accepted")
    expect(dialog).to_be_visible()
    # The right key: models load, chatting works.
    page.fill("#key-input", stack.api_key)
    page.click("#key-save")
    expect(dialog).to_be_hidden()
    expect(page.locator("#model-name")).to_have_text(_default_model(stack))
    # A key that goes bad later: the chat request shows a plain error with a way out.
    page.evaluate("localStorage.setItem('localai.apiKey', JSON.stringify('revoked'))")
    send(page, "hello")
    a = wait_answer(page, status="error")
    expect(a.locator(".error-box")).to_contain_text("did not accept your API key")
    a.locator('[data-act="key"]').click()
    expect(dialog).to_be_visible()
    ui.assert_clean(allow=("401",))


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_screenshots_real(stack, open_ui, scheme, size):
    ui = open_ui(stack.url, stack.api_key, viewport=DESKTOP if size == "desktop" else PHONE, color_scheme=scheme)
    page = ui.page
    wait_connected(page)
    ui.shot(f"real-{size}-{scheme}-empty")
    _set_max_tokens(page, 40)
    send(page, "Give me a short Python example.")
    wait_answer(page)
    ui.shot(f"real-{size}-{scheme}-answer")
    ui.assert_clean()


def test_truncation_notice_from_gateway(stack, open_ui, tmp_path):
    """A chat longer than the context: the gateway drops old turns and the UI says so."""
    ui = open_ui(stack.url, stack.api_key)
    page = ui.page
    wait_connected(page)
    msgs = []
    for i in range(12):
        msgs.append({"role": "user", "content": f"Question {i}: " + "lorem ipsum dolor sit amet " * 30})
        msgs.append({"role": "assistant", "content": f"Answer {i}: " + "consectetur adipiscing elit " * 30})
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"title": "Long history", "messages": msgs, "params": {"max_tokens": 8}}))
    page.set_input_files("#import-file", str(path))
    page.click(".conv-item .conv-link")
    expect(page.locator("#thread article.msg")).to_have_count(24)
    # Past the limit already: the warning says old messages will be left out.
    expect(page.locator("#meter")).to_have_attribute("data-level", "high")
    expect(page.locator("#ctx-warn")).to_contain_text("Longer than")
    send(page, "And the final question?")
    a = wait_answer(page)
    assert a.get_attribute("data-status") == "done", a.inner_text()
    notice = a.locator(".notice.trunc")
    expect(notice).to_contain_text(re.compile(r"left out the \d+ oldest messages"))
    n = int(re.search(r"the (\d+) oldest", notice.inner_text()).group(1))
    assert 0 < n <= 24
    # The meter now counts what was sent (usage), and keeps warning that turns are dropped.
    expect(page.locator("#ctx-warn")).to_contain_text(f"left out the {n} oldest messages")
    expect(page.locator(".conv-item.active .conv-link")).to_have_text("Long history")
    ui.shot("real-desktop-light-truncated")
    page.reload()
    expect(last_answer(page).locator(".notice.trunc")).to_contain_text(f"the {n} oldest messages")
    ui.assert_clean()
