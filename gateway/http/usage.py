"""What the usage store (keys/usage.py) and the budgets hold, read back over HTTP: GET /v1/usage
(the calling key's own) and GET /v1/usage/team (every key's, for gateway.admin_keys).
docs/usage.md. Each request's row is recorded by the access middleware (middleware.py)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import sqlite3
import time

from aiohttp import web

from gateway.base.errors import ApiError
from gateway.http.appkeys import ACCESS, KEY_NAME, USAGE
from gateway.http.middleware import is_admin, open_past_budget
from gateway.http.pipeline import json_response
from gateway.keys.usage import FIELDS, next_midnight, next_month, read_summary

log = logging.getLogger("localai.usage")

_SINCE = re.compile(r"(\d{1,5})([dh])")
DEFAULT_SINCE = "30d"


def parse_since(value: str, now: float) -> float:
    """`Nd`, `Nh` (back from now) or `YYYY-MM-DD` (that local day's start), as a time.time()."""
    match = _SINCE.fullmatch(value)
    if match:
        return now - int(match[1]) * (86400 if match[2] == "d" else 3600)
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a time: write Nd (days), Nh (hours) or YYYY-MM-DD") from None
    return time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(request: web.Request) -> float:
    try:
        since = parse_since(request.query.get("since", DEFAULT_SINCE), time.time())
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_value", param="since") from None
    return since // 3600 * 3600  # the store sums by the hour


async def _summary(request: web.Request, since: float, key: str | None) -> dict:
    """The store's sums, read in a thread (the file may be large, or locked a while)."""
    store = request.app.get(USAGE)
    empty = {"totals": dict.fromkeys(FIELDS, 0), "by_model": [], "by_day": []} | (
        {"by_key": []} if key is None else {})
    if store is None:
        return empty
    try:
        return await asyncio.to_thread(read_summary, store.path, since, key)
    except FileNotFoundError:
        return empty
    except sqlite3.Error as exc:
        log.error("usage database %s cannot be read: %s", store.path, exc)
        raise ApiError(503, f"The usage database cannot be read ({exc}); the gateway serves on, and the "
                            "token budgets hold. See the gateway's log.", code="usage_unavailable",
                       type="server_error") from None


def _quota(request: web.Request, key: str) -> dict:
    limiter = request.app[ACCESS].limiter
    limit, spent, now = limiter.limit_of(key), limiter.spending.of(key), time.time()
    out = {}
    for name, budget, used, resets in (("tokens_per_day", limit.tokens_per_day, spent.day_tokens, next_midnight),
                                       ("tokens_per_month", limit.tokens_per_month, spent.month_tokens, next_month)):
        out[name] = {"limit": budget, "used": used, "remaining": None if budget is None else max(0, budget - used),
                     "resets_at": _utc(resets(now))}
    return out


@open_past_budget  # a key over its budget may still read what it spent
async def own_usage(request: web.Request) -> web.Response:
    key = request.get(KEY_NAME, "")
    since = _since(request)
    limit = request.app[ACCESS].limiter.limit_of(key)
    summary = await _summary(request, since, key)
    return json_response({
        "key": key, "admin": is_admin(request), "since": _utc(since),
        "expires": limit.expires.isoformat() if limit.expires else None, "models": limit.models,
        "quota": _quota(request, key), **summary})


@open_past_budget
async def team_usage(request: web.Request) -> web.Response:
    key = request.get(KEY_NAME, "")
    if not is_admin(request):
        raise ApiError(403, f"API key '{key}' may read its own usage only (GET /v1/usage); the team's is for the "
                            "keys in gateway.admin_keys.", code="admin_only", type="permission_error")
    since = _since(request)
    summary = await _summary(request, since, None)
    access = request.app[ACCESS]
    limiter = access.limiter
    by_key = {row["key"]: row for row in summary["by_key"]}
    # Every named key shows, used or not, so an admin sees who has a budget and who never came.
    for name in sorted(access.keyring.key_names() - by_key.keys()):
        by_key[name] = {"key": name, **dict.fromkeys(FIELDS, 0), "gpu_share": 0.0}
    rows = []
    for name, row in sorted(by_key.items()):
        limit, spent = limiter.limit_of(name), limiter.spending.of(name)
        rows.append({**row, "tokens_today": spent.day_tokens, "tokens_month": spent.month_tokens,
                     "tokens_per_day": limit.tokens_per_day, "tokens_per_month": limit.tokens_per_month,
                     "expires": limit.expires.isoformat() if limit.expires else None})
    for row in summary["by_model"]:
        row["gpu_share"] = 1.0  # the model's total: all of its own busy time
    return json_response({"since": _utc(since), "totals": summary["totals"], "by_key": rows,
                          "by_model": summary["by_model"], "by_day": summary["by_day"]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/usage", own_usage)
    app.router.add_get("/v1/usage/team", team_usage)
