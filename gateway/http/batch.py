"""OpenAI's Files and Batch APIs (docs/batch.md): /v1/files and /v1/batches, and the runner that
sends a batch's lines through the gateway's own request path in the low lane.

Each line is a request to this gateway itself, over loopback, proved by the runner's secret
(middleware.py `_batch_line`) and run as the key that made the batch: auth, the key's limits,
routing, the context guard, admission, the proxy and usage accounting are the interactive
request's own, with two differences the request carries (BATCH_LANE): admission's low lane
(routing/admission.py) and vLLM's `priority` (pipeline.scheduled_by_priority).

Progress lives in the batch store (keys/batches.py): a line's answer is kept in the transaction
that marks it done, so a restart sends only the lines not done, and the output file is written
from the store at the end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from gateway.base.bounded import TooLarge, read_at_most
from gateway.base.errors import ApiError
from gateway.config.schema import GatewaySettings, connect_host
from gateway.http.appkeys import ACCESS, BATCH_TOKEN, CONFIG, KEY_NAME, LIFECYCLE, REGISTRY
from gateway.http.middleware import BATCH_KEY_HEADER, BATCH_TOKEN_HEADER
from gateway.http.pipeline import (
    BATCH_STOPPED,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    BodyClock,
    check_task,
    json_response,
    read_json_body,
)
from gateway.keys import batches as st
from gateway.keys.batches import BatchStore
from gateway.routing.backends import Backend
from gateway.routing.states import State

log = logging.getLogger("localai.batch")

ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)
WINDOW = 24 * 3600.0  # completion_window "24h", the one OpenAI offers
# Bad lines named in a failed batch's errors, at most (the rest are counted in the last).
MAX_ERRORS = 100
# Connections the runner holds to the gateway, all batches together (under the per-client cap).
CONNECTIONS = 32
# Backoff between tries of a line: doubles from the first, up to the last.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
# How often a line waiting for its model to serve, or to be free of interactive requests, looks again.
WAIT_POLL = 0.5
_TRANSIENT = (429, 500, 502, 503, 504)
# The key's own limits, and the gateway's per-address connection cap (the runner is a loopback
# client like the CLI): the line waits them out rather than spending a try.
_WAIT_OUT = ("key_concurrency_limit", "key_rate_limit", "too_many_connections")

STORE = web.AppKey("batch_store", BatchStore)


def _key(request: web.Request) -> str:
    return request.get(KEY_NAME, "")  # "" on an open gateway


def _store(request: web.Request) -> BatchStore:
    store = request.app.get(STORE)
    if store is None:
        raise ApiError(404, "The Files and Batch APIs are off on this gateway (gateway.batch_dir is null).",
                       code="batch_disabled")
    return store


def _no_file(file_id: str) -> ApiError:
    return ApiError(404, f"No such File object: {file_id}", code="file_not_found", param="id")


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch found with id '{batch_id}'.", code="batch_not_found", param="id")


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise ApiError(400, "'limit' must be an integer from 1 to 100.", code="invalid_value", param="limit")
    return limit


def _page(data: list[dict], limit: int) -> dict:
    """One page of OpenAI's cursor pagination: `limit + 1` rows were read to know has_more."""
    page = data[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(data) > limit}


# --- files -----------------------------------------------------------------------------


async def create_file(request: web.Request) -> web.Response:
    """Multipart `purpose` and `file`; the file streamed to disk, its caps held as it is read."""
    store = _store(request)
    gw: GatewaySettings = request.app[CONFIG].gateway
    key = _key(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "Upload a file as multipart/form-data with fields 'purpose' and 'file'.",
                       code="unsupported_media_type")
    room = min(gw.batch_max_file_bytes, gw.batch_max_key_bytes - await asyncio.to_thread(store.key_bytes, key))
    file_id = st.new_id("file")
    tmp = store.file_path(file_id).with_suffix(".part")
    purpose, filename, size = None, None, None
    try:
        reader, clock = await request.multipart(), BodyClock(request, UPLOAD_MIN_RATE)
        while (part := await clock.read(reader.next())) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue  # a nested multipart: nothing of OpenAI's
            if part.name == "purpose":
                purpose = (await clock.read(part.read_chunk(256))).decode(errors="replace").strip()
            elif part.name == "file" and size is None:
                filename = part.filename or "upload.jsonl"
                size = await _save(clock, part, tmp, room)
        if size is None:
            raise ApiError(400, "Missing the 'file' field.", code="missing_required_parameter", param="file")
        if purpose != "batch":
            raise ApiError(400, f"'purpose' must be 'batch' (got {purpose!r}).", code="invalid_value",
                           param="purpose")
        tmp.replace(store.file_path(file_id))
    finally:
        tmp.unlink(missing_ok=True)
    assert filename is not None  # set with size
    return json_response(await asyncio.to_thread(store.add_file, file_id, key, filename, "batch", size))


# An upload may take long as a whole (hundreds of MiB), so its deadline grows with what arrived:
# gateway.body_timeout plus a second per this many bytes (Apache mod_reqtimeout's MinRate).
UPLOAD_MIN_RATE = 64 * 1024


async def _save(clock: BodyClock, part: aiohttp.BodyPartReader, tmp: Path, room: int) -> int:
    gw: GatewaySettings = clock.request.app[CONFIG].gateway
    size = 0
    with open(tmp, "wb") as out:  # noqa: ASYNC230 - one chunk at a time, each a small local write
        while chunk := await clock.read(part.read_chunk(256 * 1024)):
            size += len(chunk)
            if size > room:
                if room < gw.batch_max_file_bytes:
                    raise ApiError(413, f"The key's files would pass gateway.batch_max_key_bytes "
                                        f"({gw.batch_max_key_bytes} bytes); delete some first.",
                                   code="storage_quota_exceeded")
                raise ApiError(413, f"The file is larger than gateway.batch_max_file_bytes "
                                    f"({gw.batch_max_file_bytes} bytes).", code="file_too_large", param="file")
            out.write(chunk)
    return size


async def list_files(request: web.Request) -> web.Response:
    store, limit = _store(request), _limit(request)
    data = await asyncio.to_thread(store.list_files, _key(request), request.query.get("purpose"),
                                   request.query.get("after"), limit + 1)
    return json_response(_page(data, limit))


async def _own_file(request: web.Request) -> tuple[BatchStore, dict]:
    store, file_id = _store(request), request.match_info["file_id"]
    found = await asyncio.to_thread(store.get_file, file_id, _key(request))
    if found is None:
        raise _no_file(file_id)
    return store, found


async def get_file(request: web.Request) -> web.Response:
    return json_response((await _own_file(request))[1])


async def file_content(request: web.Request) -> web.StreamResponse:
    store, found = await _own_file(request)
    return web.FileResponse(store.file_path(found["id"]), headers={"Content-Type": "application/octet-stream"})


async def delete_file(request: web.Request) -> web.Response:
    store, file_id = _store(request), request.match_info["file_id"]
    if not await asyncio.to_thread(store.delete_file, file_id, _key(request)):
        raise _no_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


# --- batches ---------------------------------------------------------------------------


async def create_batch(request: web.Request) -> web.Response:
    store = _store(request)
    body = await read_json_body(request)
    key = _key(request)
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise ApiError(400, f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", code="invalid_value",
                       param="endpoint")
    if body.get("completion_window") != "24h":
        raise ApiError(400, "'completion_window' must be '24h'.", code="invalid_value", param="completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ApiError(400, "'metadata' must be an object of at most 16 string values.", code="invalid_value",
                       param="metadata")
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or await asyncio.to_thread(store.get_file, file_id, key) is None:
        raise ApiError(404 if isinstance(file_id, str) else 400, f"No such File object: {file_id}",
                       code="file_not_found", param="input_file_id")
    now = int(time.time())
    batch = {"id": st.new_id("batch"), "object": "batch", "endpoint": endpoint, "errors": None,
             "input_file_id": file_id, "completion_window": "24h", "status": st.VALIDATING,
             "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
             "expires_at": now + int(WINDOW), "finalizing_at": None, "completed_at": None, "failed_at": None,
             "expired_at": None, "cancelling_at": None, "cancelled_at": None,
             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata}
    await asyncio.to_thread(store.add_batch, key, batch)
    request.app[RUNNER].launch(batch["id"])
    return json_response(batch)


async def _own_batch(request: web.Request) -> tuple[BatchStore, dict]:
    store, batch_id = _store(request), request.match_info["batch_id"]
    found = await asyncio.to_thread(store.get_batch, batch_id)
    if found is None or found[0] != _key(request):
        raise _no_batch(batch_id)
    return store, found[1]


async def get_batch(request: web.Request) -> web.Response:
    return json_response((await _own_batch(request))[1])


async def list_batches(request: web.Request) -> web.Response:
    store, limit = _store(request), _limit(request)
    data = await asyncio.to_thread(store.list_batches, _key(request), request.query.get("after"), limit + 1)
    return json_response(_page(data, limit))


async def cancel_batch(request: web.Request) -> web.Response:
    store, batch = await _own_batch(request)
    if batch["status"] in st.TERMINAL or batch["status"] == st.CANCELLING:
        if batch["status"] in (st.CANCELLING, st.CANCELLED):
            return json_response(batch)
        raise ApiError(409, f"Cannot cancel a batch with status '{batch['status']}'.", code="invalid_state")
    batch = await asyncio.to_thread(store.update, batch["id"], status=st.CANCELLING, cancelling_at=int(time.time()))
    request.app[RUNNER].cancel(batch["id"])
    return json_response(batch)


# --- the runner ------------------------------------------------------------------------


class Runner:
    """Runs every unfinished batch, one task each; a restart carries on with them (start)."""

    def __init__(self, app: web.Application, store: BatchStore):
        self.app = app
        self.store = store
        self.token = secrets.token_hex(32)
        app[BATCH_TOKEN] = self.token.encode()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()
        self.workers: dict[str, list[asyncio.Task[None]]] = {}  # each running batch's line senders
        self.session: aiohttp.ClientSession | None = None

    @property
    def gw(self) -> GatewaySettings:
        return self.app[CONFIG].gateway

    def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        for batch_id in self.store.unfinished():
            self.launch(batch_id)

    def launch(self, batch_id: str) -> None:
        task = asyncio.create_task(self._run(batch_id), name=f"batch {batch_id}")
        self.tasks[batch_id] = task
        task.add_done_callback(lambda t: self._ended(batch_id, t))

    def _ended(self, batch_id: str, task: asyncio.Task[None]) -> None:
        self.tasks.pop(batch_id, None)
        self.cancelled.discard(batch_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("batch %s stopped: %r; it carries on at the next start", batch_id, task.exception(),
                      exc_info=task.exception())

    def cancel(self, batch_id: str) -> None:
        """No more of its lines: those in flight are called off (their answers are not kept)."""
        self.cancelled.add(batch_id)
        for task in self.workers.get(batch_id, ()):
            task.cancel()

    async def stop(self) -> None:
        """Stop sending lines; a line not yet answered is sent again at the next start."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _run(self, batch_id: str) -> None:
        found = await asyncio.to_thread(self.store.get_batch, batch_id)
        assert found is not None
        key, batch = found
        if batch["status"] == st.VALIDATING:
            batch = await self._validate(key, batch)
        if batch["status"] == st.IN_PROGRESS:
            await self._lines(key, batch)
            batch = await asyncio.to_thread(self.store.update, batch_id, st.IN_PROGRESS, status=st.FINALIZING,
                                            finalizing_at=int(time.time()))
        if batch["status"] in (st.FINALIZING, st.CANCELLING):
            await self._finalize(key, batch)

    async def _validate(self, key: str, batch: dict) -> dict:
        path = self.store.file_path(batch["input_file_id"])
        try:
            lines, errors, models = await asyncio.to_thread(_read_input, path, batch["endpoint"],
                                                            self.gw.batch_max_lines)
        except OSError as exc:  # deleted before its batch was validated
            lines, errors, models = [], [_line_error("file_not_found", f"The input file cannot be read: "
                                                     f"{exc.strerror}.", None)], {}
        for model, line in models.items():
            problem = self._model_problem(key, model, batch["endpoint"])
            if problem:
                errors.append(_line_error("invalid_model", problem, line, "body.model"))
        now = int(time.time())
        if errors:
            shown = sorted(errors, key=lambda e: e["line"] or 0)[:MAX_ERRORS]
            return await asyncio.to_thread(self.store.update, batch["id"], st.VALIDATING, status=st.FAILED,
                                           failed_at=now, errors={"object": "list", "data": shown})
        return await asyncio.to_thread(self.store.start_lines, batch["id"], lines, status=st.IN_PROGRESS,
                                       in_progress_at=now,
                                       request_counts={"total": len(lines), "completed": 0, "failed": 0})

    def _model_problem(self, key: str, model: object, endpoint: str) -> str | None:
        try:
            backend = self.app[REGISTRY].resolve(model).backend
        except ApiError:
            backend = None
        if backend is None or not self.app[ACCESS].limiter.allows(key, backend.name):
            return f"The model '{model}' does not exist or this key may not use it."
        try:
            check_task(backend, endpoint)
        except ApiError as exc:
            return exc.message
        return None

    async def _lines(self, key: str, batch: dict) -> None:
        """Every line not done yet, `batch_parallel` at a time, until done, cancelled or expired."""
        batch_id = batch["id"]
        todo = iter(await asyncio.to_thread(self.store.pending, batch_id))

        async def worker() -> None:
            for line, custom_id, body in todo:
                if batch_id in self.cancelled or time.time() >= batch["expires_at"]:
                    return
                ok, result = await self._send(key, batch, custom_id, body)
                await asyncio.to_thread(self.store.finish_line, batch_id, line, ok, result)

        workers = self.workers[batch_id] = [asyncio.create_task(worker()) for _ in range(self.gw.batch_parallel)]
        try:
            # return_exceptions: a worker cancelled by `cancel` ends only itself; this task's own
            # cancellation (stop) still ends them all, as gather passes it on.
            for result in await asyncio.gather(*workers, return_exceptions=True):
                if isinstance(result, Exception):
                    raise result
        finally:
            del self.workers[batch_id]

    async def _send(self, key: str, batch: dict, custom_id: str, body: str) -> tuple[bool, bytes]:
        """One line through the gateway, tried again on a transient failure: (ok, its output line)."""
        assert self.session is not None
        gw = self.gw
        url = f"http://{_url_host(gw.host)}:{gw.port}{batch['endpoint']}"
        model = orjson.loads(body).get("model")
        tries, status, answer, error = 0, 0, None, None
        while True:
            rid = f"batch_req_{secrets.token_hex(12)}"
            if not await self._serving(model, batch["expires_at"]):
                return False, _expired_line(rid, custom_id)
            headers = {BATCH_TOKEN_HEADER: self.token, BATCH_KEY_HEADER: key, "X-Request-ID": rid,
                       "Content-Type": "application/json"}
            retry_after = None
            try:
                async with self.session.post(url, data=body.encode(), headers=headers, timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=gw.connect_timeout, sock_read=gw.read_timeout)) as resp:
                    status = resp.status
                    raw = await read_at_most(resp, gw.max_upstream_body_bytes)
                    retry_after = resp.headers.get("Retry-After")
                answer, error = orjson.loads(raw), None
            except (aiohttp.ClientError, TooLarge, orjson.JSONDecodeError, TimeoutError) as exc:
                status, answer, error = 0, None, {"code": "connection_error", "message": f"{exc!r}"}
            code = answer.get("error", {}).get("code") if isinstance(answer, dict) and status >= 400 else None
            if status == 429 and code in _WAIT_OUT:
                await asyncio.sleep(_seconds(retry_after, 1.0))  # the key's own limits: not the line's fault
                continue
            if status == 503 and code == BATCH_STOPPED:
                continue  # stopped for interactive requests (batch_yield idle): sent again once they are gone
            if (status in _TRANSIENT or status == 0) and tries < gw.batch_retries:
                await asyncio.sleep(max(min(BACKOFF_FIRST * 2 ** tries, BACKOFF_MAX), _seconds(retry_after, 0.0)))
                tries += 1
                continue
            break
        ok = 200 <= status < 400
        response = None if status == 0 else {"status_code": status, "request_id": rid, "body": answer}
        return ok, orjson.dumps({"id": rid, "custom_id": custom_id, "response": response, "error": error})

    async def _serving(self, model: object, until: float) -> bool:
        """Wait while the line's model does not serve: down, loading, or (load: on_demand) not on its
        card, which a batch never brings in (docs/batch.md: it would take the card from interactive
        users); and (batch_yield idle) while it has interactive requests, so that the line does not
        sit in admission's low lane holding a connection. False: the batch's window ended first."""
        lifecycle = self.app[LIFECYCLE]
        while time.time() < until:
            try:
                backend: Backend = self.app[REGISTRY].resolve(model).backend
            except ApiError:
                return True  # gone with a reload: the request itself says so
            serves = lifecycle.ready(backend) if lifecycle.manages(backend.name) else backend.state is State.READY
            if serves and backend.slots.batch_may_start():
                return True
            await asyncio.sleep(WAIT_POLL)
        return False

    async def _finalize(self, key: str, batch: dict) -> None:
        """The output and error files from the store, then the batch's last status."""
        batch_id = batch["id"]
        # Finalizing from the window's end on: what was not run by then is reported expired.
        expired = batch["status"] == st.FINALIZING and batch["finalizing_at"] >= batch["expires_at"]
        if expired:
            for line, custom_id, _body in await asyncio.to_thread(self.store.pending, batch_id):
                await asyncio.to_thread(self.store.finish_line, batch_id, line, False,
                                        _expired_line(f"batch_req_{secrets.token_hex(12)}", custom_id))
        suffix = batch_id.removeprefix("batch-")
        out = await asyncio.to_thread(self.store.write_file, f"file-{suffix}-output", key,
                                      f"{batch_id}_output.jsonl", "batch_output", self.store.results(batch_id, True))
        err = await asyncio.to_thread(self.store.write_file, f"file-{suffix}-errors", key,
                                      f"{batch_id}_error.jsonl", "batch_output", self.store.results(batch_id, False))
        last = st.CANCELLED if batch["status"] == st.CANCELLING else st.EXPIRED if expired else st.COMPLETED
        await asyncio.to_thread(self.store.update, batch_id, None, status=last, **{f"{last}_at": int(time.time())},
                                output_file_id=out and out["id"], error_file_id=err and err["id"])
        await asyncio.to_thread(self.store.drop_lines, batch_id)


RUNNER = web.AppKey("batch_runner", Runner)


def _expired_line(rid: str, custom_id: str) -> bytes:
    return orjson.dumps({"id": rid, "custom_id": custom_id, "response": None, "error": {
        "code": "batch_expired", "message": "This line was not run within the batch's 24h window."}})


def _seconds(header: str | None, default: float) -> float:
    try:
        return min(float(header), BACKOFF_MAX) if header else default
    except ValueError:
        return default


def _url_host(host: str) -> str:
    host = connect_host(host)
    return f"[{host}]" if ":" in host else host


def _line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def _read_input(path: Path, endpoint: str, max_lines: int) -> tuple[list[tuple[int, str, bytes]], list[dict], dict]:
    """The input file, line by line: the lines to run (line number, custom_id, body), the errors of
    the bad ones (each naming its line, 1-based), and each model named with the first line naming it."""
    lines: list[tuple[int, str, bytes]] = []
    errors: list[dict] = []
    models: dict[str, int] = {}
    seen: set[str] = set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            problem = _check_line(raw, endpoint, seen)
            if isinstance(problem, dict):
                errors.append(_line_error(problem["code"], problem["message"], n, problem.get("param")))
                continue
            custom_id, body = problem
            model = body.get("model")
            if isinstance(model, str):
                models.setdefault(model, n)
            else:
                errors.append(_line_error("invalid_model", "'body.model' must be a string.", n, "body.model"))
            lines.append((n, custom_id, orjson.dumps(body)))
    if not lines and not errors:
        errors.append(_line_error("empty_file", "The input file has no requests.", None))
    if len(lines) > max_lines:
        errors.append(_line_error("too_many_requests", f"The input file has {len(lines)} requests; "
                                  f"gateway.batch_max_lines allows {max_lines}.", None))
    return lines, errors, models


def _check_line(raw: bytes, endpoint: str, seen: set[str]) -> dict | tuple[str, dict]:
    """(custom_id, body) of a good line, else {code, message, param}."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {"code": "invalid_json_line", "message": f"This line is not valid JSON: {exc}."}
    if not isinstance(item, dict):
        return {"code": "invalid_json_line", "message": "This line is not a JSON object."}
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return {"code": "missing_required_parameter", "message": "'custom_id' must be a non-empty string.",
                "param": "custom_id"}
    if custom_id in seen:
        return {"code": "duplicate_custom_id", "message": f"The custom_id '{custom_id}' is used more than once.",
                "param": "custom_id"}
    seen.add(custom_id)
    if item.get("method") != "POST":
        return {"code": "invalid_method", "message": "'method' must be 'POST'.", "param": "method"}
    if item.get("url") != endpoint:
        return {"code": "invalid_url", "message": f"'url' must be the batch's endpoint, {endpoint}.",
                "param": "url"}
    body = item.get("body")
    if not isinstance(body, dict):
        return {"code": "invalid_request", "message": "'body' must be a JSON object.", "param": "body"}
    if body.get("stream"):
        return {"code": "invalid_request", "message": "A batch line cannot stream ('body.stream').",
                "param": "body.stream"}
    return custom_id, body


def add_routes(app: web.Application) -> None:
    """The routes, and the store and runner for the app's lifetime (none with batch_dir null)."""
    r = app.router
    r.add_post("/v1/files", create_file)
    r.add_get("/v1/files", list_files)
    r.add_get("/v1/files/{file_id}", get_file)
    r.add_get("/v1/files/{file_id}/content", file_content)
    r.add_delete("/v1/files/{file_id}", delete_file)
    r.add_post("/v1/batches", create_batch)
    r.add_get("/v1/batches", list_batches)
    r.add_get("/v1/batches/{batch_id}", get_batch)
    r.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.cleanup_ctx.append(_batch_ctx)
    app.on_shutdown.append(_stop_runner)


async def _batch_ctx(app: web.Application) -> AsyncIterator[None]:
    root = app[CONFIG].gateway.batch_dir
    if root is None:
        yield
        return
    store = app[STORE] = await asyncio.to_thread(BatchStore, root)
    runner = app[RUNNER] = Runner(app, store)
    runner.start()
    try:
        yield
    finally:
        await runner.stop()
        store.close()


async def _stop_runner(app: web.Application) -> None:
    """Before the server waits out the requests in flight: the batch's own among them end now."""
    runner = app.get(RUNNER)
    if runner is not None:
        await runner.stop()
