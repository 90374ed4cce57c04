"""The batch store: the Files API's files and the Batch API's jobs, with every line's progress,
in one SQLite database beside the files themselves (gateway.batch_dir; docs/batch.md).

Durable by construction: a line's answer is written in the same transaction that marks it done
and counts it, so after a restart (or a crash) a line is either done with its answer kept, or
not done and sent again; the output file is written from the database when the batch finalizes,
so no custom_id is answered twice into it and none is lost.

The stdlib's sqlite3 on one connection behind a lock; callers on the event loop go through
asyncio.to_thread (every call is short: one row, or one batch's lines at finalize). The CLI reads
the same file (`localai batch`).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from gateway.keys.usage import connect

DB_NAME = "batch.db"

# A batch's states (OpenAI's): the runner moves it along; terminal ones never change again.
VALIDATING, IN_PROGRESS, FINALIZING = "validating", "in_progress", "finalizing"
COMPLETED, FAILED, CANCELLING, CANCELLED, EXPIRED = "completed", "failed", "cancelling", "cancelled", "expired"
TERMINAL = (COMPLETED, FAILED, CANCELLED, EXPIRED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, key TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_key ON files (key);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batches_key ON batches (key, seq);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, ok INTEGER, result TEXT, PRIMARY KEY (batch_id, line));
"""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def batch_list(conn: sqlite3.Connection, key: str | None, after: str | None, limit: int) -> list[dict]:
    """A key's batches (every key's with None), newest first, those older than `after` only."""
    where, args = [], []
    if key is not None:
        where.append("key = ?")
        args.append(key)
    if after:
        where.append("seq < (SELECT seq FROM batches WHERE id = ?)")
        args.append(after)
    sql = ("SELECT data FROM batches" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY seq DESC LIMIT ?")
    return [orjson.loads(r[0]) for r in conn.execute(sql, (*args, limit))]


def batch_get(conn: sqlite3.Connection, batch_id: str) -> tuple[str, dict] | None:
    """(its key, the batch object) or None."""
    row = conn.execute("SELECT key, data FROM batches WHERE id = ?", (batch_id,)).fetchone()
    return None if row is None else (row[0], orjson.loads(row[1]))


class BatchStore:
    """Files on disk under `root`/files, everything else in `root`/batch.db."""

    def __init__(self, root: Path):
        self.root = root
        self.files_dir = root / "files"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files_dir.mkdir(mode=0o700, exist_ok=True)
        self.path = root / DB_NAME
        self._lock = threading.Lock()
        self._conn = connect(self.path)
        # WAL: the CLI reads beside the gateway; FULL: a line marked done survives a power cut.
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- files -------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def key_bytes(self, key: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE key = ?",
                                      (key,)).fetchone()[0]

    def add_file(self, file_id: str, key: str, filename: str, purpose: str, size: int) -> dict:
        created = int(time.time())
        with self._lock, self._conn:
            # OR REPLACE: a batch finalized again after a crash writes its output file again, same id.
            self._conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                               (file_id, key, filename, purpose, size, created))
        return _file_object(file_id, filename, purpose, size, created)

    def get_file(self, file_id: str, key: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT id, filename, purpose, bytes, created_at FROM files "
                                     "WHERE id = ? AND key = ?", (file_id, key)).fetchone()
        return None if row is None else _file_object(*row)

    def list_files(self, key: str, purpose: str | None, after: str | None, limit: int) -> list[dict]:
        sql = "SELECT id, filename, purpose, bytes, created_at FROM files WHERE key = ?"
        args: list[object] = [key]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        if after:
            sql += " AND rowid < (SELECT rowid FROM files WHERE id = ?)"
            args.append(after)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY rowid DESC LIMIT ?", (*args, limit)).fetchall()
        return [_file_object(*r) for r in rows]

    def delete_file(self, file_id: str, key: str) -> bool:
        with self._lock, self._conn:
            gone = self._conn.execute("DELETE FROM files WHERE id = ? AND key = ?", (file_id, key)).rowcount
        if gone:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(gone)

    # --- batches -----------------------------------------------------------------------

    def add_batch(self, key: str, batch: dict) -> None:
        with self._lock, self._conn:
            seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()[0]
            self._conn.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
                               (batch["id"], seq, key, orjson.dumps(batch).decode()))

    def get_batch(self, batch_id: str) -> tuple[str, dict] | None:
        with self._lock:
            return batch_get(self._conn, batch_id)

    def list_batches(self, key: str | None, after: str | None, limit: int) -> list[dict]:
        with self._lock:
            return batch_list(self._conn, key, after, limit)

    def unfinished(self) -> list[str]:
        """The batches a restart must carry on with, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT id, data FROM batches ORDER BY seq").fetchall()
        return [r[0] for r in rows if orjson.loads(r[1])["status"] not in TERMINAL]

    def update(self, batch_id: str, only_if: str | None = None, **fields: object) -> dict:
        """The batch with `fields` set (only while its status is `only_if`, when given), as it now is."""
        with self._lock, self._conn:
            return self._update(batch_id, only_if, fields)

    def _update(self, batch_id: str, only_if: str | None, fields: dict) -> dict:
        batch = orjson.loads(self._conn.execute("SELECT data FROM batches WHERE id = ?", (batch_id,)).fetchone()[0])
        if fields and (only_if is None or batch["status"] == only_if):
            batch.update(fields)
            self._conn.execute("UPDATE batches SET data = ? WHERE id = ?", (orjson.dumps(batch).decode(), batch_id))
        return batch

    def start_lines(self, batch_id: str, lines: list[tuple[int, str, bytes]], **fields: object) -> dict:
        """The validated input's lines (line number, custom_id, request body) and the batch's new
        fields, in one transaction (a restart finds both or neither), unless it was cancelled meanwhile."""
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR IGNORE INTO lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                                   [(batch_id, n, cid, body.decode()) for n, cid, body in lines])
            return self._update(batch_id, VALIDATING, fields)

    def pending(self, batch_id: str) -> list[tuple[int, str, str]]:
        """(line, custom_id, body) of every line not done yet, in input order."""
        with self._lock:
            return self._conn.execute("SELECT line, custom_id, body FROM lines WHERE batch_id = ? AND done = 0 "
                                      "ORDER BY line", (batch_id,)).fetchall()

    def finish_line(self, batch_id: str, line: int, ok: bool, result: bytes) -> dict | None:
        """The line's answer kept and it marked done, the batch's counts moved on, in one
        transaction; the batch as it now is (None: the line was done already)."""
        with self._lock, self._conn:
            done = self._conn.execute("UPDATE lines SET done = 1, ok = ?, result = ? WHERE batch_id = ? "
                                      "AND line = ? AND done = 0", (ok, result.decode(), batch_id, line)).rowcount
            if not done:
                return None
            batch = self._update(batch_id, None, {})
            counts = batch["request_counts"]
            counts["completed" if ok else "failed"] += 1
            return self._update(batch_id, None, {"request_counts": counts})

    def results(self, batch_id: str, ok: bool) -> Iterator[str]:
        """The done lines' answers of one kind (ok: the output file; else the error file), in input order."""
        with self._lock:
            rows = self._conn.execute("SELECT result FROM lines WHERE batch_id = ? AND done = 1 AND ok = ? "
                                      "ORDER BY line", (batch_id, ok)).fetchall()
        for (result,) in rows:
            yield result

    def drop_lines(self, batch_id: str) -> None:
        """A finished batch's lines: its output and error files hold them now."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM lines WHERE batch_id = ?", (batch_id,))

    def write_file(self, file_id: str, key: str, filename: str, purpose: str, lines: Iterator[str]) -> dict | None:
        """A file made of `lines` (None when there are none), registered as the key's; written to a
        temporary name first, so a crash mid-way leaves no half file under the id."""
        path = self.file_path(file_id)
        tmp = path.with_suffix(".part")
        size = 0
        with tmp.open("wb") as out:
            for line in lines:
                data = line.encode() + b"\n"
                out.write(data)
                size += len(data)
            out.flush()
            os.fsync(out.fileno())
        if not size:
            tmp.unlink()
            return None
        tmp.replace(path)
        return self.add_file(file_id, key, filename, purpose, size)


def _file_object(file_id: str, filename: str, purpose: str, size: int, created: int) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": created, "filename": filename,
            "purpose": purpose, "status": "processed", "status_details": None}
