"""The WebUI's usage panel (#20) over the gateway's real GET /v1/usage and /v1/usage/team.

One gateway for the module: the stand-in (standin.py: the real gateway in front of the
fake backend) with two named keys, `alice` with a daily token budget and `boss` an admin
key, and its own usage database. Each key makes chat requests first; the panel must show
what the backend reported for them. Screenshots of both views land in
test-output/screenshots/ (usage-member.png, usage-admin.png).
"""

from __future__ import annotations

import datetime
import json
import re
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect
from standin import StandIn, key_file
from uihelp import wait_connected

from tests.harness import free_port, wait_until_sync

pytestmark = pytest.mark.browser

ALICE = "sk-usage-alice-0123456789"
BOSS = "sk-usage-boss-0123456789"
ALICE_PER_DAY = 1000
ALICE_EXPIRES = datetime.date.today() + datetime.timedelta(days=60)  # the last day alice's key works
TALL = {"width": 1280, "height": 1400}  # the whole panel on screen, for the screenshots
SOME_TEXT = re.compile(r".+")


def _call(url: str, key: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def _chat(url: str, key: str, model: str) -> int:
    """One answer; the tokens (prompt + completion) the backend reported for it."""
    used = _call(url, key, "/v1/chat/completions",
                 {"model": model, "messages": [{"role": "user", "content": "hello"}]})["usage"]
    return used["prompt_tokens"] + used["completion_tokens"]


@pytest.fixture(scope="module")
def usage_gateway(tmp_path_factory):
    """The gateway, after alice asked coder twice and boss asked chat once; the tokens each used."""
    tmp = tmp_path_factory.mktemp("usage")
    s = StandIn(free_port(), api_key=ALICE, gateway={
        "api_key_file": key_file(tmp, {"alice": ALICE, "boss": BOSS}),
        "admin_keys": ["boss"],
        "key_limits": {"per_key": {"alice": {"tokens_per_day": ALICE_PER_DAY, "models": ["cod*"],
                                             "expires": ALICE_EXPIRES.isoformat()}}},
        "usage_db": str(tmp / "usage.db"),
    }).start()
    try:
        s.reply = "the usage panel counts these words"
        tokens = {"alice": _chat(s.url, ALICE, "coder") + _chat(s.url, ALICE, "coder"),
                  "boss": _chat(s.url, BOSS, "chat")}
        # The store writes in batches, off the request path: wait until both keys' requests are in.
        wait_until_sync(lambda: _call(s.url, ALICE, "/v1/usage")["totals"]["requests"] == 2
                        and _call(s.url, BOSS, "/v1/usage")["totals"]["requests"] == 1, 10, "usage recorded")
        yield s, tokens
    finally:
        s.close()


def _open_panel(ui) -> None:
    """Open the panel from the keyboard, as a user without a mouse would."""
    wait_connected(ui.page)
    ui.page.focus("#usage-btn")
    ui.page.keyboard.press("Enter")
    expect(ui.page.locator("#usage-dialog")).to_be_visible()
    expect(ui.page.locator("#usage-status")).to_be_empty()  # loaded, no error


def test_member_sees_own_budget_and_models_but_no_team(usage_gateway, open_ui):
    gw, tokens = usage_gateway
    ui = open_ui(gw.url, ALICE, viewport=TALL)
    asked: list[str] = []
    ui.page.on("request", lambda r: asked.append(r.url) if "/v1/usage" in r.url else None)
    _open_panel(ui)
    page = ui.page
    expect(page.locator("#usage-who")).to_have_text("key alice")
    day = page.locator('.budget[data-budget="day"]')
    used = tokens["alice"]
    expect(day.locator(".budget-text")).to_have_text(f"{used:,} of {ALICE_PER_DAY:,} tokens")
    expect(day.locator(".budget-detail")).to_contain_text(f"{ALICE_PER_DAY - used:,} left · resets in ")
    expect(day.get_by_role("progressbar", name="Tokens today")).to_have_attribute(
        "aria-valuenow", str(round(100 * used / ALICE_PER_DAY)))
    expect(page.locator('.budget[data-budget="month"] .budget-detail')).to_have_text("No budget set")
    expect(page.locator(".usage-meta")).to_contain_text(f"Valid through {ALICE_EXPIRES.isoformat()} (")
    expect(page.locator(".usage-meta")).to_contain_text("Models: cod*")
    rows = page.locator("#usage-models tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("th, td")).to_have_text(["coder", "2", "0", f"{used:,}", SOME_TEXT, SOME_TEXT])
    expect(page.locator("#usage-team")).to_have_count(0)
    ui.shot("usage-member")
    # Not an admin: the page never asks for the team's usage (the gateway would refuse it).
    assert asked and not any("/v1/usage/team" in u for u in asked), asked
    # Esc closes the panel and gives the focus back to the button that opened it.
    page.keyboard.press("Escape")
    expect(page.locator("#usage-dialog")).to_be_hidden()
    expect(page.locator("#usage-btn")).to_be_focused()
    ui.assert_clean()


def test_picker_lists_only_the_models_the_key_may_use(usage_gateway, open_ui):
    gw, _ = usage_gateway
    for key, listed in ((ALICE, ["coder"]), (BOSS, ["chat", "coder"])):
        ui = open_ui(gw.url, key)
        wait_connected(ui.page)
        ui.page.click("#model-btn")
        options = ui.page.locator("#model-menu .model-opt")
        expect(options).to_have_count(len(listed))
        assert sorted(options.evaluate_all("os => os.map(o => o.dataset.model)")) == listed
        ui.assert_clean()


def test_admin_sees_the_team_table_and_chart(usage_gateway, open_ui):
    gw, tokens = usage_gateway
    ui = open_ui(gw.url, BOSS, viewport=TALL)
    _open_panel(ui)
    page = ui.page
    expect(page.locator("#usage-who")).to_have_text("key boss · admin")
    expect(page.locator('.budget[data-budget="day"] .budget-detail')).to_have_text("No budget set")
    team = page.locator("#usage-team")
    expect(team).to_be_visible()
    keys = team.locator("#usage-keys tbody tr")
    expect(keys).to_have_count(2)
    alice = keys.filter(has=page.locator("th", has_text="alice"))
    cells = alice.locator("td")
    expect(cells.nth(0)).to_have_text("2")  # requests
    expect(cells.nth(2)).to_have_text(f"{tokens['alice']:,}")
    expect(cells.nth(3)).to_have_text(f"{tokens['alice']:,} / {ALICE_PER_DAY:,}")  # today, against the budget
    boss = keys.filter(has=page.locator("th", has_text="boss"))
    expect(boss.locator("td").nth(2)).to_have_text(f"{tokens['boss']:,}")
    # The chart: 30 days, today's bar the only one standing, named in words for a screen reader.
    bars = team.locator("svg.usage-chart rect.bar")
    expect(bars).to_have_count(30)
    today = _call(gw.url, BOSS, "/v1/usage/team")["by_day"][-1]["day"]  # the gateway host's calendar day
    assert bars.last.get_attribute("data-day") == today
    assert float(bars.last.get_attribute("height")) > 0
    assert all(float(h) == 0 for h in bars.evaluate_all("bs => bs.slice(0, -1).map(b => b.getAttribute('height'))"))
    total = tokens["alice"] + tokens["boss"]
    expect(team.get_by_role("img")).to_have_attribute("aria-label", re.compile(rf": {total:,} in all, most on "))
    ui.shot("usage-admin")
    # The same over HTTP: a key that is not an admin key is refused the team's usage.
    with pytest.raises(urllib.error.HTTPError) as refused:
        _call(gw.url, ALICE, "/v1/usage/team")
    assert refused.value.code == 403
    assert json.load(refused.value)["error"]["code"] == "admin_only"
    ui.assert_clean()
