"""WebUI behaviour that needs precise control of the server's answers.

These run against the stand-in stack (standin.py: the real gateway in front of
the scripted fake backend): 429 with Retry-After, a loading model, the
truncation header, the gateway going away and coming back, hostile HTML in
answers, and a 200-message conversation.
The main flows run against the real stack in test_webui_flows.py.
"""

from __future__ import annotations

import json
import re
import statistics

import pytest
from playwright.sync_api import expect
from uihelp import DESKTOP, PHONE, answers, last_answer, send, wait_answer, wait_connected

from tests.fakebackend import ScriptedError
from tests.harness import wait_until_sync

pytestmark = pytest.mark.browser


@pytest.fixture
def ui(standin, open_ui):
    u = open_ui(standin.url, standin.api_key)
    wait_connected(u.page)
    return u


def test_enter_sends_shift_enter_newline(standin, ui):
    page = ui.page
    standin.reply = "echo:got "
    page.click("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.locator("#input")).to_have_value("line one\nline two")
    expect(page.locator("#thread article")).to_have_count(0)
    page.keyboard.press("Enter")
    expect(page.locator("#thread article.user .bubble")).to_have_text("line one\nline two")
    expect(page.locator("#input")).to_have_value("")
    a = wait_answer(page)
    expect(a.locator(".body")).to_have_text("got line one\nline two")
    assert standin.requests[-1]["stream"] is True
    assert standin.requests[-1]["stream_options"] == {"include_usage": True}
    # The UI asked for usage itself: the gateway passes the usage event on only then
    # (it asks the backend for it either way). 7: the fake's prompt count; 5 words.
    expect(a.locator(".stats")).to_contain_text("7 prompt + 5 completion tokens")
    ui.assert_clean()


def test_429_retried_with_backoff_and_wait_shown(standin, ui):
    page = ui.page
    standin.script.extend([ScriptedError(429, "queue_full", 1), ScriptedError(429, "queue_full", 1)])
    standin.token_delay = 0.02
    send(page, "hello")
    wait = last_answer(page).locator(".wait")
    expect(wait).to_be_visible()
    expect(wait).to_contain_text(re.compile(r"busy \(queue full\)\. Retrying in \d+ s"))
    ui.shot("standin-desktop-light-429-retry")
    expect(wait).to_contain_text("retry 2 of 6", timeout=10_000)  # second wait: backoff doubled
    a = wait_answer(page, timeout=20_000)
    assert a.get_attribute("data-status") == "done"
    expect(wait).to_be_hidden()
    assert len(standin.requests) == 3
    ui.assert_clean(allow=("429",))


def test_stop_during_backoff_cancels_retries(standin, ui):
    page = ui.page
    standin.script.extend([ScriptedError(429, "queue_full", 5)] * 3)
    send(page, "hello")
    expect(last_answer(page).locator(".wait")).to_contain_text("Retrying in 5 s")
    page.click("#stop")
    expect(last_answer(page)).to_have_attribute("data-status", "stopped")
    expect(page.locator("#send")).to_be_visible()
    assert len(standin.requests) == 1
    ui.assert_clean(allow=("429",))


def test_loading_model_is_not_an_error(standin, ui):
    page = ui.page
    standin.set_state("chat", "loading")
    page.click("#model-btn")
    opt = page.locator('.model-opt[data-model="chat"]')
    expect(opt).to_have_attribute("data-state", "loading")
    expect(opt.locator(".opt-meta")).to_contain_text("Loading…")
    ui.shot("standin-desktop-light-model-loading")
    opt.click()
    expect(page.locator("#model-state")).to_have_text("Loading…")
    expect(page.locator("#model-dot")).to_have_attribute("data-state", "loading")
    expect(page.locator("#empty-sub")).to_contain_text("still loading")
    expect(page.locator("#conn")).to_have_attribute("data-state", "degraded")
    send(page, "are you up?")
    wait = last_answer(page).locator(".wait")
    expect(wait).to_contain_text("The model is loading. Retrying in")
    expect(last_answer(page).locator(".error-box")).to_have_count(0)
    standin.set_state("chat", "ready")
    a = wait_answer(page, timeout=20_000)
    assert a.get_attribute("data-status") == "done"
    expect(a.locator(".msg-model")).to_have_text("chat")
    expect(page.locator("#model-dot")).to_have_attribute("data-state", "ready", timeout=15_000)
    ui.assert_clean(allow=("503",))


def test_failed_model_shows_reason(standin, ui):
    page = ui.page
    standin.set_state("chat", "failed", "CUDA out of memory")
    page.click("#model-btn")
    opt = page.locator('.model-opt[data-model="chat"]')
    expect(opt).to_have_attribute("data-state", "failed", timeout=15_000)
    expect(opt.locator(".opt-reason")).to_have_text("CUDA out of memory")
    ui.assert_clean()


def test_truncation_notice(standin, ui, tmp_path):
    # A first turn of 1,800 words (the fake's tokens) where coder allows 1,536 prompt
    # tokens: the gateway drops that turn, its two messages, and says so in its header.
    page = ui.page
    history = [{"role": "user", "content": "Old question: " + "word " * 900},
               {"role": "assistant", "content": "Old answer: " + "word " * 900},
               {"role": "user", "content": "A short follow-up?"},
               {"role": "assistant", "content": "A short answer."}]
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"title": "Long history", "messages": history}))
    page.set_input_files("#import-file", str(path))
    page.click(".conv-item .conv-link")
    expect(page.locator("#thread article.msg")).to_have_count(4)
    send(page, "hello")
    a = wait_answer(page)
    notice = a.locator(".notice.trunc")
    expect(notice).to_contain_text("left out the 2 oldest messages")
    expect(page.locator("#ctx-warn")).to_contain_text("left out the 2 oldest messages to fit")
    assert standin.requests[-1]["messages"] == [*history[2:], {"role": "user", "content": "hello"}]
    ui.shot("standin-desktop-light-truncated")
    page.reload()
    expect(last_answer(page).locator(".notice.trunc")).to_contain_text("2 oldest messages")
    ui.assert_clean()


def test_gateway_down_then_recovers(standin, ui):
    page = ui.page
    send(page, "before")
    wait_answer(page)
    standin.stop()
    banner = page.locator("#banner")
    expect(page.locator("#conn")).to_have_attribute("data-state", "down", timeout=20_000)
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(re.compile(r"Can't reach the gateway.*Retrying"))
    ui.shot("standin-desktop-light-gateway-down")
    # Sending while it is down: a readable message, not a broken page.
    send(page, "while down")
    expect(last_answer(page).locator(".wait")).to_contain_text("Can't reach the gateway")
    standin.start()
    expect(page.locator("#conn")).to_have_attribute("data-state", "ok", timeout=20_000)
    expect(banner).to_be_hidden()
    expect(page.locator(".toast", has_text="Reconnected")).to_be_visible()
    a = wait_answer(page, timeout=30_000)  # the pending request retried by itself
    assert a.get_attribute("data-status") == "done"
    ui.assert_clean(allow=("Failed to load resource", "ERR_CONNECTION_REFUSED"))


HOSTILE = """Look: <img src="data:," onerror="window.__pwned = 1"> and <b>bold</b>
<script>window.__pwned = 2</script>
<a href="javascript:window.__pwned=3">click</a> [md link](javascript:window.__pwned=4) [docs](https://example.org/docs)
<iframe src="data:text/html,<script>parent.__pwned=5</script>"></iframe>
<div style="position:fixed;inset:0;background:red" onclick="window.__pwned=6">overlay</div>

```js
const x = 1; // highlighted
```
"""


def test_markdown_is_sanitised_and_highlighted(standin, open_ui):
    standin.reply = HOSTILE
    ui = open_ui(standin.url, standin.api_key, permissions=["clipboard-read", "clipboard-write"])
    page = ui.page
    send(page, "attack")
    a = wait_answer(page)
    body = a.locator(".body")
    expect(body.locator("b")).to_have_text("bold")
    assert body.locator("script, iframe").count() == 0
    html = body.inner_html()
    assert "onerror" not in html and "onclick" not in html and "style=" not in html
    assert "javascript:" not in html
    for link in body.locator("a[href]").all():
        assert link.get_attribute("rel") == "noopener noreferrer nofollow"
        assert link.get_attribute("target") == "_blank"
    body.locator("text=overlay").click()
    assert page.evaluate("window.__pwned") is None
    # Code: highlighted, with a working copy button.
    code = body.locator(".code-block")
    expect(code.locator(".code-lang")).to_have_text("js")
    expect(code.locator(".hljs-keyword").first).to_have_text("const")
    code.locator(".code-copy").click()
    expect(code.locator(".code-copy")).to_have_text("Copied!")
    assert page.evaluate("navigator.clipboard.readText()") == "const x = 1; // highlighted"
    # Chromium reports the handler/style attributes it refused while DOMPurify parsed
    # the hostile HTML (the CSP backing up the sanitiser); nothing else may be reported.
    ui.assert_clean(allow_csp_attrs=True)


def test_csp_is_enforced(standin, ui):
    page = ui.page
    page.evaluate("""() => {
      document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.__inline = 1">');
      const s = document.createElement('script'); s.textContent = 'window.__inline = 2'; document.body.append(s);
    }""")
    expect(page.locator("body")).to_be_attached()
    page.wait_for_function("window.__cspViolations.length >= 2")
    assert page.evaluate("window.__inline") is None
    violations = ui.csp_violations()
    assert all(v.startswith("script-src") for v in violations), violations


def test_edit_and_resend(standin, ui):
    page = ui.page
    standin.reply = "echo:You said: "
    send(page, "one")
    wait_answer(page)
    send(page, "two")
    wait_answer(page)
    first = page.locator("#thread article.user").first
    first.hover()
    first.locator('[data-act="edit"]').click()
    editor = first.locator(".edit-input")
    expect(editor).to_have_value("one")
    editor.fill("uno")
    ui.shot("standin-desktop-light-editing")
    first.locator(".edit-actions .primary").click()
    a = wait_answer(page)
    expect(a.locator(".body")).to_have_text("You said: uno")
    expect(page.locator("#thread article.msg")).to_have_count(2)
    assert standin.requests[-1]["messages"] == [{"role": "user", "content": "uno"}]
    expect(page.locator(".conv-item.active .conv-link")).to_have_text("uno")
    ui.assert_clean()


def test_regenerate_last_answer(standin, ui):
    page = ui.page
    send(page, "hello")
    wait_answer(page)
    first_id = last_answer(page).get_attribute("data-id")
    regen = last_answer(page).locator('[data-act="regen"]')
    expect(regen).to_be_visible()
    regen.click()
    expect(last_answer(page)).not_to_have_attribute("data-id", first_id)
    wait_answer(page)
    expect(answers(page)).to_have_count(1)
    assert len(standin.requests) == 2
    assert standin.requests[0]["messages"] == standin.requests[1]["messages"]
    ui.assert_clean()


def test_system_prompt_and_params(standin, ui):
    page = ui.page
    page.click("#chat-settings-btn")
    page.fill("#sys-input", "You are a pirate.")
    page.fill("#temp-input", "0.3")
    page.fill("#maxtok-input", "20")
    page.click("#chat-save")
    expect(page.locator("#system-pill")).to_contain_text("You are a pirate.")
    send(page, "hi")
    a = wait_answer(page)
    expect(a.locator(".flag")).to_have_text("Cut off (max tokens)")
    req = standin.requests[-1]
    assert req["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert req["temperature"] == 0.3 and req["max_tokens"] == 20
    # Per conversation: a new chat starts without it.
    page.keyboard.press("Control+Shift+O")
    expect(page.locator("#system-pill")).to_be_hidden()
    send(page, "plain")
    wait_answer(page)
    assert standin.requests[-1]["messages"][0]["role"] == "user"
    assert "temperature" not in standin.requests[-1]
    ui.assert_clean()


def test_sidebar_rename_search_delete_and_shortcuts(standin, ui):
    page = ui.page
    standin.token_delay = 0
    for text in ("alpha question", "beta question", "gamma question"):
        page.keyboard.press("Control+Shift+O")
        send(page, text)
        wait_answer(page)
    items = page.locator(".conv-item")
    expect(items).to_have_count(3)
    expect(items.first.locator(".conv-link")).to_have_text("gamma question")  # newest first
    # Rename.
    beta = page.locator(".conv-item", has_text="beta question")
    beta.hover()
    beta.locator('[data-act="rename"]').click()
    page.fill(".rename-input", "Renamed chat")
    page.keyboard.press("Enter")
    expect(page.locator(".conv-item", has_text="Renamed chat")).to_have_count(1)
    # Search (Ctrl+K) matches titles and message content.
    page.keyboard.press("Control+k")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("alpha")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("alpha question")
    page.fill("#search", "Fibonacci")  # in every answer's text
    expect(items).to_have_count(3)
    page.fill("#search", "zzz-nothing")
    expect(page.locator(".conv-none")).to_have_text("No chats match your search.")
    page.fill("#search", "")
    # Delete with confirmation.
    gamma = page.locator(".conv-item", has_text="gamma question")
    gamma.hover()
    gamma.locator('[data-act="delete"]').click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.click("#confirm-ok")
    expect(items).to_have_count(2)
    # Sidebar toggle and the shortcuts dialog.
    page.keyboard.press("Control+Shift+S")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.keyboard.press("Control+Shift+S")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.keyboard.press("Control+/")
    expect(page.locator("#help-dialog")).to_be_visible()
    ui.shot("standin-desktop-light-shortcuts")
    page.keyboard.press("Escape")
    expect(page.locator("#help-dialog")).to_be_hidden()
    # Renames and deletions survive a reload.
    page.reload()
    expect(page.locator(".conv-item")).to_have_count(2)
    expect(page.locator(".conv-item", has_text="Renamed chat")).to_have_count(1)
    ui.assert_clean()


def test_theme_toggle_persists(standin, ui):
    page = ui.page
    html = page.locator("html")
    page.click("#theme-btn")  # system -> light
    expect(html).to_have_attribute("data-theme", "light")
    page.click("#theme-btn")  # light -> dark
    expect(html).to_have_attribute("data-theme", "dark")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(33, 33, 33)"
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    page.click("#theme-btn")  # dark -> system
    expect(html).not_to_have_attribute("data-theme", re.compile(".*"))
    ui.assert_clean()


def test_phone_layout(standin, open_ui):
    ui = open_ui(standin.url, standin.api_key, viewport=PHONE, color_scheme="light", has_touch=True, is_mobile=True)
    page = ui.page
    wait_connected(page)
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    send_btn = page.locator("#send")
    page.fill("#input", "hello from a phone")
    send_btn.click()
    wait_answer(page)
    # Nothing overflows horizontally.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.click("#sb-open")
    expect(sidebar).to_be_in_viewport()
    expect(page.locator("#backdrop")).to_be_visible()
    ui.shot("standin-phone-light-drawer")
    page.click(".conv-item .conv-link")
    expect(sidebar).not_to_be_in_viewport()
    expect(page.locator("#backdrop")).to_be_hidden()
    ui.assert_clean()


# ---------------------------------------------------------------- long chats

def _long_conversation(n: int = 200) -> dict:
    msgs = []
    for i in range(n):
        if i % 2 == 0:
            msgs.append({"id": f"u{i}", "role": "user", "content": f"Question {i}: how does step {i} work?",
                         "created": i})
        else:
            code = f"\n\n```python\ndef step_{i}(x):\n    return x * {i}  # multiply\n```\n" if i % 5 == 0 else ""
            body = (
                f"Answer {i}. Here is **an explanation** with `inline code` and a list:\n\n"
                f"- first point about {i}\n- second point\n- third point\n{code}\n"
                "Some more text to make the message a realistic length, " * 3
            )
            msgs.append({"id": f"a{i}", "role": "assistant", "content": body, "model": "coder", "status": "done",
                         "stats": {"ttft_ms": 120, "tps": 42.0, "prompt_tokens": 100 + i, "completion_tokens": 80}})
    return {"id": "longchat", "title": "A very long chat", "created": 1, "updated": 2, "model": "coder",
            "system": "", "params": {}, "messages": msgs}


FRAME_PROBE = """() => {
  window.__frames = []; window.__probe = true;
  let last = performance.now();
  const loop = (t) => { window.__frames.push(t - last); last = t; if (window.__probe) requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
}"""


def test_long_conversation_streams_without_touching_history(standin, ui):
    page = ui.page
    conv = _long_conversation()
    page.evaluate(
        """(c) => {
          localStorage.setItem('localai.conv.' + c.id, JSON.stringify(c));
          localStorage.setItem('localai.index', JSON.stringify([{id: c.id, title: c.title, created: c.created,
                                                                 updated: c.updated, model: c.model,
                                                                 n: c.messages.length}]));
        }""",
        conv,
    )
    page.reload()
    page.wait_for_selector("#app.ready")
    open_ms = page.evaluate("""async () => {
        const t = performance.now();
        document.querySelector('.conv-item .conv-link').click();
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        return performance.now() - t;
    }""")
    expect(page.locator("#thread article.msg")).to_have_count(200)
    print(f"open 200-message chat: {open_ms:.0f} ms")
    assert open_ms < 3000

    # Stream a long answer while watching every DOM change outside the new message.
    paragraph = "A streamed paragraph with **bold** text and `code`. " * 6 + "\n\n"
    standin.reply = paragraph * 8 + "```python\nprint('done')\n```\n"
    standin.token_delay = 0.005
    page.evaluate("""() => {
        const thread = document.querySelector('#thread');
        for (const a of thread.querySelectorAll('article')) a.dataset.hist = '1';
        window.__firstNode = thread.querySelector('article');
        window.__historyMutations = 0;
        window.__obs = new MutationObserver((records) => {
          for (const r of records) {
            for (const n of r.removedNodes) if (n.dataset && n.dataset.hist) window.__historyMutations++;
            const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
            if (el && el !== thread && el.closest('[data-hist]')
                && !(r.type === 'attributes' && r.attributeName === 'data-hist')) window.__historyMutations++;
          }
        });
        window.__obs.observe(thread, {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    page.evaluate(FRAME_PROBE)
    send(page, "one more")
    a = wait_answer(page, timeout=60_000)
    assert a.get_attribute("data-status") == "done"
    frames = page.evaluate("window.__probe = false; window.__frames")
    assert page.evaluate("window.__historyMutations") == 0
    assert page.evaluate("window.__firstNode === document.querySelector('#thread article')"
                         " && window.__firstNode.isConnected")
    expect(page.locator("#thread article.msg")).to_have_count(202)
    frames = sorted(frames[1:])
    p95 = frames[int(len(frames) * 0.95)]
    print(f"streaming over 200 messages: {len(frames)} frames, median {statistics.median(frames):.1f} ms, "
          f"p95 {p95:.1f} ms")
    assert statistics.median(frames) < 34
    assert p95 < 100

    # Scrolling the whole history.
    scroll = page.evaluate("""async () => {
        const s = document.querySelector('#scroller');
        const deltas = []; let last = performance.now();
        for (let y = s.scrollHeight; y > 0; y -= 500) {
          s.scrollTop = y;
          await new Promise(r => requestAnimationFrame(r));
          const t = performance.now(); deltas.push(t - last); last = t;
        }
        return deltas;
    }""")
    scroll = sorted(scroll[1:])
    p95 = scroll[int(len(scroll) * 0.95)]
    print(f"scrolling: {len(scroll)} frames, median {statistics.median(scroll):.1f} ms, p95 {p95:.1f} ms")
    assert statistics.median(scroll) < 34
    assert p95 < 100
    ui.shot("standin-desktop-light-long-chat")
    ui.assert_clean()


# ---------------------------------------------------------------- screenshots

RICH_REPLY = """Sure: here is how to **read a file line by line** in Python.

```python
from pathlib import Path

def count_lines(path: str) -> int:
    \"\"\"Count the non-empty lines of a text file.\"\"\"
    with Path(path).open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())
```

Notes:

1. `Path.open` closes the file for you.
2. The generator keeps memory use flat, even for big files.

> Tip: use `wc -l` for a quick check on the shell.
"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_screenshots(standin, open_ui, scheme, size):
    vp = DESKTOP if size == "desktop" else PHONE
    ui = open_ui(standin.url, standin.api_key, viewport=vp, color_scheme=scheme)
    page = ui.page
    wait_connected(page)
    prefix = f"standin-{size}-{scheme}"
    ui.shot(f"{prefix}-empty")
    standin.token_delay = 0
    for title in ("Plan the team offsite", "SQL query for monthly revenue"):
        standin.reply = "Sure, let's do it."
        send(page, title)
        wait_answer(page)
        page.keyboard.press("Control+Shift+O")
    standin.reply = RICH_REPLY
    standin.prompt_tokens = 1000  # the meter shows a warning
    send(page, "How do I count the lines of a file in Python?")
    wait_answer(page)
    page.locator("#thread article.user").last.hover()
    ui.shot(f"{prefix}-chat")
    if size == "phone":
        page.click("#sb-open")
        expect(page.locator("#sidebar")).to_be_in_viewport()
        ui.shot(f"{prefix}-sidebar")
        page.click("#backdrop", position={"x": 370, "y": 400})
    # Streaming state (a slow answer), then stopped.
    standin.reply = RICH_REPLY * 3
    standin.token_delay = 0.05
    send(page, "Again, slower please")
    expect(last_answer(page)).to_have_class(re.compile(r"\bhas-text\b"))
    expect(last_answer(page).locator(".code-block")).to_be_visible()
    ui.shot(f"{prefix}-streaming")
    page.click("#stop")
    expect(last_answer(page)).to_have_attribute("data-status", "stopped")
    page.click("#model-btn")
    expect(page.locator("#model-menu")).to_be_visible()
    ui.shot(f"{prefix}-model-menu")
    page.keyboard.press("Escape")
    page.click("#chat-settings-btn")
    page.fill("#sys-input", "You are a concise senior engineer. Answer with code first.")
    ui.shot(f"{prefix}-chat-settings")
    page.click("#chat-cancel")
    ui.assert_clean()


def test_screenshot_key_dialog_dark_phone(standin, open_ui):
    ui = open_ui(standin.url, "wrong", viewport=PHONE, color_scheme="dark")
    expect(ui.page.locator("#key-dialog")).to_be_visible()
    expect(ui.page.locator("#key-error")).to_be_visible()
    ui.shot("standin-phone-dark-wrong-key")
    ui.assert_clean(allow=("401",))


def test_import_rejects_garbage(standin, ui, tmp_path):
    page = ui.page
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    page.set_input_files("#import-file", str(bad))
    expect(page.locator(".toast.error")).to_contain_text("not valid JSON")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}))
    page.set_input_files("#import-file", str(other))
    expect(page.locator(".toast.error", has_text="does not look like")).to_be_visible()
    # A bare OpenAI-style messages list with a system message is accepted.
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "imported question"},
        {"role": "assistant", "content": "imported answer"},
    ]}))
    page.set_input_files("#import-file", str(conv))
    expect(page.locator(".conv-item")).to_have_count(1)
    page.click(".conv-item .conv-link")
    expect(page.locator("#system-pill")).to_contain_text("be brief")
    expect(last_answer(page).locator(".body")).to_have_text("imported answer")
    ui.assert_clean()


def test_first_load_transfer_under_budget(standin, ui):
    """What the browser really transfers on a cold first load (gzip, headers included)."""
    page = ui.page
    total = page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0].transferSize;
        const res = performance.getEntriesByType('resource')
          .filter(e => new URL(e.name).pathname.startsWith('/assets/'));
        return nav + res.reduce((a, e) => a + e.transferSize, 0);
    }""")
    print(f"first load transferred: {total} bytes")
    assert 0 < total < 300 * 1024
    # Every asset came compressed and from this origin only.
    names = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert all(n.startswith(standin.url) for n in names), names
    ui.assert_clean()


def test_edit_or_delete_while_streaming(standin, ui):
    page = ui.page
    standin.reply = "echo:" + "slow words " * 200
    standin.token_delay = 0.02
    send(page, "first")
    expect(last_answer(page)).to_have_class(re.compile(r"\bhas-text\b"))
    # Editing the question while its answer streams: the old answer is dropped, a new one runs.
    user = page.locator("#thread article.user").first
    user.hover()
    user.locator('[data-act="edit"]').click()
    user.locator(".edit-input").fill("second")
    user.locator(".edit-actions .primary").click()
    expect(page.locator("#stop")).to_be_visible()
    expect(answers(page)).to_have_count(1)
    page.click("#stop")
    expect(last_answer(page)).to_have_attribute("data-status", "stopped")
    assert standin.requests[-1]["messages"] == [{"role": "user", "content": "second"}]
    # Deleting a chat while it streams: it stays deleted when the stream ends.
    page.keyboard.press("Control+Shift+O")
    send(page, "doomed")
    expect(last_answer(page)).to_have_class(re.compile(r"\bhas-text\b"))
    doomed = page.locator(".conv-item", has_text="doomed")
    doomed.hover()
    doomed.locator('[data-act="delete"]').click()
    page.click("#confirm-ok")
    expect(page.locator(".conv-item", has_text="doomed")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    page.reload()
    expect(page.locator(".conv-item")).to_have_count(1)
    expect(page.locator(".conv-item", has_text="doomed")).to_have_count(0)
    ui.assert_clean()


def test_reload_mid_stream_keeps_partial_answer(standin, ui):
    page = ui.page
    standin.reply = "partial " * 300
    standin.token_delay = 0.02
    send(page, "go")
    a = last_answer(page)
    expect(a.locator(".body")).to_contain_text("partial partial partial")
    page.reload()
    a = last_answer(page)
    expect(a).to_have_attribute("data-status", "stopped")
    expect(a.locator(".body")).to_contain_text("partial partial partial")
    expect(page.locator("#send")).to_be_visible()
    # The server saw the connection go away and stopped streaming.
    coder = standin.backend("coder")
    wait_until_sync(lambda: coder.active == 0, 10, "stand-in stream ended")
    assert coder.cancelled >= 1
    ui.assert_clean()
