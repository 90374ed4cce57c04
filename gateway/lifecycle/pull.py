"""Downloading a hub model's weights into the cache vLLM reads (`localai pull`, Ollama's /api/pull).

A small client of the hub's HTTP API over aiohttp (already the gateway's), not huggingface_hub: the
gateway's venv stays light, one coroutine serves the CLI's progress bar and the API's NDJSON
stream alike, and the few things it must do are in view: list a revision's files, fetch each with
a Range request that resumes a partial file, check its size and the LFS sha256, and write the
cache layout huggingface_hub (hence vLLM) reads:

  $HF_HUB_CACHE/models--ORG--NAME/blobs/<oid>                   the file's bytes
  $HF_HUB_CACHE/models--ORG--NAME/snapshots/<commit>/<path>  -> ../../blobs/<oid>
  $HF_HUB_CACHE/models--ORG--NAME/refs/<revision>               the commit

A file being fetched is blobs/<oid>.incomplete, as huggingface_hub names it: either client
resumes the other's partial file. The snapshot gets the marker the playbook's prefetch writes once
complete. HF_ENDPOINT, HF_TOKEN (or HF_TOKEN_PATH, or $HF_HOME/token) are honoured as the hub's
own clients do; the token goes only to the endpoint (aiohttp drops it on a redirect to another
host, such as the hub's CDN) and is never printed.
"""

from __future__ import annotations

import asyncio
import fcntl
import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote

import aiohttp
import orjson

DEFAULT_ENDPOINT = "https://huggingface.co"
# What the playbook's prefetch fetches (localai_models_prefetch_patterns): what vLLM loads, no
# duplicate .bin/.pth copies of the weights.
PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")
MARKER = ".localai-complete"
# Bounds on what the hub may answer: the file listing, the files of one repository.
LISTING_LIMIT = 16 * 1024 * 1024
MAX_FILES = 4096
CHUNK = 1024 * 1024
# A transfer that stalls this long fails (and resumes on the next try); connecting has its own bound.
READ_TIMEOUT = 60.0
CONNECT_TIMEOUT = 30.0
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
# A revision names refs/<revision> in the cache: a plain name, never a path.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_OID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class PullError(Exception):
    """A pull that cannot go on; the message is for the user (no token in it)."""


@dataclass
class Progress:
    """One step: the file (its path and blob oid), its size and the bytes of it on disk."""

    status: str
    path: str = ""
    oid: str = ""
    total: int = 0
    completed: int = 0
    sha256: bool = False  # the oid is the file's sha256 (an LFS file), which Ollama calls its digest


@dataclass
class HubFile:
    path: str
    size: int
    oid: str
    sha256: str | None


def is_repo_id(name: str) -> bool:
    return bool(_REPO.match(name)) and ".." not in name


def hub_cache(env: Mapping[str, str]) -> Path:
    """The cache vLLM reads hub models from, for a server started with this environment."""
    cache = env.get("HF_HUB_CACHE")
    if cache:
        return Path(cache)
    home = env.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    return Path(home) / "hub"


def hub_token(env: Mapping[str, str]) -> str | None:
    """HF_TOKEN, else the file HF_TOKEN_PATH names, else $HF_HOME/token: where the hub's clients look."""
    token = env.get("HF_TOKEN", "").strip()
    if token:
        return token
    home = env.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    path = env.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(4096).strip() or None
    except OSError:
        return None


def repo_folder(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def _safe_path(name: object) -> str | None:
    """A repository file's path, if it stays inside the snapshot folder (the listing is not trusted)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        return None
    return name


def _files(listing: object, patterns: tuple[str, ...]) -> tuple[str, list[HubFile]]:
    if not isinstance(listing, dict) or not isinstance(listing.get("sha"), str) or not _OID.match(listing["sha"]):
        raise PullError("the hub's answer names no commit")
    siblings = listing.get("siblings")
    if not isinstance(siblings, list) or len(siblings) > MAX_FILES:
        raise PullError(f"the hub's file list is missing or longer than {MAX_FILES}")
    files = []
    for s in siblings:
        if not isinstance(s, dict):
            continue
        path = _safe_path(s.get("rfilename"))
        if path is None or not any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in patterns):
            continue
        lfs: dict = s["lfs"] if isinstance(s.get("lfs"), dict) else {}
        sha = lfs.get("sha256") if isinstance(lfs.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", lfs["sha256"]) \
            else None
        size = lfs.get("size", s.get("size"))
        blob = s.get("blobId")
        oid = sha or (blob if isinstance(blob, str) and _OID.match(blob) else None)
        if not isinstance(size, int) or size < 0 or oid is None:
            raise PullError(f"the hub gives no size or id for {path}")
        files.append(HubFile(path, size, oid, sha))
    if not files:
        raise PullError("the repository has no weights to fetch (no file matches " + " ".join(patterns) + ")")
    return listing["sha"], files


async def _listing(session: aiohttp.ClientSession, endpoint: str, repo: str, revision: str,
                   headers: dict[str, str]) -> object:
    url = f"{endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}?blobs=true"
    async with session.get(url, headers=headers) as resp:
        if resp.status in (401, 403):
            raise PullError(f"{repo} is gated or private: accept its licence on the hub with your account and "
                            "give a read token in HF_TOKEN or a file (HF_TOKEN_PATH)")
        if resp.status == 404:
            raise PullError(f"{repo} (revision {revision}) was not found on the hub")
        if resp.status != 200:
            raise PullError(f"the hub answered {resp.status} for {repo}'s file list")
        body = await resp.content.read(LISTING_LIMIT + 1)
        if len(body) > LISTING_LIMIT:
            raise PullError(f"the hub's file list of {repo} is over {LISTING_LIMIT} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PullError(f"the hub's file list of {repo} is not JSON") from exc


async def _fetch(session: aiohttp.ClientSession, url: str, headers: dict[str, str], f: HubFile, blob: Path,
                 report: Callable[[Progress], None], step: Progress) -> None:
    """Bring blobs/<oid> to the file's full size, resuming blobs/<oid>.incomplete."""
    part = blob.with_name(blob.name + ".incomplete")
    # The disk is read and written in threads: the gateway's event loop serves requests meanwhile.
    have, digest = await asyncio.to_thread(_partial, part, f)
    if have < f.size:
        digest = await _transfer(session, url, headers, f, part, have, digest, report, step)
    if f.sha256 and digest.hexdigest() != f.sha256:
        await asyncio.to_thread(part.unlink)
        raise PullError(f"{f.path}: sha256 mismatch (the partial file was removed); pull again")
    await asyncio.to_thread(part.rename, blob)


async def _transfer(session: aiohttp.ClientSession, url: str, headers: dict[str, str], f: HubFile, part: Path,
                    have: int, digest: hashlib._Hash, report: Callable[[Progress], None],
                    step: Progress) -> hashlib._Hash:
    """The rest of the file from byte `have` on, appended to the partial file (or all of it, when
    the server ignores the Range); the sha256 of the whole file."""
    request = dict(headers)
    if have:
        request["Range"] = f"bytes={have}-"
    async with session.get(url, headers=request) as resp:
        if resp.status == 200:
            have, digest = 0, hashlib.sha256()  # the server sends it all: start over
        elif not (resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
            raise PullError(f"the hub answered {resp.status} for {f.path}")
        out = await asyncio.to_thread(_claim, part, have, f.path)
        step.completed = have
        report(step)
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if have + len(chunk) > f.size:
                    raise PullError(f"{f.path}: the hub sent more than its {f.size} bytes")
                await asyncio.to_thread(_append, out, chunk)
                digest.update(chunk)
                have += len(chunk)
                step.completed = have
                report(step)
        finally:
            await asyncio.to_thread(out.close)
    if have != f.size:
        raise PullError(f"{f.path}: the transfer ended at {have} of {f.size} bytes; pull again to resume")
    return digest


def _partial(part: Path, f: HubFile) -> tuple[int, hashlib._Hash]:
    """The bytes of the file a pull left (none if it is not a prefix of this file), hashed so far."""
    digest = hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    if have > f.size:
        return 0, digest
    if have and f.sha256:
        with part.open("rb") as existing:
            while chunk := existing.read(CHUNK):
                digest.update(chunk)
    return have, digest


def _claim(part: Path, have: int, path: str) -> IO[bytes]:
    """The partial file, open to append from byte `have`, locked for this pull alone: the CLI and
    the gateway (or two CLIs) appending to one file would interleave their bytes."""
    out = part.open("ab")
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        out.close()
        raise PullError(f"{path}: another pull is fetching it now; let it finish") from None
    if os.fstat(out.fileno()).st_size < have:  # another pull finished it (and moved it) meanwhile
        out.close()
        raise PullError(f"{path}: changed by another pull meanwhile; pull again")
    out.truncate(have)  # what came after the bytes this pull has read and hashed goes
    return out


def _append(out: IO[bytes], chunk: bytes) -> None:
    """Every byte received is on disk before the next is read: a pull killed midway resumes from it."""
    out.write(chunk)
    out.flush()


def _present(blob: Path, size: int) -> bool:
    return blob.exists() and blob.stat().st_size == size


def _link(snapshot: Path, path: str, blob: Path) -> None:
    """snapshots/<commit>/<path> -> the blob, relative, as huggingface_hub links them."""
    link = snapshot / path
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))


def _finish(folder: Path, revision: str, commit: str, snapshot: Path) -> None:
    if revision != commit:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / revision).write_text(commit)
    (snapshot / MARKER).write_text("")


async def pull(repo: str, cache: Path, report: Callable[[Progress], None], *, endpoint: str | None = None,
               token: str | None = None, revision: str = "main",
               patterns: tuple[str, ...] = PATTERNS) -> Path:
    """Fetch what vLLM loads of `repo` into `cache`; the snapshot folder. Progress goes to `report`
    (called often, from this coroutine: it must not block)."""
    if not is_repo_id(repo):
        raise PullError(f"'{repo}' is not a hub model id (ORG/NAME)")
    if not _REVISION.match(revision):
        raise PullError(f"'{revision}' is not a branch, tag or commit name")
    endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
    folder = repo_folder(cache, repo)
    report(Progress("pulling manifest"))
    try:
        async with aiohttp.ClientSession(timeout=timeout, raise_for_status=False) as session:
            commit, files = _files(await _listing(session, endpoint, repo, revision, headers), patterns)
            snapshot = folder / "snapshots" / commit
            await asyncio.to_thread((folder / "blobs").mkdir, parents=True, exist_ok=True)
            for f in files:
                blob = folder / "blobs" / f.oid
                step = Progress(f"pulling {f.oid[:12]}", f.path, f.oid, f.size, 0, f.sha256 is not None)
                if await asyncio.to_thread(_present, blob, f.size):
                    step.completed = f.size  # an earlier pull (or the prefetch) has it
                    report(step)
                else:
                    url = f"{endpoint}/{repo}/resolve/{commit}/{quote(f.path)}"
                    await _fetch(session, url, headers, f, blob, report, step)
                await asyncio.to_thread(_link, snapshot, f.path, blob)
            report(Progress("verifying sha256 digest"))
            await asyncio.to_thread(_finish, folder, revision, commit, snapshot)
    except PermissionError as exc:
        raise PullError(f"{repo}: cannot write the model cache ({exc.filename}): pull as the user that owns "
                        f"{cache}") from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PullError(f"{repo}: {type(exc).__name__}: {exc or 'timed out'}; pull again to resume") from exc
    report(Progress("writing manifest"))
    report(Progress("success"))
    return snapshot


class Meter:
    """The CLI's view of a pull: a progress bar redrawn in place on a terminal, else a line per file
    and one every few seconds (a log or CI reads them)."""

    def __init__(self, tty: bool, write: Callable[[str], None], every: float = 5.0) -> None:
        self.tty, self.write, self.every = tty, write, every
        self.file = ""
        self.started = self.last = 0.0
        self.base = 0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not p.path:
            self._end()
            self.write(f"{p.status}\n")
            return
        if p.path != self.file:
            self._end()
            if p.completed >= p.total:
                self.write(f"{p.path}: {_size(p.total)}, already here\n")
                return
            self.file, self.started, self.last, self.base = p.path, now, 0.0, p.completed
            if not self.tty:
                resumed = f", resuming at {_size(p.completed)}" if p.completed else ""
                self.write(f"{p.path}: {_size(p.total)}{resumed}\n")
                self.last = now  # the next line says how far it got
        elif p.completed == self.base and p.completed < p.total:
            return  # nothing new
        done = p.completed >= p.total
        if self.tty and (now - self.last >= 0.1 or done):
            self.write(f"\r\x1b[K{self._line(p, now)}")
        elif not self.tty and (now - self.last >= self.every or done):
            self.write(self._line(p, now) + "\n")
        else:
            return
        self.last = now
        if done:
            self._end()

    def _line(self, p: Progress, now: float) -> str:
        pct = 100 * p.completed / p.total if p.total else 100.0
        speed = (p.completed - self.base) / max(now - self.started, 1e-3)
        return f"{p.path}: {_size(p.completed)}/{_size(p.total)} {pct:5.1f}% {_size(int(speed))}/s"

    def _end(self) -> None:
        if self.file and self.tty:
            self.write("\n")
        self.file = ""


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
