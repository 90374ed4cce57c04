"""The benchmark's outputs: targets met or missed, the printed table, the chart."""

from __future__ import annotations

from pathlib import Path

from .scaleout import scaleout_table
from .swap import swap_table


def _get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def evaluate_targets(rep: dict) -> list[dict]:
    out = []

    def add(name, target, value, met, note=""):
        out.append({"target": name, "goal": target, "value": value,
                    "met": None if met is None else bool(met), "note": note})

    ol = rep.get("open_loop")
    if ol:
        p1000 = next((p for p in ol["points"] if p["offered_rps"] == 1000), None)
        if p1000:
            o = p1000["overhead_ms"]
            v50, v99 = o["p50"]["median"], o["p99"]["median"]
            add("A @1000 RPS: added latency p50", "<= 0.5 ms", v50, v50 is not None and v50 <= 0.5,
                f"median over rounds; range {o['p50']['min']}..{o['p50']['max']} ms")
            add("A @1000 RPS: added latency p99", "<= 2 ms", v99, v99 is not None and v99 <= 2.0,
                f"median over rounds; range {o['p99']['min']}..{o['p99']['max']} ms")
        sustained = [p["offered_rps"] for p in ol["points"] if p["sustained"]]
        best = max(sustained) if sustained else 0
        add("non-streaming RPS sustained with >= 99.9% success", ">= 3000 RPS", best, best >= 3000,
            "highest offered rate with success >= 99.9% and achieved >= 99% of offered"
            + (f"; stopped at {ol['stopped']['rate']} RPS: {ol['stopped']['reason']}" if ol.get("stopped") else ""))
    usage = rep.get("usage")
    if usage:
        v = usage["cost_p50_ms"]
        add("A @1000 RPS: the usage store's cost p50 (on - off)", "<= 0.1 ms", v, v <= 0.1,
            f"median of the rounds' p50 on - p50 off, {usage['cost_p50_ms_per_round']} ms; p50 off "
            f"{usage['p50_ms_median']['off']} ms, on {usage['p50_ms_median']['on']} ms (medians over rounds)")
    streams = rep.get("streams") or []
    s1000 = next((s for s in streams if s["users"] == 1000), None)
    if s1000:
        v = s1000["delta_ms"]["itl"]["p50"]["median"]
        epr = s1000["gateway"]["pooled"]["events_per_read"]
        add("B 1000 streams: Δ inter-token latency p50", "|Δ| <= 0.2 ms", v, v is not None and abs(v) <= 0.2,
            f"range {s1000['delta_ms']['itl']['p50']['min']}..{s1000['delta_ms']['itl']['p50']['max']} ms; "
            f"events per client read direct {s1000['direct']['pooled']['events_per_read']}, gateway {epr} "
            "(a negative Δ with bursts means events were held back and delivered together)")
        g = s1000["gateway"]
        add("B 1000 streams: every event delivered", "events out == events in, all streams complete",
            f"{g['events_out']}/{g['events_in']} events, {g['pooled']['failed']} failed streams",
            s1000["every_event_delivered"])
        rss = s1000["gateway_resources"]["peak_rss_mb_max"]
        add("B 1000 streams: gateway peak RSS", "<= 250 MB", rss, rss <= 250, "VmHWM, reset before each run; MiB")
    real = rep.get("real")
    if real and real.get("points"):
        for p in real["points"]:
            dl = p["delta_ms"]["ttft"]["p50"]
            noise = p["direct_ttft_p50_spread_ms"]
            add(f"real vLLM c={p['users']}: Δ TTFT p50 within direct's run-to-run noise",
                "Δ <= range of direct p50 over rounds", dl["median"], p["ttft_within_noise"],
                f"direct p50 range {noise['range']} ms over {len(p['direct']['rounds'])} rounds"
                + ("; negative beyond that range: the gateway runs were faster, i.e. the noise is larger than "
                   "3 rounds show" if dl["median"] is not None and noise["range"] is not None
                   and dl["median"] < -noise["range"] else ""))
    elif real and real.get("skipped"):
        add("real vLLM: Δ TTFT within noise", "", None, None, real["skipped"])
    return out


def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _row(cells, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _table(title, head, rows):
    widths = ([max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)] if rows
              else [len(h) for h in head])
    lines = [f"\n{title}", _row(head, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(r, widths) for r in rows]
    return "\n".join(lines)


def format_table(rep: dict) -> str:
    m = rep["meta"]
    v = m["versions"]
    parts = [
        f"localai gateway benchmark ({m['mode']}) {m['started']} .. {m.get('finished')}, {m.get('duration_s')} s",
        f"  {v.get('cpu')}; Python {v['python']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}, "
        f"orjson {v['orjson']}, vLLM {v.get('vllm')}; commit {str(v.get('git_commit'))[:10]}"
        f"{' (gateway/ modified)' if v.get('gateway_dirty') else ''}"
        + (f"; gateway from {m['gateway']['gateway_src']}" if m["gateway"].get("gateway_src") else ""),
        f"  pinning: {m['pinning']['note']} {m['pinning'].get('gateway_cpus', '')}",
        f"  load average at start {m['load']['before']['after_wait']} "
        f"({'idle' if m['load']['before']['idle'] else 'NOT idle: numbers are noisy'}), "
        f"at end {m['load'].get('after')}",
        f"  gateway logging: {m['gateway']['logging']}",
    ]
    seq = rep.get("sequential")
    if seq:
        rows = []
        for side in ("direct", "gateway"):
            lat = seq[side]["pooled"]["latency_ms"]
            rows.append([side, seq[side]["pooled"]["requests"], _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]),
                         _f(lat["max"])])
        o = seq["overhead_ms"]
        rows.append(["overhead", "", *(f"{_f(o[k]['median'])} [{_f(o[k]['min'])}..{_f(o[k]['max'])}]"
                                      for k in ("p50", "p90", "p99", "max"))])
        parts.append(_table("Profile A, sequential (ms; overhead = gateway - direct, median [range] over rounds)",
                            ["", "requests", "p50", "p90", "p99", "max"], rows))
    ol = rep.get("open_loop")
    if ol:
        rows = []
        for p in ol["points"]:
            d, g, o = p["direct"]["pooled"], p["gateway"]["pooled"], p["overhead_ms"]
            errs = ",".join(f"{k}:{n}" for k, n in g["errors"].items()) or "-"
            rows.append([p["offered_rps"], _f(d["achieved_rps"], 0), _f(g["achieved_rps"], 0),
                         f"{d['success_rate']:.4f}", f"{g['success_rate']:.4f}", errs,
                         _f(d["latency_ms"]["p50"]), _f(g["latency_ms"]["p50"]),
                         *(f"{_f(o[k]['median'])} [{_f(o[k]['min'])}..{_f(o[k]['max'])}]"
                           for k in ("p50", "p90", "p99", "max")),
                         _f(p["gateway_resources"]["cpu_util_max"], 2),
                         _f(p["gateway_resources"].get("cpu_us_per_request"), 0),
                         _f(p["gateway_resources"].get("runq_wait_frac_max"), 3),
                         _f(p["gateway_resources"]["peak_rss_mb_max"], 0),
                         _f(g["generator_lag_ms"]["p99"], 2) + ("!" if p["generator_bound"] else "")])
        parts.append(_table(
            f"Profile A, open loop ({ol['duration_s']:g} s per run, success = 200 within {ol['timeout_s']:g} s; "
            "overhead ms, median [range] over rounds; gw wait = share of the run the gateway waited for its "
            "CPU (other processes); lag = generator send lag p99, ! = generator-bound)",
            ["offered", "ach.dir", "ach.gw", "ok.dir", "ok.gw", "gw errors", "dir p50", "gw p50",
             "Δp50", "Δp90", "Δp99", "Δmax", "gw cpu", "µs/req", "gw wait", "rss MB", "lag p99"], rows))
        if ol.get("stopped"):
            parts.append(f"  ladder stopped at {ol['stopped']['rate']} RPS: {ol['stopped']['reason']}")
    streams = rep.get("streams")
    if streams:
        rows = []
        for p in streams:
            dl = p["delta_ms"]
            g = p["gateway"]
            rows.append([p["users"], _f(p["direct"]["pooled"]["ttft_ms"]["p50"], 2),
                         _f(dl["ttft"]["p50"]["median"]), _f(dl["ttft"]["p99"]["median"]),
                         _f(p["direct"]["pooled"]["itl_ms"]["p50"], 2),
                         _f(dl["itl"]["p50"]["median"]), _f(dl["itl"]["p99"]["median"]),
                         _f(_get(dl, "event_delay", "p50", "median")), _f(_get(dl, "event_delay", "p99", "median")),
                         f"{g['events_in']}/{g['events_out']}", g["pooled"]["failed"],
                         f"{_f(p['direct']['pooled']['events_per_read'], 2)}/{_f(g['pooled']['events_per_read'], 2)}",
                         _f(p["gateway_resources"]["cpu_util_max"], 2),
                         _f(p["gateway_resources"].get("cpu_us_per_event"), 1),
                         _f(p["gateway_resources"].get("runq_wait_frac_max"), 3),
                         _f(p["gateway_resources"]["peak_rss_mb_max"], 0), _f(p["bench_core_util_max"], 2)])
        parts.append(_table(
            "Profile B, streams (ms; Δ = gateway - direct, median over rounds; event delay = mock send -> client)",
            ["streams", "dir ttft50", "Δttft50", "Δttft99", "dir itl50", "Δitl50", "Δitl99", "Δdelay50",
             "Δdelay99", "ev in/out", "failed", "ev/read d/g", "gw cpu", "µs/event", "gw wait", "rss MB", "core0"],
            rows))
    held = rep.get("held")
    if held:
        o = held["overhead_ms"]
        g = held["gateway"]["pooled"]
        parts.append(_table(
            "Profile C, held requests (ms)",
            ["users", "requests", "ok.gw", "gw p50", "Δp50", "Δp99", "Δmax", "gw cpu", "rss MB"],
            [[held["users"], g["requests"], f"{g['success_rate']:.4f}", _f(g["latency_ms"]["p50"]),
              _f(o["p50"]["median"]), _f(o["p99"]["median"]), _f(o["max"]["median"]),
              _f(held["gateway_resources"]["cpu_util_max"], 2),
              _f(held["gateway_resources"]["peak_rss_mb_max"], 0)]]))
    rp = rep.get("replicas")
    if rp:
        rows = [[policy, b["pooled"]["requests"], f"{b['pooled']['success_rate']:.4f}",
                 _f(b["pooled"]["latency_ms"]["p50"]), _f(b["pooled"]["latency_ms"]["p99"]),
                 _f(b["pooled"]["latency_ms"]["max"]), _f(b["slow_share"], 3)] for policy, b in rp["balance"].items()]
        parts.append(_table(
            f"Replicas: one model on a fast and a slow server ({rp['servers']}), {rp['rate']}/s open loop over "
            f"{rp['conversations']} conversations (ms, through the gateway)",
            ["balance", "requests", "ok", "p50", "p99", "max", "slow share"], rows))
        rt = rp["retry"]
        parts.append(_table(
            "Replicas: the retry path, sequential (ms): flaky = healthy server + one closing every connection",
            ["model", "requests", "ok", "p50", "p99", "max", "retried", "extra per retry"],
            [[m, rt[m]["requests"], f"{rt[m]['success_rate']:.4f}", _f(rt[m]["latency_ms"]["p50"]),
              _f(rt[m]["latency_ms"]["p99"]), _f(rt[m]["latency_ms"]["max"]),
              rt["retried"] if m == "flaky" else "", _f(rt["retried_extra_ms"]) if m == "flaky" else ""]
             for m in ("solo", "flaky")]))
    if rep.get("scaleout"):
        parts.append(_table(*scaleout_table(rep["scaleout"])))
    real = rep.get("real")
    if real and real.get("points"):
        rows = []
        for p in real["points"]:
            dl = p["delta_ms"]
            d, g = p["direct"]["pooled"], p["gateway"]["pooled"]
            rows.append([p["users"], d["streams"], _f(d["ttft_ms"]["p50"], 2),
                         f"{_f(p['direct_ttft_p50_spread_ms']['range'], 2)}",
                         f"{_f(dl['ttft']['p50']['median'])} "
                         f"[{_f(dl['ttft']['p50']['min'])}..{_f(dl['ttft']['p50']['max'])}]",
                         _f(d["itl_ms"]["p50"], 2), _f(dl["itl"]["p50"]["median"]), _f(dl["itl"]["p99"]["median"]),
                         f"{_f(d['events_received'] / max(1, d['streams']), 1)}/"
                         f"{_f(g['events_received'] / max(1, g['streams']), 1)}", g["failed"]])
        parts.append(_table(
            f"Real vLLM (CPU, tiny model, {real['max_tokens']} tokens per stream; started in {real['startup_s']} s)",
            ["streams", "n dir", "dir ttft50", "dir noise", "Δttft50 [range]", "dir itl50", "Δitl50", "Δitl99",
             "ev/stream d/g", "failed"], rows))
    elif real:
        parts.append(f"\nReal vLLM: skipped ({real.get('skipped')})")
    if rep.get("swap"):
        title, head, rows, note = swap_table(rep["swap"])
        parts += [_table(title, head, rows), note]
    rows = [[t["target"], t["goal"], _f(t["value"]), {True: "met", False: "MISSED", None: "n/a"}[t["met"]]]
            for t in rep.get("targets", [])]
    parts.append(_table("Targets", ["target", "goal", "value", ""], rows))
    parts += [f"  {t['target']}: {t['note']}" for t in rep.get("targets", []) if t["note"]]
    return "\n".join(parts)


def print_table(rep: dict, out: Path) -> None:
    text = format_table(rep)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {out / 'report.json'}" + (f", {out / 'chart.png'}" if (out / "chart.png").exists() else ""))


def write_chart(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"localai gateway benchmark ({rep['meta']['mode']}, {rep['meta']['started']}): direct vs gateway")
    ax = axes[0][0]
    ol = rep.get("open_loop")
    if ol:
        rates = [p["offered_rps"] for p in ol["points"]]
        for side, style in (("direct", "--"), ("gateway", "-")):
            for k, color in (("p50", "tab:blue"), ("p90", "tab:green"), ("p99", "tab:orange"), ("max", "tab:red")):
                ys = [p[side]["pooled"]["latency_ms"][k] for p in ol["points"]]
                ax.plot(rates, ys, style, marker="o", color=color, label=f"{side} {k}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title("Profile A (instant JSON), open loop: latency percentiles")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        ax = axes[0][1]
        for side, style in (("direct", "--"), ("gateway", "-")):
            ax.plot(rates, [p[side]["pooled"]["achieved_rps"] for p in ol["points"]], style, marker="o",
                    label=f"{side} achieved")
        ax.plot(rates, rates, ":", color="grey", label="offered")
        ax2 = ax.twinx()
        ax2.plot(rates, [p["gateway_resources"]["cpu_util_max"] * 100 for p in ol["points"]], "-.", color="tab:purple",
                 marker="x", label="gateway CPU %")
        ax2.set_ylabel("gateway CPU (% of its core)")
        ax2.set_ylim(0, 110)
        ax.set_xlabel("offered (requests/s)")
        ax.set_ylabel("achieved (requests/s)")
        ax.set_title("Profile A: achieved vs offered")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="lower right", fontsize=8)
        ax.grid(True, alpha=0.3)
    streams = rep.get("streams")
    ax = axes[1][0]
    if streams:
        users = [p["users"] for p in streams]
        for key, label, color in (("itl", "Δ ITL", "tab:blue"), ("ttft", "Δ TTFT", "tab:orange"),
                                  ("event_delay", "Δ event delay", "tab:green")):
            for k, style in (("p50", "-"), ("p99", "--")):
                ys = [_get(p["delta_ms"], key, k, "median") for p in streams]
                ax.plot(users, ys, style, marker="o", color=color, label=f"{label} {k}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("gateway - direct (ms)")
        ax.set_title("Profile B (SSE): added latency per stream")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[1][1]
    real = rep.get("real")
    if real and real.get("points"):
        users = [p["users"] for p in real["points"]]
        for side, style in (("direct", "--"), ("gateway", "-")):
            for k, color in (("p50", "tab:blue"), ("p99", "tab:orange")):
                ax.plot(users, [p[side]["pooled"]["ttft_ms"][k] for p in real["points"]], style, marker="o",
                        color=color, label=f"{side} TTFT {k}")
                ax.plot(users, [p[side]["pooled"]["itl_ms"][k] for p in real["points"]], style, marker="s",
                        color="tab:green" if k == "p50" else "tab:red", label=f"{side} ITL {k}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("ms")
        ax.set_title("Real vLLM (CPU, tiny model): TTFT and ITL")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "real vLLM mode not run", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
