"""Where a running gateway can be found: a small record the `localai` command reads.

`localai gateway` and `localai up` write, while they serve, a JSON record of the URL they
listen on and the config they were started with (no key, nothing secret: mode 0644), and
remove it as they exit, so that `localai ps`, `status`, `load` and `unload` find the
service without --config, as `ollama ps` does. It lives in

- $RUNTIME_DIRECTORY: systemd's RuntimeDirectory= of the unit (/run/localai-gateway);
- else $XDG_RUNTIME_DIR/localai: a user's `localai up`;
- else /run/localai-gateway for root (a container, a host without a login session);

and is read from $XDG_RUNTIME_DIR/localai first (a user's own gateway), then /run/localai-gateway.
A record whose process is gone (killed with SIGKILL) is ignored.

Only the standard library: the CLI reads it on a host where the gateway is not running.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

RECORD_NAME = "gateway.json"
# The gateway unit's RuntimeDirectory= (units/localai-gateway.service.j2).
SYSTEM_DIR = Path("/run/localai-gateway")


def _user_dir() -> Path | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "localai" if xdg else None


def record_dirs() -> list[Path]:
    """Where the CLI looks for a record, first found wins."""
    return [d for d in (_user_dir(), SYSTEM_DIR) if d is not None]


def _own_dir() -> Path | None:
    """Where this process writes its record; None where it has nowhere to (a user without a session)."""
    systemd = os.environ.get("RUNTIME_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    return _user_dir() or (SYSTEM_DIR if os.geteuid() == 0 else None)


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a server listening on host:port at."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def announced(address: tuple, config: Path, command: str) -> Iterator[Path | None]:
    """The record of this gateway, listening on `address` (a socket's name), while the block
    runs; yields its path (None: not written)."""
    where = _own_dir()
    path = None
    if where is not None:
        record = {"url": client_url(*address[:2]), "config": str(config.resolve()), "pid": os.getpid(),
                  "command": command}
        try:
            where.mkdir(mode=0o711, parents=True, exist_ok=True)
            path = where / RECORD_NAME
            scratch = where / f".{RECORD_NAME}.{os.getpid()}"
            scratch.write_text(json.dumps(record) + "\n")
            scratch.chmod(0o644)
            scratch.replace(path)
        except OSError:  # a read-only /run: the CLI then needs --config, as before
            path = None
    try:
        yield path
    finally:
        # Another gateway's record (started since, on another port) is left to it.
        if path is not None and (read_record(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not {"url", "config", "pid"} <= record.keys():
        return None
    return record


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the systemd unit's): it runs
        return True
    return True


def find_running() -> dict | None:
    """The record of a gateway running on this machine, or None."""
    for where in record_dirs():
        record = read_record(where / RECORD_NAME)
        if record is not None and _alive(record["pid"]):
            return record
    return None
