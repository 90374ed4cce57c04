"""The usage panel's "My batches" (#21) over the gateway's real Batch and Files APIs.

One gateway for the module: the stand-in (standin.py: the real gateway in front of the
fake backend) with `gateway.batch_dir` set and two named keys: alice makes batches through
the openai SDK, bob has none. The panel must follow alice's batches while it is open (a
batch held back, then let run, is seen to complete), download an output file with the key
in a header (never in a URL), and cancel a batch whose request is held by its model.
A screenshot lands in test-output/screenshots/batches.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import openai
import pytest
from playwright.sync_api import expect
from standin import StandIn, key_file
from uihelp import wait_connected

from tests.harness import free_port

pytestmark = pytest.mark.browser

ALICE = "sk-batches-alice-0123456789"
BOB = "sk-batches-bob-0123456789"
TALL = {"width": 1280, "height": 1200}
CHAT = "/v1/chat/completions"


def _jsonl(model: str, n: int) -> bytes:
    return b"".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": {
        "model": model, "messages": [{"role": "user", "content": f"question {i}"}]}}).encode() + b"\n"
        for i in range(n))


@pytest.fixture(scope="module")
def batch_gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batches")
    s = StandIn(free_port(), api_key=ALICE, gateway={
        "api_key_file": key_file(tmp, {"alice": ALICE, "bob": BOB}), "batch_dir": str(tmp / "batch")}).start()
    try:
        yield s
    finally:
        s.close()


def _batch(client: openai.OpenAI, model: str, n: int) -> str:
    uploaded = client.files.create(file=("in.jsonl", _jsonl(model, n)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h").id


def _open_panel(ui) -> None:
    wait_connected(ui.page)
    ui.page.click("#usage-btn")
    expect(ui.page.locator("#usage-dialog")).to_be_visible()
    expect(ui.page.locator("#batch-sec")).to_be_visible()


def test_batches_are_followed_downloaded_and_cancelled(batch_gateway, open_ui):
    gw = batch_gateway
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ALICE, max_retries=0)
    # coder does not serve yet: its batch's lines wait (in_progress, 0 of 3) until it does.
    gw.set_state("coder", "loading")
    done_id = _batch(client, "coder", 3)
    # chat holds its one request for ten minutes: that batch runs until it is cancelled.
    gw.backend("chat").ttft = 600
    held_id = _batch(client, "chat", 1)
    try:
        ui = open_ui(gw.url, ALICE, viewport=TALL)
        asked: list[str] = []
        ui.page.on("request", lambda r: asked.append(r.url))
        _open_panel(ui)
        page = ui.page
        rows = page.locator("#batch-body .batch")
        expect(rows).to_have_count(2)
        # Newest first.
        assert rows.evaluate_all("rs => rs.map(r => r.dataset.id)") == [held_id, done_id]
        done = page.locator(f'.batch[data-id="{done_id}"]')
        held = page.locator(f'.batch[data-id="{held_id}"]')
        expect(done.locator(".batch-status")).to_have_text("in_progress")
        expect(done.locator(".batch-endpoint")).to_have_text(CHAT)
        expect(done.locator(".batch-progress")).to_have_text("0 of 3")
        expect(done.locator(".batch-created")).to_have_text(re.compile(r"just now|\d+ s ago"))
        expect(done.get_by_role("button", name="Cancel")).to_be_visible()

        # The model comes up: the open panel sees the batch run to the end, without a click.
        gw.set_state("coder", "ready")
        expect(done.locator(".batch-status")).to_have_text("completed", timeout=30_000)
        expect(done.locator(".batch-progress")).to_have_text("3 of 3")
        expect(done.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
        expect(done.get_by_role("button", name="Cancel")).to_have_count(0)
        expect(done.get_by_role("button", name="Error file")).to_have_count(0)  # none failed: no error file

        with page.expect_download() as got:
            done.get_by_role("button", name="Output file").click()
        download = got.value
        assert download.suggested_filename == f"{done_id}-output.jsonl"
        assert download.url.startswith("blob:")
        lines = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == ["q-0", "q-1", "q-2"]
        assert all(line["response"]["status_code"] == 200 for line in lines)

        # The held batch: cancelled from the panel, after a confirmation.
        expect(held.locator(".batch-status")).to_have_text("in_progress")
        held.get_by_role("button", name="Cancel").click()
        expect(page.locator("#confirm-dialog")).to_be_visible()
        page.click("#confirm-ok")
        expect(held.locator(".batch-status")).to_have_text("cancelled", timeout=30_000)
        expect(held.get_by_role("button", name="Cancel")).to_have_count(0)
        assert client.batches.retrieve(held_id).status == "cancelled"
        ui.shot("batches")
        # The key travelled in headers only.
        assert asked and not any(ALICE in u for u in asked)

        page.keyboard.press("Escape")
        expect(page.locator("#usage-dialog")).to_be_hidden()
        ui.assert_clean()
    finally:
        gw.backend("chat").ttft = 0.0
        gw.set_state("coder", "ready")
        client.close()


def test_a_key_without_batches_sees_the_empty_state(batch_gateway, open_ui):
    ui = open_ui(batch_gateway.url, BOB)
    _open_panel(ui)
    expect(ui.page.locator("#batch-body .batch")).to_have_count(0)
    expect(ui.page.locator("#batch-body")).to_contain_text("No batches.")
    ui.assert_clean()


def test_a_gateway_without_the_batch_api_shows_no_section(open_ui):
    # `batch_dir: null`: GET /v1/batches answers 404 batch_disabled.
    gw = StandIn(free_port(), gateway={"batch_dir": None}).start()
    try:
        ui = open_ui(gw.url, gw.api_key)
        wait_connected(ui.page)
        with ui.page.expect_response(lambda r: "/v1/batches" in r.url) as listed:
            ui.page.click("#usage-btn")
        assert listed.value.status == 404
        assert listed.value.json()["error"]["code"] == "batch_disabled"
        expect(ui.page.locator("#usage-dialog")).to_be_visible()
        expect(ui.page.locator("#usage-body .budget")).to_have_count(2)  # the rest of the panel is there
        expect(ui.page.locator("#batch-sec")).to_be_hidden()
        # Chromium logs the 404 itself; the page adds no error of its own.
        ui.assert_clean(allow=("404",))
    finally:
        gw.close()
