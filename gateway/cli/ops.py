"""Operator commands for a systemd deployment: `localai status` and `localai logs`.

status_main(args): every localai unit's state, each model's readiness
(loading / ready / failed and why), ports, the gateway, and GPU memory and
utilisation per card (NVML) or a plain "no GPU" line.
    args.config: Path of the localai YAML (--config, or as main.py found it)
    args.json:   bool, print one JSON document instead of the table
    Exit: 0 everything ready, 1 something is not, 2 the config cannot be read.

logs_main(args): the journal of one unit or all, one readable line per
record; the gateway's JSON lines are unpacked into level, logger, message
and key=value fields.
    args.config: Path (to resolve a model alias to its unit)
    args.target: None (every localai unit), "gateway", or a model name/alias
    args.lines:  int, how many past records (journalctl -n; default 100)
    args.follow: bool, keep printing new records (journalctl -f)
    args.since:  str | None, journalctl --since ("1 hour ago", "2026-01-01 10:00")
    args.json:   bool, print the records as JSON lines (fields merged) instead
    Exit: journalctl's status (0 normally; 1 when it is missing).

Only the standard library, the package's config/plan and the runtime
record's URL helper are used: the commands work on a host where the gateway
is not running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from gateway.app.runtime import client_url
from gateway.base import gpu as gpu_mod

GATEWAY_UNIT = "localai-gateway.service"
TARGET_UNIT = "localai.target"
MODEL_UNIT = "localai-model@{}.service"
# The units log to their own journald namespace (LogNamespace=localai); '+' also reads the
# host's journal, where systemd's own lines about the units (started, failed) are.
JOURNAL = "--namespace=+localai"
UNIT_GLOB = "localai-*"
_SHOW_PROPS = ["ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus", "ExecMainCode",
               "ActiveEnterTimestamp", "InactiveExitTimestamp", "LoadState", "UnitFileState"]
_PRIORITY = {"0": "EMERG", "1": "ALERT", "2": "CRIT", "3": "ERROR", "4": "WARNING", "5": "NOTICE",
             "6": "INFO", "7": "DEBUG"}


# --- helpers --------------------------------------------------------------

def _load(config: Path):
    from gateway.plan.validate import load_config

    return load_config(config)


def _systemd_running() -> bool:
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


def unit_state(unit: str) -> dict:
    """systemctl show's properties of one unit ({} without systemd)."""
    if not _systemd_running():
        return {}
    res = subprocess.run(["systemctl", "show", unit, "--no-pager", *[f"-p{p}" for p in _SHOW_PROPS]],
                         capture_output=True, text=True)
    props = {}
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        props[key] = value
    return props


def _http_status(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback/config URLs
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.reason or ""
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, str(reason)


def _last_error_line(unit: str) -> str:
    """The last line of the unit's journal that looks like an error (for 'failed: why')."""
    if shutil.which("journalctl") is None:
        return ""
    res = subprocess.run(["journalctl", JOURNAL, "-u", unit, "-n", "200", "-o", "cat", "--no-pager"],
                         capture_output=True, text=True)
    lines = [line.strip() for line in res.stdout.splitlines() if line.strip()]
    keys = ("Error", "error:", "Exception", "Traceback", "CUDA out of memory", "No available memory",
            "not enough", "Killed", "failed")
    for line in reversed(lines):
        if any(k in line for k in keys) and not line.startswith(("File ", "^", "Traceback")):
            return line[:300]
    return lines[-1][:300] if lines else ""


def _since(props: dict) -> str:
    ts = props.get("ActiveEnterTimestamp") or props.get("InactiveExitTimestamp") or ""
    return ts.strip()


def model_readiness(props: dict, health: int | None, unit: str, on_demand: bool = False) -> tuple[str, str]:
    """(readiness, why) from the unit's state and the model's /health answer."""
    active = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    if health == 200:
        return "ready", ""
    if not props:
        return ("loading" if health == 503 else "down"), "no systemd here; judged by /health only"
    if active == "activating":
        if sub == "auto-restart":
            return "restarting", f"crashed ({props.get('Result', '')}); restart {props.get('NRestarts', '?')}"
        return "loading", f"starting since {_since(props) or 'just now'}"
    if active == "active":
        return "loading", f"unit active but /health answers {health or 'nothing'}"
    if active == "failed":
        why = props.get("Result", "failed")
        if why == "exit-code":
            why = f"exited with status {props.get('ExecMainStatus', '?')}"
        elif why == "start-limit-hit":
            why = "crashed too often (start limit hit)"
        elif why == "timeout":
            why = "did not become ready within TimeoutStartSec"
        line = _last_error_line(unit)
        return "failed", f"{why}: {line}" if line else why
    if active in ("inactive", "deactivating"):
        if on_demand:
            return "stopped", "load: on_demand: the gateway starts it when a request asks for it"
        return "stopped", ("not enabled" if props.get("UnitFileState") not in ("enabled", "static") else "")
    return active or "unknown", ""


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


# --- status ---------------------------------------------------------------

def _replica_status(placement, props: dict, elsewhere: bool, on_demand: bool) -> dict:
    """One server of a managed model: its unit's state where it runs here, its /health from anywhere."""
    unit = MODEL_UNIT.format(placement.unit)
    status, _ = _http_status(placement.url + "/health")
    readiness, why = model_readiness(props, status, unit, on_demand)
    if elsewhere and why:
        why = f"on host {placement.host}: judged by /health only" + (f" ({why})" if readiness == "down" else "")
    return {"host": placement.host, "unit": unit, "url": placement.url, "port": placement.port,
            "readiness": readiness, "why": why}


def _model_readiness(replicas: list[dict]) -> tuple[str, str]:
    """A model with replicas is ready when all are, degraded while some are."""
    if len(replicas) == 1:
        return replicas[0]["readiness"], replicas[0]["why"]
    down = [r for r in replicas if r["readiness"] != "ready"]
    if not down:
        return "ready", ""
    why = "; ".join(f"{r['host']}:{r['port']} {r['readiness']}" for r in down)
    return ("degraded" if len(down) < len(replicas) else down[0]["readiness"]), why


def _draining(gateway_url: str, cfg) -> set[tuple[str, str]]:
    """(model, host:port) of the replicas the running gateway drains (`localai drain`), from its
    GET /v1/models with the config's key; none when it does not answer or the key is unreadable."""
    from gateway.cli.ollama_verbs import read_config_key
    from gateway.config.schema import ConfigError

    try:
        key = read_config_key(cfg)
    except (OSError, ConfigError):  # not the gateway's user, nor root: the status shows without it
        return set()
    request = urllib.request.Request(gateway_url + "/v1/models",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=2.0) as resp:  # noqa: S310 - the config's own gateway
            models = json.load(resp)["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return set()
    return {(m["id"], r["address"]) for m in models if isinstance(m, dict) and "preset_of" not in m
            for r in m.get("replicas") or [] if r.get("draining")}


def collect_status(config: Path) -> dict:
    from gateway.plan.placement import backend_url, endpoints, placement, placements

    cfg = _load(config)
    systemd = _systemd_running()
    # With hosts:, each host runs its own model units: the ones not installed here run elsewhere.
    props = {p.unit: unit_state(MODEL_UNIT.format(p.unit)) for p in placements(cfg) if p.role != "worker"}
    elsewhere = {unit for unit, pr in props.items() if cfg.hosts is not None and pr.get("LoadState") == "not-found"}
    units = []
    # load: on_demand models' units are started and stopped by the gateway: inactive is their rest.
    on_demand = {m.name for m in cfg.managed_models if m.load == "on_demand"}
    for unit, unit_props, rests in [(TARGET_UNIT, unit_state(TARGET_UNIT), False),
                                    (GATEWAY_UNIT, unit_state(GATEWAY_UNIT), False)] + \
            [(MODEL_UNIT.format(u), pr, placement(cfg, u).model in on_demand)
             for u, pr in props.items() if u not in elsewhere]:
        units.append({"unit": unit, "active": unit_props.get("ActiveState", "unknown" if not systemd else ""),
                      "sub": unit_props.get("SubState", ""), "restarts": unit_props.get("NRestarts", ""),
                      "since": _since(unit_props), "result": unit_props.get("Result", ""), "on_demand": rests})
    gw_url = client_url(cfg.gateway.host, cfg.gateway.port)
    draining = _draining(gw_url, cfg)
    models = []
    for m in cfg.models:
        url = backend_url(m, cfg.vllm)
        entry = {"name": m.name, "aliases": list(m.aliases), "default": m is cfg.default_model, "url": url}
        if m.managed:
            replicas = [_replica_status(p, {} if p.unit in elsewhere else props[p.unit], p.unit in elsewhere,
                                        m.name in on_demand)
                        for p in endpoints(cfg, m.name)]
            for r in replicas:
                r["draining"] = (m.name, urlsplit(r["url"]).netloc.rpartition("@")[2]) in draining
            readiness, why = _model_readiness(replicas)
            entry.update(kind="managed", unit=replicas[0]["unit"], url=replicas[0]["url"], port=replicas[0]["port"],
                         readiness=readiness, why=why, replicas=replicas, on_demand=m.name in on_demand)
        else:
            status, err = _http_status(url.rstrip("/") + "/v1/models")
            reach = status is not None and status < 500
            entry.update(kind="external", unit=None, port=None, readiness="reachable" if reach else "unreachable",
                         why="" if reach else (f"HTTP {status}" if status else err))
        models.append(entry)
    gw_status, gw_err = _http_status(gw_url + "/health")
    gpus = gpu_mod.read_gpus()
    return {
        "config": str(config),
        "systemd": systemd,
        "units": units,
        "models": models,
        "gateway": {"url": gw_url, "health": gw_status, "error": gw_err},
        "gpus": gpus,
        "gpu_note": None if gpus is not None else gpu_mod.nvml_unavailable_reason(),
        "driver": gpu_mod.driver_version() if gpus is not None else None,
    }


def render_status(st: dict) -> str:
    out = [f"localai status  (config {st['config']})", ""]
    if st["systemd"]:
        out.append(f"{'UNIT':34} {'STATE':22} {'RESTARTS':>8}  SINCE")
        for u in st["units"]:
            state = f"{u['active']} ({u['sub']})" if u["sub"] else u["active"]
            out.append(f"{u['unit']:34} {state:22} {u['restarts'] or '-':>8}  {u['since'] or '-'}")
    else:
        out.append("systemd is not running here: unit states unknown (readiness from /health only).")
    out.append("")
    out.append(f"{'MODEL':16} {'READINESS':12} {'PORT':>6}  DETAIL")
    for m in st["models"]:
        extra = []
        if m["default"]:
            extra.append("default")
        if m["aliases"]:
            extra.append("aliases " + ", ".join(m["aliases"]))
        detail = m["url"] + (f" ({'; '.join(extra)})" if extra else "")
        out.append(f"{m['name']:16} {m['readiness']:12} {m['port'] or '-':>6}  {detail}")
        if m["why"]:
            out.append(f"{'':16} {'':12} {'':>6}  why: {m['why']}")
        for i, r in enumerate(m.get("replicas", []) if len(m.get("replicas", [])) > 1 else []):
            drains = ", draining: no new request" if r.get("draining") else ""
            out.append(f"  #{i} {r['host']:11} {r['readiness']:12} {r['port']:>6}  {r['url']} ({r['unit']}{drains})")
            if r["why"]:
                out.append(f"{'':16} {'':12} {'':>6}  why: {r['why']}")
    gw = st["gateway"]
    ready = sum(1 for m in st["models"] if m["readiness"] in ("ready", "reachable"))
    gw_text = f"/health {gw['health']}" if gw["health"] else f"not answering ({gw['error']})"
    out += ["", f"GATEWAY  {gw['url']}  {gw_text}  ({ready}/{len(st['models'])} models ready)", ""]
    if st["gpus"] is None:
        out.append(f"GPU      none: {st['gpu_note']}")
    elif not st["gpus"]:
        out.append("GPU      the NVIDIA driver answers but lists no GPU")
    else:
        for g in st["gpus"]:
            used, total = g["memory_used_bytes"], g["memory_total_bytes"]
            util = "n/a" if g["utilization_ratio"] is None else f"{g['utilization_ratio'] * 100:.0f}%"
            pct = f"{used / total * 100:.0f}%" if total else "?"
            out.append(f"GPU {g['index']:<4} {g['name']}  memory {_fmt_bytes(used)} / {_fmt_bytes(total)} ({pct})"
                       f"  utilisation {util}" + (f"  {g['temperature_c']} C" if g["temperature_c"] else ""))
        if st.get("driver"):
            out.append(f"         driver {st['driver']}")
    return "\n".join(out)


def status_ok(st: dict) -> bool:
    units_ok = (not st["systemd"]) or all(u["active"] == "active" or (u["on_demand"] and u["active"] == "inactive")
                                          for u in st["units"])
    models_ok = all(m["readiness"] in ("ready", "reachable") or (m.get("on_demand") and m["readiness"] == "stopped")
                    for m in st["models"])
    return units_ok and models_ok and st["gateway"]["health"] == 200


def status_main(args) -> int:
    from gateway.config.schema import ConfigError

    config = args.config
    try:
        st = collect_status(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        print(render_status(st))
    return 0 if status_ok(st) else 1


# --- logs -----------------------------------------------------------------

def units_for(target: str | None, config: Path | None) -> list[str]:
    """The journalctl -u arguments for `localai logs [target]`."""
    if not target:
        return [UNIT_GLOB]
    if target in ("gateway", GATEWAY_UNIT, "localai-gateway"):
        return [GATEWAY_UNIT]
    if target.startswith("localai-model@"):
        return [target if target.endswith(".service") else target + ".service"]
    from gateway.config.schema import ConfigError

    try:
        cfg = _load(config) if config is not None and config.exists() else None
    except ConfigError:  # an unreadable config: take the name as given
        cfg = None
    if cfg is None:
        return [MODEL_UNIT.format(target)]
    name = next((m.name for m in cfg.models if target == m.name or target in m.aliases), None)
    if name is None:
        known = ", ".join(["gateway", *(m.name for m in cfg.managed_models)])
        raise SystemExit(f"localai logs: no model or alias '{target}' in {config} (try: {known})")
    return [MODEL_UNIT.format(name)]


def _message(entry: dict) -> str:
    msg = entry.get("MESSAGE", "")
    if isinstance(msg, list):  # journald sends non-UTF-8 messages as byte arrays
        msg = bytes(msg).decode("utf-8", "replace")
    return str(msg)


def _when(entry: dict) -> datetime:
    try:
        return datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6, tz=UTC).astimezone()
    except (KeyError, ValueError):
        return datetime.now().astimezone()


def record(entry: dict) -> dict:
    """One journal entry as a flat record: ts, unit, level, logger, msg and the JSON fields."""
    # systemd's own lines about a unit ("Started ...") carry UNIT=; the unit's output _SYSTEMD_UNIT=.
    unit = entry.get("UNIT") or entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER") or "?"
    text = _message(entry)
    rec = {"ts": _when(entry).isoformat(timespec="milliseconds"), "unit": unit,
           "level": _PRIORITY.get(str(entry.get("PRIORITY", "6")), "INFO"), "msg": text}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            data.pop("ts", None)
            rec["level"] = str(data.pop("level", rec["level"])).upper()
            rec["msg"] = str(data.pop("msg", data.pop("message", "")))
            rec.update({k: v for k, v in data.items() if k not in rec})
    return rec


def format_record(rec: dict) -> str:
    short_unit = rec["unit"].removesuffix(".service").removeprefix("localai-").replace("model@", "")
    head = f"{rec['ts'][:23].replace('T', ' ')} {short_unit:<10} {rec['level']:<7}"
    logger = rec.get("logger")
    # One record, one line (a config error names its problems on lines of their own).
    msg = rec["msg"].replace("\n", " ⏎ ")
    text = f"{logger}: {msg}" if logger else msg
    fields = [f"{k}={json.dumps(v) if not isinstance(v, str) or ' ' in v else v}"
              for k, v in rec.items() if k not in ("ts", "unit", "level", "msg", "logger") and v is not None]
    return f"{head} {text}" + (f"  [{' '.join(fields)}]" if fields else "")


def logs_main(args) -> int:
    if shutil.which("journalctl") is None:
        print("localai logs: journalctl is not installed (logs go to the journal of a systemd host)",
              file=sys.stderr)
        return 1
    argv = ["journalctl", JOURNAL, "-o", "json", "--no-pager", "-n", str(args.lines)]
    if args.follow:
        argv.append("-f")
    if args.since:
        argv += ["--since", args.since]
    for unit in units_for(args.target, args.config):
        argv += ["-u", unit]
    as_json = args.json
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            rec = record(entry)
            print(json.dumps(rec, default=str) if as_json else format_record(rec), flush=True)
    except KeyboardInterrupt:
        proc.terminate()
    except BrokenPipeError:  # `localai logs | head`: main() ends the command quietly
        proc.terminate()
        raise
    return proc.wait()


def add_status_arguments(p) -> None:
    """The arguments status_main reads; --config comes from cli.py."""
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_logs_arguments(p) -> None:
    """The arguments logs_main reads; --config comes from cli.py."""
    p.add_argument("target", nargs="?", default=None,
                   help="'gateway', a model name or alias; default: every localai unit")
    p.add_argument("-n", "--lines", type=int, default=100, help="how many past records (default 100)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("--since", help='e.g. "1 hour ago" or "2026-01-01 10:00"')
    p.add_argument("--json", action="store_true", help="print the records as JSON lines")

