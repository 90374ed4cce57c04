"""A stand-in for the model hub's HTTP API, as `localai pull` and /api/pull use it (never the internet).

  GET /api/models/ORG/NAME/revision/REV   the revision's commit and files (size, blobId, lfs sha256)
  GET /ORG/NAME/resolve/REV/PATH           a file, with Range requests answered 206

`cut[path] = n` sends the next transfer of that file only up to byte n, then drops the connection
(a network failure midway; with `drop` an event, once it is set). With `hold` an event, file
transfers wait for it. `corrupt` files are sent with their first byte changed. `ranges` records
the Range header of each file request. With `token` set, requests without it are answered 401,
as a gated repository is. With `cdn` the URL of another stand-in, LFS files are answered with a
redirect there, as the hub sends its weights from a CDN.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class StandinHub:
    def __init__(self, repo: str, files: dict[str, bytes], token: str | None = None) -> None:
        self.repo, self.files, self.token = repo, files, token
        self.url = ""  # where the test serves it
        self.cut: dict[str, int] = {}
        self.hold: asyncio.Event | None = None
        self.drop: asyncio.Event | None = None
        self.corrupt: set[str] = set()
        self.cdn = ""
        self.ranges: list[tuple[str, str | None]] = []
        self.authorizations: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.revision)
        self.app.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)

    def _check(self, request: web.Request) -> None:
        self.authorizations.append(request.headers.get("Authorization"))
        if f"{request.match_info['org']}/{request.match_info['name']}" != self.repo:
            raise web.HTTPNotFound(text='{"error":"Repository not found"}', content_type="application/json")
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(text='{"error":"Access to this model is restricted"}',
                                       content_type="application/json")

    async def revision(self, request: web.Request) -> web.Response:
        self._check(request)
        siblings = []
        for path, data in self.files.items():
            entry: dict = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
            if path.endswith(".safetensors"):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        return web.json_response({"id": self.repo, "sha": COMMIT, "siblings": siblings})

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        path = request.match_info["path"]
        data = self.files.get(path)
        if data is None:
            raise web.HTTPNotFound()
        if path in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        if self.cdn and path.endswith(".safetensors"):
            raise web.HTTPFound(f"{self.cdn}{request.path}")
        self.ranges.append((path, request.headers.get("Range")))
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), 30)
        start = 0
        if request.http_range.start is not None:
            start = request.http_range.start
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(data) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        end = self.cut.pop(path, len(data))
        for i in range(start, end, 256 * 1024):
            await resp.write(data[i:min(i + 256 * 1024, end)])
        if end < len(data):
            if self.drop is not None:
                await asyncio.wait_for(self.drop.wait(), 30)
            assert request.transport is not None
            request.transport.close()  # the connection drops midway, Content-Length unmet
            return resp
        await resp.write_eof()
        return resp
