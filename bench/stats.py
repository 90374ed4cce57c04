"""Summaries of load-generator results: percentiles, error kinds, stream timings, deltas.

Plain Python (no numpy) so the benchmark runs in the gateway's own venv.
Every duration is in milliseconds in the summaries.
"""

from __future__ import annotations

from collections import Counter
from statistics import median

PCTS = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_xs:
        return None
    if q >= 1.0:
        return sorted_xs[-1]
    k = max(0, min(len(sorted_xs) - 1, int(round(q * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def dist_ms(xs: list[float]) -> dict:
    s = sorted(xs)
    out = {name: _ms(percentile(s, q)) for name, q in PCTS}
    out["mean"] = _ms(sum(s) / len(s)) if s else None
    out["n"] = len(s)
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 4)


def summarize_requests(results, t_start: float | None = None, offered_rate: float | None = None) -> dict:
    """Non-streaming results: success, error kinds, latency from send, rates, generator lag."""
    n = len(results)
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error)
    out = {
        "requests": n,
        "ok": len(ok),
        "success_rate": round(len(ok) / n, 6) if n else None,
        "errors": dict(errors),
        "latency_ms": dist_ms([r.latency for r in ok]),
    }
    if t_start is not None and ok:
        last = max(r.t_done for r in ok)
        first_send = min(r.t_send for r in results if r.t_send)
        last_send = max(r.t_send for r in results if r.t_send)
        out["achieved_rps"] = round(len(ok) / (last - t_start), 1) if last > t_start else None
        out["sent_rps"] = round((n - 1) / (last_send - first_send), 1) if last_send > first_send else None
        lag = [r.t_send - r.t_sched for r in results if r.t_send and r.t_sched]
        out["generator_lag_ms"] = dist_ms(lag)
        out["sched_latency_ms"] = dist_ms([r.t_done - r.t_sched for r in ok])
    elif ok and len(ok) > 1:
        span = max(r.t_done for r in ok) - min(r.t_send for r in ok)
        out["achieved_rps"] = round(len(ok) / span, 1) if span > 0 else None
    if offered_rate is not None:
        out["offered_rps"] = offered_rate
    return out


def stream_samples(results, expected_events: int | None) -> dict:
    """Raw per-stream measures (seconds), kept for pooling across rounds."""
    ttft, itl, transit = [], [], []
    complete = failed = 0
    events = reads = 0
    errors: Counter = Counter()
    for r in results:
        good = r.error is None and r.status == 200 and r.done_marker and (
            expected_events is None or len(r.events) == expected_events)
        if good:
            complete += 1
        else:
            failed += 1
            errors[r.error or ("incomplete" if r.status == 200 else f"http_{r.status}")] += 1
        events += len(r.events)
        reads += r.reads
        ev = r.events
        if ev:
            ttft.append(ev[0] - r.t_send)
            itl.extend(ev[i] - ev[i - 1] for i in range(1, len(ev)))
        transit.extend(r.transit)
    return {"ttft": ttft, "itl": itl, "transit": transit, "complete": complete, "failed": failed,
            "events": events, "reads": reads, "errors": errors, "streams": len(results)}


def summarize_streams(s: dict, expected_events: int | None) -> dict:
    itl = s["itl"]
    coalesced = sum(1 for x in itl if x < 50e-6)
    out = {
        "streams": s["streams"], "complete": s["complete"], "failed": s["failed"],
        "errors": dict(s["errors"]),
        "events_received": s["events"],
        "events_expected": expected_events * s["streams"] if expected_events is not None else None,
        "events_per_read": round(s["events"] / s["reads"], 3) if s["reads"] else None,
        "coalesced_gap_fraction": round(coalesced / len(itl), 5) if itl else None,
        "ttft_ms": dist_ms(s["ttft"]),
        "itl_ms": dist_ms(itl),
    }
    if s["transit"]:
        out["event_delay_ms"] = dist_ms(s["transit"])
    return out


def merge_samples(samples: list[dict]) -> dict:
    out = {"ttft": [], "itl": [], "transit": [], "complete": 0, "failed": 0, "events": 0, "reads": 0,
           "errors": Counter(), "streams": 0}
    for s in samples:
        for k in ("ttft", "itl", "transit"):
            out[k].extend(s[k])
        for k in ("complete", "failed", "events", "reads", "streams"):
            out[k] += s[k]
        out["errors"].update(s["errors"])
    return out


def delta(direct_rounds: list[dict], gateway_rounds: list[dict], direct_pooled: dict,
          gateway_pooled: dict) -> dict:
    """gateway - direct at each percentile: per round (median and range over rounds) and pooled.

    Each argument is a distribution from dist_ms (or None)."""
    out = {}
    for name, _ in PCTS + (("mean", None),):
        per_round = [g[name] - d[name] for d, g in zip(direct_rounds, gateway_rounds, strict=True)
                     if d and g and d.get(name) is not None and g.get(name) is not None]
        pooled = None
        if direct_pooled and gateway_pooled and direct_pooled.get(name) is not None \
                and gateway_pooled.get(name) is not None:
            pooled = round(gateway_pooled[name] - direct_pooled[name], 4)
        out[name] = {
            "median": round(median(per_round), 4) if per_round else None,
            "min": round(min(per_round), 4) if per_round else None,
            "max": round(max(per_round), 4) if per_round else None,
            "rounds": [round(x, 4) for x in per_round],
            "pooled": pooled,
        }
    return out


def spread(values: list[float]) -> dict:
    """Run-to-run spread of one statistic over rounds."""
    vs = [v for v in values if v is not None]
    if not vs:
        return {"median": None, "min": None, "max": None, "range": None}
    return {"median": round(median(vs), 4), "min": round(min(vs), 4), "max": round(max(vs), 4),
            "range": round(max(vs) - min(vs), 4)}
