"""Ollama's /api/pull: a configured model's weights fetched from the hub into the cache its vLLM reads.

Only models of the config, by name or alias, and only those the key may use: a hub id that is not
configured is refused like any unknown model (404), so a key cannot make the gateway download
whatever it names. A pull is a request like any other of the key's (the access middleware holds
one of its concurrent requests until the answer ends, and counts its rate). One pull per model at a
time: a second caller follows the first's progress; a pull goes on when its callers hang up (the
next one finds it further along), and at most MAX_PULLS run at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from aiohttp import web

from gateway.base.errors import ApiError
from gateway.config.schema import ManagedModel
from gateway.http.appkeys import CONFIG, REGISTRY
from gateway.http.pipeline import json_response, resolve
from gateway.lifecycle.pull import Progress, PullError, hub_cache, hub_token, is_repo_id, pull

from .common import NDJSON, known_name, read_body

log = logging.getLogger("localai.pull")
# Distinct models downloading at once: each holds a hub connection and the disk's bandwidth.
MAX_PULLS = 2
# A follower that hears nothing for this long (a stalled transfer fails sooner: READ_TIMEOUT)
# checks again; the wait is bounded, the pull's own timeouts end it.
_WAKE = 30.0


class Pull:
    """One model's download, followed by any number of callers."""

    def __init__(self) -> None:
        # The latest line of each step (a file's progress replaces its previous line), in order of change.
        self.lines: dict[str, tuple[int, dict]] = {}
        self.seq = 0
        self.changed = asyncio.Event()
        self.error: str | None = None
        self.done = False
        self.task: asyncio.Task | None = None

    def report(self, p: Progress) -> None:
        line: dict = {"status": p.status}
        if p.path:
            line.update(digest=f"sha256:{p.oid}" if p.sha256 else p.oid, total=p.total, completed=p.completed)
        self.seq += 1
        self.lines[p.oid or p.status] = (self.seq, line)
        self._wake()

    def finish(self, error: str | None) -> None:
        self.error, self.done = error, True
        self._wake()

    def _wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[dict]:
        seen = 0
        while True:
            changed = self.changed
            new = sorted((seq, line) for seq, line in self.lines.values() if seq > seen)
            for seq, line in new:
                seen = seq
                yield line
            if self.done:
                if self.error:
                    yield {"error": self.error}  # Ollama's clients raise it as the pull's error
                return
            try:
                await asyncio.wait_for(changed.wait(), _WAKE)
            except TimeoutError:
                continue


class Pulls:
    """The pulls under way, by model name."""

    def __init__(self) -> None:
        self.running: dict[str, Pull] = {}

    def start(self, name: str, repo: str, env: dict[str, str]) -> Pull:
        job = self.running.get(name)
        if job is not None:
            return job
        if len(self.running) >= MAX_PULLS:
            raise ApiError(503, f"{MAX_PULLS} models are being pulled already; try again when one is done.",
                           code="too_many_pulls", type="server_error", headers={"Retry-After": "60"})
        job = self.running[name] = Pull()

        async def run() -> None:
            error: str | None = "the gateway stopped the pull"  # unless it ends otherwise, below
            try:
                await pull(repo, hub_cache(env), job.report, endpoint=env.get("HF_ENDPOINT"), token=hub_token(env))
                error = None
            except PullError as exc:
                error = str(exc)
                log.warning("pull of %s failed: %s", name, error)
            except Exception:
                error = "the pull failed (the gateway's log says why)"
                log.exception("pull of %s failed", name)
            finally:
                del self.running[name]
                job.finish(error)

        job.task = asyncio.create_task(run(), name=f"pull {name}")
        return job

    async def close(self, app: web.Application) -> None:
        tasks = [job.task for job in self.running.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


PULLS = web.AppKey("ollama_pulls", Pulls)


def add_pull_route(app: web.Application) -> None:
    app[PULLS] = pulls = Pulls()
    app.on_cleanup.append(pulls.close)
    app.router.add_post("/api/pull", pull_model)


async def pull_model(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    name = body.get("model") or body.get("name")  # older clients send "name"
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'model' is required.", code="invalid_request", param="model")
    backend = resolve(request, known_name(request.app[REGISTRY], name)).backend
    model = backend.model
    # `insecure` (a registry without TLS) has no meaning here: the hub is HF_ENDPOINT's.
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean.", code="invalid_type", param="stream")
    if not isinstance(model, ManagedModel) or await asyncio.to_thread(Path(model.model).is_dir):
        # Served from elsewhere, or from a folder of its own: nothing to fetch, it is here.
        lines = [{"status": "pulling manifest"}, {"status": "success"}]
        return await _answer(request, stream, _listed(lines))
    if not is_repo_id(model.model):
        raise ApiError(409, f"Model '{backend.name}' is read from the folder {model.model}, which is missing; "
                            "only hub models can be pulled.", code="not_pullable", param="model")
    env = {**os.environ, **request.app[CONFIG].vllm.env, **model.env}
    job = request.app[PULLS].start(backend.name, model.model, env)
    return await _answer(request, stream, job.follow())


async def _listed(lines: list[dict]) -> AsyncIterator[dict]:
    for line in lines:
        yield line


async def _answer(request: web.Request, stream: bool, lines: AsyncIterator[dict]) -> web.StreamResponse:
    if not stream:
        last: dict = {}
        async for line in lines:
            last = line
        if last.get("status") != "success":
            raise ApiError(502, last.get("error", "the pull failed"), code="pull_failed", type="server_error")
        return json_response({"status": "success"})
    resp = web.StreamResponse(headers={"Content-Type": NDJSON})
    await resp.prepare(request)
    async for line in lines:
        await resp.write(orjson.dumps(line) + b"\n")
    await resp.write_eof()
    return resp
