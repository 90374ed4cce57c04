"""`localai ps`, `localai load NAME`, `localai unload NAME`: Ollama's habits, against the running gateway.

They speak Ollama's own API to the gateway main.py found (--config, $LOCALAI_URL, or the record
of the gateway running here): /api/ps lists what is resident, /api/generate with no prompt loads
a model (keep_alive sets when it unloads), and with keep_alive 0 unloads it. The key comes from
$LOCALAI_API_KEY or the config's key file.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config.schema import Config, ConfigError
from gateway.keys.keyring import KEY_ENV, parse_key_file

# A load can mean a cold start of vLLM: minutes on a CPU host.
LOAD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Gateway:
    """The running gateway a command talks to."""

    url: str  # http://HOST:PORT, no trailing slash
    key: str | None


def env_key() -> str | None:
    return os.environ.get(KEY_ENV, "").strip() or None


def config_key(cfg: Config, admin: bool = False) -> str | None:
    """The first key of the config's key file (None: the gateway takes none); `admin`: the first
    one named in gateway.admin_keys, if any is (for the operators' verbs: `localai drain`)."""
    path = cfg.gateway.api_key_file
    try:
        return read_config_key(cfg, admin)
    except OSError as exc:
        raise SystemExit(f"localai: cannot read the API key file {path} ({exc.strerror}); set {KEY_ENV}") from None
    except ConfigError as exc:
        raise SystemExit(f"localai: {exc}") from None


def read_config_key(cfg: Config, admin: bool = False) -> str | None:
    """config_key's answer; raises OSError (an unreadable key file) and ConfigError (a bad one)."""
    path = cfg.gateway.api_key_file
    if path is None:
        return None
    pairs = parse_key_file(path.read_text(), path)
    if admin:
        pairs = [p for p in pairs if p[0] in cfg.gateway.admin_keys] or pairs
    return pairs[0][1] if pairs else None


def _call(gateway: Gateway, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    url = gateway.url + path
    headers = {"Content-Type": "application/json"}
    if gateway.key:
        headers["Authorization"] = f"Bearer {gateway.key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310 - the config's own gateway
            return json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        if isinstance(message, dict):  # the OpenAI shape (the /v1 routes'); Ollama's is a string
            message = message.get("message", exc.reason)
        raise SystemExit(f"localai: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(f"localai: the gateway at {url} does not answer ({reason}); is it running?") from None


def _ago(iso: str | None, now: datetime) -> str:
    if not iso:
        return "-"
    seconds = (datetime.fromisoformat(iso.replace("Z", "+00:00")) - now).total_seconds()
    span = abs(seconds)
    text = f"{span:.0f} s" if span < 120 else f"{span / 60:.0f} min" if span < 7200 else f"{span / 3600:.0f} h"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def render_ps(models: list[dict], now: datetime) -> str:
    rows = [("NAME", "STATE", "SINCE", "UNTIL", "VRAM")]
    for m in models:
        until = "forever" if m["expires_at"].startswith("9999") else _ago(m["expires_at"], now)
        share = m.get("vram_share")
        rows.append((m["name"], m.get("state", "ready"), _ago(m.get("resident_since"), now), until,
                     f"{share:.0%} of its card" if share else "always loaded"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def ps_main(gateway: Gateway, as_json: bool) -> int:
    models = _call(gateway, "GET", "/api/ps")["models"]
    print(json.dumps(models, indent=2) if as_json else render_ps(models, datetime.now(UTC)))
    return 0


def load_main(gateway: Gateway, name: str, keep_alive: str | None) -> int:
    body: dict = {"model": name}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    started = time.monotonic()
    print(f"loading {name}…", file=sys.stderr, flush=True)
    _call(gateway, "POST", "/api/generate", body, timeout=LOAD_TIMEOUT_S)
    print(f"{name} is loaded ({time.monotonic() - started:.1f} s)")
    return 0


def unload_main(gateway: Gateway, name: str) -> int:
    if _call(gateway, "GET", f"/v1/models/{name}").get("load") != "on_demand":
        raise SystemExit(f"localai: {name} is not load: on_demand; it stays loaded")
    _call(gateway, "POST", "/api/generate", {"model": name, "keep_alive": 0}, timeout=LOAD_TIMEOUT_S)
    resident = any(m["name"] == name for m in _call(gateway, "GET", "/api/ps")["models"])
    print(f"{name} unloads once its requests are answered and it has been loaded gateway.min_residency "
          "(`localai ps` says when)" if resident else f"{name} is unloaded")
    return 0
