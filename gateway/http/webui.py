"""Static WebUI routes for the gateway.

The WebUI is a prebuilt bundle (``webui/dist``: ``index.html`` plus content-hashed
files under ``assets/``). Everything is read into memory once at startup; each file
is kept raw and gzip-compressed (the build ships ``.gz`` twins, otherwise they are
made here), so serving is a dict lookup. Only aiohttp and the standard library.

Headers:
* ``/`` (index.html): ``Cache-Control: no-cache`` + ETag, so a new build is picked up.
* ``/assets/<hashed name>``: ``Cache-Control: public, max-age=31536000, immutable``.
* every response: a strict Content-Security-Policy (no inline script or style, no
  third-party origins), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import mimetypes
import pathlib
from dataclasses import dataclass

from aiohttp import web

from gateway.config.schema import Config
from gateway.http.middleware import add_public_get

__all__ = ["CSP", "SECURITY_HEADERS", "WEBUI", "Bundle", "add_webui_routes"]

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_REVALIDATE = "no-cache"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".map": "application/json",
}
# Not worth compressing (already compressed formats).
_NO_GZIP = {".png", ".ico", ".woff2", ".jpg", ".jpeg", ".webp", ".gz"}

_MISSING_PAGE = (
    "<!doctype html><meta charset=utf-8><title>LocalAI</title>"
    "<h1>LocalAI gateway</h1><p>The WebUI bundle was not found on this server "
    "(build it with <code>cd webui &amp;&amp; npm ci &amp;&amp; npm run build</code>). "
    "The OpenAI-compatible API is available under <code>/v1</code>.</p>"
)


@dataclass(frozen=True)
class _File:
    body: bytes
    gz: bytes | None
    content_type: str
    etag: str
    cache: str


def _content_type(path: pathlib.Path) -> str:
    ext = path.suffix.lower()
    if ext in _TYPES:
        return _TYPES[ext]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _load(root: pathlib.Path) -> dict[str, _File]:
    files: dict[str, _File] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix == ".gz" or path.name.startswith("."):
            continue
        rel = path.relative_to(root).as_posix()
        body = path.read_bytes()
        gz: bytes | None = None
        if path.suffix.lower() not in _NO_GZIP and len(body) > 256:
            twin = path.with_name(path.name + ".gz")
            if twin.is_file():
                gz = twin.read_bytes()
                # A stale twin from an older build must never be served.
                if gzip.decompress(gz) != body:
                    gz = None
            if gz is None:
                gz = gzip.compress(body, compresslevel=9, mtime=0)
            if len(gz) >= len(body):
                gz = None
        digest = hashlib.sha256(body).hexdigest()[:20]
        immutable = rel.startswith("assets/")
        files[rel] = _File(
            body=body,
            gz=gz,
            content_type=_content_type(path),
            etag=f'"{digest}"',
            cache=CACHE_IMMUTABLE if immutable else CACHE_REVALIDATE,
        )
    return files


def _accepts_gzip(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _etag_matches(request: web.Request, etag: str) -> bool:
    inm = request.headers.get("If-None-Match")
    if not inm:
        return False
    tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
    return "*" in tags or etag in tags


def _respond(request: web.Request, f: _File) -> web.Response:
    headers = dict(SECURITY_HEADERS)
    headers["Cache-Control"] = f.cache
    headers["ETag"] = f.etag
    if f.gz is not None:
        headers["Vary"] = "Accept-Encoding"
    if _etag_matches(request, f.etag):
        return web.Response(status=304, headers=headers)
    body = f.body
    if f.gz is not None and _accepts_gzip(request):
        body = f.gz
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = f.content_type
    return web.Response(body=body, headers=headers)


class Bundle:
    """The WebUI's files, read into memory; load() again picks up a new build (reload)."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.files: dict[str, _File] = {}
        self.index = _File(body=_MISSING_PAGE.encode(), gz=None, content_type="text/html; charset=utf-8",
                           etag='"missing"', cache=CACHE_REVALIDATE)

    def load(self) -> None:
        files = _load(self.root) if self.root.is_dir() else {}
        index = files.get("index.html")
        if index is None:
            # At start: a placeholder page. On reload (a build half copied?): the build it had.
            log.warning("WebUI bundle not found in %s; / serves %s", self.root,
                        "the build loaded before" if self.files else "a placeholder page")
            return
        log.info("WebUI: %d files from %s", len(files), self.root)
        # Two assignments, no await between them: a request sees the old build or the new one.
        self.files, self.index = files, index

    def apply(self, old: Config, new: Config) -> list[str]:
        """A reload (a Holder): a new build in the same folder is served from now (a new folder,
        or the WebUI switched off, needs a restart: plan/restart.py's "gateway" part says so)."""
        self.load()
        return []


WEBUI = web.AppKey("webui", Bundle)


def add_webui_routes(app: web.Application, root: pathlib.Path) -> None:
    """Register ``GET /`` and ``GET /assets/{name}`` serving the built WebUI in *root*.

    No authentication: the page holds no data; the API key is entered in the browser.
    A missing bundle is logged and answered with a short explanatory page rather
    than failing the gateway start.
    """
    bundle = app[WEBUI] = Bundle(root)
    bundle.load()

    async def serve_index(request: web.Request) -> web.StreamResponse:
        return _respond(request, bundle.index)

    async def serve_asset(request: web.Request) -> web.StreamResponse:
        f = bundle.files.get("assets/" + request.match_info["name"])
        if f is None:
            raise web.HTTPNotFound(headers=SECURITY_HEADERS)
        return _respond(request, f)

    add_public_get(app, "/", serve_index)
    add_public_get(app, "/index.html", serve_index)
    add_public_get(app, "/assets/{name:[A-Za-z0-9._-]+}", serve_asset)
