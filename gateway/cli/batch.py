"""`localai batch ls|show ID|cancel ID`: the key's batches on the running gateway (docs/batch.md),
through its Batch API with the key the other verbs use ($LOCALAI_API_KEY or the config's key file)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.cli.ollama_verbs import Gateway, _call


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _progress(b: dict) -> str:
    c = b["request_counts"]
    return f"{c['completed'] + c['failed']}/{c['total']}" + (f" ({c['failed']} failed)" if c["failed"] else "")


def render(batches: list[dict]) -> str:
    rows = [("ID", "STATUS", "ENDPOINT", "DONE", "CREATED")]
    rows += [(b["id"], b["status"], b["endpoint"], _progress(b), _when(b["created_at"])) for b in batches]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def batch_main(gateway: Gateway, verb: str, batch_id: str | None, as_json: bool) -> int:
    if verb == "ls":
        batches = _call(gateway, "GET", "/v1/batches?limit=100")["data"]
        print(json.dumps(batches, indent=2) if as_json else render(batches))
        return 0
    if batch_id is None:
        raise SystemExit(f"localai: batch {verb} needs a batch id (see `localai batch ls`)")
    batch = _call(gateway, "POST" if verb == "cancel" else "GET",
                  f"/v1/batches/{batch_id}" + ("/cancel" if verb == "cancel" else ""))
    if as_json:
        print(json.dumps(batch, indent=2))
        return 0
    print(render([batch]))
    for field in ("input_file_id", "output_file_id", "error_file_id"):
        print(f"{field}: {batch.get(field) or '-'}")
    for error in (batch.get("errors") or {}).get("data", []):
        print(f"line {error.get('line')}: {error.get('code')}: {error.get('message')}")
    return 0
