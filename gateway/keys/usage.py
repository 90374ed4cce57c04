"""The usage store: every finished request's key, model, tokens and slot time, in SQLite.

Written off the request path: `UsageStore.record` puts a row on a bounded in-memory queue (a
full queue drops the row, counts it and logs an ERROR: a request never waits for the disk), and
one thread writes what is queued in batches, one transaction each: the raw row, and the hourly
sum per (hour, key, model) that every reader and the token budgets use. A database that cannot
be opened or written (corrupt, locked, disk full) leaves the gateway serving: the failure is
logged as an ERROR and counted (localai_usage_db_up, localai_usage_write_errors_total), the rows
of the failed batch are kept (bounded) and tried again with the next one, and budgets are held
from the counters in memory (`Spending`).

The stdlib's sqlite3: one file, no server, nothing to install, and the CLI reads the same file
with the gateway stopped (`localai usage`, `read_summary`). WAL lets those readers run beside
the writer.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gateway.base.observability import Metrics

log = logging.getLogger("localai.usage")

# Rows waiting for the writer; past it new rows are dropped (and counted), never waited for.
QUEUE_ROWS = 20_000
# How long the writer gathers rows before a transaction: ~4 commits a second at any load.
FLUSH_INTERVAL = 0.25
# Rows a failed batch keeps for the next try, at most (the rest are dropped and counted).
MAX_PENDING = 100_000
# Seconds between two ERROR lines about the same ongoing write failure.
ERROR_EVERY = 60.0
BUSY_TIMEOUT_MS = 2000
PRUNE_EVERY = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ts REAL NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL, family TEXT NOT NULL, endpoint TEXT NOT NULL,
    status INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, latency REAL NOT NULL, ttft REAL, slot_seconds REAL NOT NULL);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS hourly (
    hour REAL NOT NULL, day TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, gpu_seconds REAL NOT NULL,
    max_tokens INTEGER NOT NULL, PRIMARY KEY (hour, key, model));
CREATE INDEX IF NOT EXISTS hourly_day ON hourly (day);
"""

_INSERT = "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT = """INSERT INTO hourly VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, key, model) DO UPDATE SET requests = requests + excluded.requests,
    errors = errors + excluded.errors, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens, gpu_seconds = gpu_seconds + excluded.gpu_seconds,
    max_tokens = MAX(max_tokens, excluded.max_tokens)"""


class Row(NamedTuple):
    """One finished request, as stored."""

    ts: float  # time.time() when it finished
    key: str
    model: str
    family: str
    endpoint: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency: float
    ttft: float | None
    slot_seconds: float


def local_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _hour(ts: float) -> float:
    return math.floor(ts / 3600) * 3600


def _hourly(rows: Iterable[Row]) -> list[tuple]:
    """The batch's sums per (hour, key, model)."""
    sums: dict[tuple[float, str, str], list] = {}
    for r in rows:
        hour = _hour(r.ts)
        s = sums.get((hour, r.key, r.model))
        if s is None:
            s = sums[(hour, r.key, r.model)] = [local_day(hour), 0, 0, 0, 0, 0, 0.0, 0]
        tokens = r.prompt_tokens + r.completion_tokens
        s[1] += 1
        s[2] += r.status >= 400
        s[3] += r.prompt_tokens
        s[4] += r.completion_tokens
        s[5] += r.cached_tokens
        s[6] += r.slot_seconds
        s[7] = max(s[7], tokens)
    return [(hour, s[0], key, model, *s[1:]) for (hour, key, model), s in sums.items()]


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to one of the gateway's SQLite files (usage, batches); a reader never creates the file."""
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        # Opened where the store starts, then used by its writer thread alone.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _open_for_writing(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conn = connect(path)
    try:
        # WAL: `localai usage` and /v1/usage read beside the writer; NORMAL: a commit waits for no fsync
        # (a power cut may lose the last batch, never the file).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


@dataclass
class Spent:
    """A key's tokens this local day and month, and the most one request of it took."""

    day: str = ""
    day_tokens: int = 0
    month_tokens: int = 0
    largest: int | None = None

    @property
    def month(self) -> str:
        return self.day[:7]


class Spending:
    """Tokens per key this day and month, in memory: what the budgets are checked against.
    Seeded from the database at start, added to as each request finishes (a database that fails
    leaves these counting)."""

    def __init__(self) -> None:
        self._spent: dict[str, Spent] = {}
        self._today = ""
        self._until = 0.0  # when _today ends

    def today(self) -> str:
        now = time.time()
        if now >= self._until:
            self._today = local_day(now)
            self._until = next_midnight(now)
        return self._today

    def of(self, key: str) -> Spent:
        """The key's spending, rolled over to today."""
        today = self.today()
        spent = self._spent.get(key)
        if spent is None:
            spent = self._spent[key] = Spent(today)
        elif spent.day != today:
            if spent.month != today[:7]:
                spent.month_tokens = 0
            spent.day, spent.day_tokens = today, 0
        return spent

    def add(self, key: str, tokens: int) -> None:
        spent = self.of(key)
        spent.day_tokens += tokens
        spent.month_tokens += tokens
        spent.largest = tokens if spent.largest is None else max(spent.largest, tokens)

    def seed(self, rows: Iterable[tuple[str, int, int, int]]) -> None:
        """(key, tokens today, tokens this month, most tokens of one request) from the database."""
        for key, day_tokens, month_tokens, largest in rows:
            spent = self.of(key)
            spent.day_tokens += day_tokens
            spent.month_tokens += month_tokens
            spent.largest = largest if spent.largest is None else max(spent.largest, largest)


def next_midnight(now: float) -> float:
    """The next local midnight after `now` (the host's time zone, its DST included)."""
    day = datetime.datetime.fromtimestamp(now).date() + datetime.timedelta(days=1)
    return time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))


def next_month(now: float) -> float:
    d = datetime.datetime.fromtimestamp(now).date()
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return time.mktime((year, month, 1, 0, 0, 0, 0, 0, -1))


class UsageStore:
    """The database file, and the thread that writes it. `start()` opens it (a failure is logged,
    counted and retried with each batch), `record()` queues a row, `close()` writes what is queued."""

    def __init__(self, path: Path, keep_days: int, keep_hourly_days: int, metrics: Metrics):
        self.path = path
        self.keep_days, self.keep_hourly_days = keep_days, keep_hourly_days
        self._queue: queue.Queue[Row] = queue.Queue(QUEUE_ROWS)
        self._pending: list[Row] = []
        self._conn: sqlite3.Connection | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localai-usage", daemon=True)
        self._metrics = metrics
        self._up = metrics.usage_db_up
        self._dropped = metrics.usage_dropped
        self._errors = metrics.usage_write_errors
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self._pruned_at = 0.0

    def start(self) -> list[tuple[str, int, int, int]]:
        """Open the database and start the writer; returns each key's spending for `Spending.seed`
        (none where the database can't be read: the ERROR says so)."""
        spent: list[tuple[str, int, int, int]] = []
        try:
            self._conn = _open_for_writing(self.path)
            spent = _spent_rows(self._conn, time.time())
            self._up.set(1)
        except (sqlite3.Error, OSError) as exc:
            self._failed("cannot open", exc, 0)
        self._thread.start()
        return spent

    def record(self, row: Row) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._dropped.inc()
            self._log_error(f"the usage queue is full ({QUEUE_ROWS} rows): a request's usage was dropped; "
                            f"the database {self.path} is not keeping up")

    def close(self) -> None:
        """Write what is queued and stop the writer (bounded: a stuck disk holds the stop up to 10 s)."""
        self._stopping.set()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.error("the usage writer did not finish within 10 s; %d rows not written to %s",
                      self._queue.qsize() + len(self._pending), self.path)
        elif self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._pending:
                    self._write([])
                continue
            self._stopping.wait(FLUSH_INTERVAL)  # gather a batch; at once when stopping
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < QUEUE_ROWS:
                    batch.append(self._queue.get_nowait())
            self._write(batch)
        if self._pending:  # the rows of a failed batch: one last try before the gateway stops
            self._write([])
        if self._pending:
            self._dropped.inc(len(self._pending))
            log.error("usage database %s: %d rows could not be written before the gateway stopped",
                      self.path, len(self._pending))

    def _write(self, batch: list[Row]) -> None:
        rows = self._pending + batch
        self._pending = []
        try:
            if self._conn is None:
                self._conn = _open_for_writing(self.path)
            with self._conn:  # one transaction: the rows and their hourly sums, or neither
                self._conn.executemany(_INSERT, rows)
                self._conn.executemany(_UPSERT, _hourly(rows))
            self._prune()
        except (sqlite3.Error, OSError) as exc:
            self._pending = rows[-MAX_PENDING:]
            self._failed("cannot write", exc, len(rows) - len(self._pending))
            return
        if self._failing_since is not None:
            log.warning("usage database %s writes again (after %.0f s)", self.path,
                        time.monotonic() - self._failing_since)
            self._failing_since = None
        self._up.set(1)

    def _prune(self) -> None:
        assert self._conn is not None
        now = time.time()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        with self._conn:
            self._conn.execute("DELETE FROM requests WHERE ts < ?", (now - self.keep_days * 86400,))
            self._conn.execute("DELETE FROM hourly WHERE hour < ?", (now - self.keep_hourly_days * 86400,))

    def _failed(self, what: str, exc: BaseException, dropped: int) -> None:
        self._up.set(0)
        self._errors.inc()
        if dropped:
            self._dropped.inc(dropped)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._last_error_log = 0.0
        if self._conn is not None and isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            self._conn.close()
            self._conn = None
        self._log_error(f"usage database {self.path}: {what}: {exc}; the gateway serves on and holds the "
                        f"token budgets in memory; {len(self._pending)} rows wait for the next try"
                        + (f", {dropped} dropped" if dropped else ""))

    def _log_error(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_EVERY or not self._last_error_log:
            self._last_error_log = now
            log.error("%s", message)


def _spent_rows(conn: sqlite3.Connection, now: float) -> list[tuple[str, int, int, int]]:
    today = local_day(now)
    return conn.execute(
        "SELECT key, SUM(CASE WHEN day = ? THEN prompt_tokens + completion_tokens ELSE 0 END), "
        "SUM(prompt_tokens + completion_tokens), MAX(max_tokens) FROM hourly WHERE day >= ? GROUP BY key",
        (today, today[:8] + "01")).fetchall()


# --- reading -------------------------------------------------------------------------------

_SUMS = ("COUNT(*) AS n, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens), "
         "SUM(cached_tokens), SUM(gpu_seconds)")
FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "gpu_seconds")


def _sums(values: tuple) -> dict:
    out: dict[str, int | float] = {f: (v or 0) for f, v in zip(FIELDS, values, strict=True)}
    out["gpu_seconds"] = round(float(out["gpu_seconds"]), 6)
    return out


def _grouped(conn: sqlite3.Connection, by: str, since: float, key: str | None) -> list[tuple[str, dict]]:
    where = "hour >= ?"
    args: list[object] = [_hour(since)]
    if key is not None:
        where += " AND key = ?"
        args.append(key)
    sql = f"SELECT {by}, {_SUMS[len('COUNT(*) AS n, '):]} FROM hourly WHERE {where} GROUP BY {by} ORDER BY {by}"
    return [(row[0], _sums(row[1:])) for row in conn.execute(sql, args)]


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0


def summary(conn: sqlite3.Connection, since: float, key: str | None = None) -> dict:
    """Sums since `since` (from the hourly table, so whole hours): totals, by_model, by_day and,
    for everyone (key None), by_key. gpu_share: of a model's busy slot-seconds (by_model; 1.0 for
    everyone), of all slot-seconds (by_key)."""
    model_busy = dict((m, s["gpu_seconds"]) for m, s in _grouped(conn, "model", since, None))
    by_model = [{"model": m, **s, "gpu_share": _share(float(s["gpu_seconds"]), model_busy.get(m, 0.0))}
                for m, s in _grouped(conn, "model", since, key)]
    by_day = [{"day": d, **s} for d, s in _grouped(conn, "day", since, key)]
    totals = {f: sum(d[f] for d in by_day) for f in FIELDS}
    totals["gpu_seconds"] = round(float(totals["gpu_seconds"]), 6)
    out: dict = {"totals": totals, "by_model": by_model, "by_day": by_day}
    if key is None:
        all_busy = float(totals["gpu_seconds"])
        out["by_key"] = [{"key": k, **s, "gpu_share": _share(float(s["gpu_seconds"]), all_busy)}
                         for k, s in _grouped(conn, "key", since, None)]
    return out


def spent_now(conn: sqlite3.Connection, now: float) -> dict[str, tuple[int, int]]:
    """Each key's tokens today and this month, from the database (the CLI's quota column)."""
    return {key: (day, month) for key, day, month, _ in _spent_rows(conn, now)}


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection; raises sqlite3.Error (corrupt, locked) or FileNotFoundError."""
    if not path.exists():
        raise FileNotFoundError(f"no usage database at {path}")
    conn = connect(path, read_only=True)
    try:
        yield conn
    finally:
        conn.close()


def read_summary(path: Path, since: float, key: str | None = None) -> dict:
    with reading(path) as conn:
        return summary(conn, since, key)
