"""Model-controlled HTML must neither drive nor imitate the WebUI (issue #10, point 6).

An answer, or a chat imported from a file, is text the model chose. These run the
real bundle against the stand-in gateway with the two payloads from the issue: a
button carrying the app's own `data-act="regen"`, and a fake gateway error box with
an off-site sign-in link. What the user must see: the words as plain text, no button
to press, nothing happening when the text is clicked, and no element drawn with the
app's error styling or an alert role.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect
from uihelp import answers, last_answer, send, wait_answer, wait_connected

from tests.harness import wait_until_sync

pytestmark = pytest.mark.browser

FAKE_BUTTON = '<button data-act="regen">Session expired – click to continue</button>'
FAKE_ERROR = '<div class="error-box" role="alert">…<a href="https://elsewhere.example/login">Sign in again</a></div>'


@pytest.fixture
def ui(standin, open_ui):
    u = open_ui(standin.url, standin.api_key)
    wait_connected(u.page)
    return u


def _assert_inert(page: Page, body) -> None:
    """The answer's markdown holds no control and nothing styled or announced as the app's."""
    assert body.locator("button, input, select, textarea, form").count() == 0
    # (.md-blk: the app's own wrapper of each markdown block while an answer streams)
    assert body.locator("[data-act], [class]:not(.md-blk), [role], [id], [style]").count() == 0
    assert page.locator("#thread .error-box, #thread [role=alert]").count() == 0


def _click_does_nothing(page: Page, standin, text: str) -> None:
    before_ids = page.locator("#thread article.msg").evaluate_all("els => els.map(e => e.dataset.id)")
    before_requests = len(standin.requests)
    page.get_by_text(text).click()
    # A click that regenerated would have replaced the answer and sent a request by now
    # (the thread's handler does both before it returns).
    after_ids = page.locator("#thread article.msg").evaluate_all("els => els.map(e => e.dataset.id)")
    assert after_ids == before_ids
    assert len(standin.requests) == before_requests
    assert page.locator("#thread article.streaming").count() == 0
    expect(page.locator("#stop")).to_be_hidden()


def _answered(standin, page: Page, reply: str):
    """The finished answer's markdown body, when the model answers *reply*."""
    standin.reply = reply
    send(page, "hello")
    a = wait_answer(page)
    assert a.get_attribute("data-status") == "done"
    return a.locator(".body")


def test_answer_with_app_button_is_shown_as_text(standin, ui):
    page = ui.page
    body = _answered(standin, page, f"Before.\n\n{FAKE_BUTTON}\n\nAfter.")
    expect(body).to_contain_text("Session expired – click to continue")
    _assert_inert(page, body)
    _click_does_nothing(page, standin, "Session expired – click to continue")
    assert answers(page).count() == 1
    ui.assert_clean()


def test_streaming_answer_never_shows_the_button(standin, ui):
    page = ui.page
    # Slow tokens and a long tail: the fake button is painted while the answer streams.
    standin.token_delay = 0.15
    standin.reply = f"{FAKE_BUTTON}\n\n" + " ".join(["more"] * 40)
    send(page, "hello")
    a = last_answer(page)
    body = a.locator(".body")
    expect(body).to_contain_text("Session expired – click to continue")
    expect(a).to_have_attribute("data-status", "streaming")
    _assert_inert(page, body)
    page.click("#stop")
    expect(a).to_have_attribute("data-status", "stopped")
    wait_until_sync(lambda: standin.backend("coder").cancelled, 20, "the model server saw the stream cancelled")
    ui.assert_clean()


def test_answer_with_fake_error_box_is_not_an_error(standin, ui):
    page = ui.page
    body = _answered(standin, page, f"Here you go.\n\n{FAKE_ERROR}\n")
    expect(body).to_contain_text("Sign in again")
    _assert_inert(page, body)
    # The link stays a link the user can read and judge, opened away from the app.
    link = body.get_by_role("link", name="Sign in again")
    assert link.get_attribute("href") == "https://elsewhere.example/login"
    assert link.get_attribute("target") == "_blank"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    ui.assert_clean()


def test_imported_chat_cannot_drive_the_app(standin, ui, tmp_path):
    page = ui.page
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"title": "imported", "messages": [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": f"{FAKE_BUTTON}\n\n{FAKE_ERROR}"},
    ]}))
    page.set_input_files("#import-file", str(chat))
    expect(page.locator(".conv-item")).to_have_count(1)
    page.click(".conv-item .conv-link")
    body = last_answer(page).locator(".body")
    expect(body).to_contain_text("Session expired – click to continue")
    expect(body).to_contain_text("Sign in again")
    _assert_inert(page, body)
    _click_does_nothing(page, standin, "Session expired – click to continue")
    assert len(standin.requests) == 0
    ui.assert_clean()


def test_task_list_boxes_stay_but_a_model_input_does_not(standin, ui):
    page = ui.page
    body = _answered(standin, page, '- [x] shipped\n- [ ] tested\n\n'
                                    'Password: <input type="password" name="pw" placeholder="your password">\n')
    boxes = body.locator("input")
    expect(boxes).to_have_count(2)
    for box in boxes.all():
        assert box.get_attribute("type") == "checkbox"
        assert box.is_disabled()
    assert boxes.first.is_checked() and not boxes.last.is_checked()
    expect(body).to_contain_text("Password:")
    ui.assert_clean()
