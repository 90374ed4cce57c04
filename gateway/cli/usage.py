"""`localai usage`: who used which model, how many tokens and how much GPU time, from the usage
database itself (the gateway may be stopped). docs/usage.md."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from gateway.config.schema import KeyLimits
from gateway.http.usage import parse_since
from gateway.keys.usage import reading, spent_now, summary

COLUMNS = ("REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "GPU SECONDS", "GPU SHARE")


def report(db: Path, since_text: str, limits: KeyLimits | None) -> dict:
    """The sums since `since_text`, every key's with its budget and what it spent of it.
    Raises ValueError (a bad --since), FileNotFoundError or sqlite3.Error."""
    now = time.time()
    since = parse_since(since_text, now) // 3600 * 3600
    with reading(db) as conn:
        out = summary(conn, since)
        spent = spent_now(conn, now)
    for row in out["by_key"]:
        day, month = spent.get(row["key"], (0, 0))
        own = limits.for_key(row["key"]) if limits is not None else None
        row.update(tokens_today=day, tokens_month=month,
                   tokens_per_day=own.tokens_per_day if own else None,
                   tokens_per_month=own.tokens_per_month if own else None)
    all_busy = float(out["totals"]["gpu_seconds"])
    for rows in (out["by_model"], out["by_day"]):
        for row in rows:  # in the table, every row's share is of all GPU time in the window
            row["gpu_share"] = round(row["gpu_seconds"] / all_busy, 4) if all_busy else 0.0
    return {"db": str(db), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)), **out}


def _quota(row: dict) -> str:
    parts = []
    for label, used, budget in (("day", row["tokens_today"], row["tokens_per_day"]),
                                ("month", row["tokens_month"], row["tokens_per_month"])):
        if budget is not None:
            parts.append(f"{label} {used}/{budget} ({100 * used / budget:.0f}%)")
    return ", ".join(parts)


def table(data: dict, by: str) -> str:
    rows = data[f"by_{by}"]
    head = [by.upper(), *COLUMNS] + (["QUOTA USED"] if by == "key" else [])
    lines = [head]
    for row in rows:
        label = row[by] or "(no key)"
        cells = [label, str(row["requests"]), str(row["errors"]), str(row["prompt_tokens"]),
                 str(row["completion_tokens"]), f"{row['gpu_seconds']:.1f}", f"{100 * row['gpu_share']:.0f}%"]
        if by == "key":
            cells.append(_quota(row))
        lines.append(cells)
    t = data["totals"]
    lines.append(["total", str(t["requests"]), str(t["errors"]), str(t["prompt_tokens"]),
                  str(t["completion_tokens"]), f"{t['gpu_seconds']:.1f}", "100%" if t["gpu_seconds"] else "0%"]
                 + ([""] if by == "key" else []))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [f"usage since {data['since']} ({data['db']})"]
    for line in lines:
        out.append("  ".join(cell.ljust(w) if i == 0 or i == len(head) - 1 and by == "key" else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip())
    return "\n".join(out)


def usage_main(db: Path, since: str, by: str, as_json: bool, limits: KeyLimits | None) -> tuple[int, str]:
    """(exit status, what to print): the report, or one line saying what is wrong with the file."""
    try:
        data = report(db, since, limits)
    except ValueError as exc:
        return 2, f"usage: --since: {exc}"
    except FileNotFoundError:
        return 1, (f"usage: no usage database at {db} (the gateway makes it on its first start; "
                   "see gateway.usage_db)")
    except sqlite3.Error as exc:
        what = "is locked by another process" if "locked" in str(exc) else f"cannot be read: {exc}"
        return 1, f"usage: the usage database {db} {what}"
    return 0, json.dumps(data, indent=2) if as_json else table(data, by)
