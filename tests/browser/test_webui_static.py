"""The WebUI bundle and gateway.http.webui's routes: headers, compression, caching, size.

These need no browser; they run with the rest of the unit tests.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from aiohttp import web

from gateway.http.webui import CSP, add_webui_routes

REPO = Path(__file__).resolve().parents[2]
WEBUI = REPO / "webui"
DIST = WEBUI / "dist"
FIRST_LOAD_BUDGET_GZ = 300 * 1024


def _index() -> str:
    return (DIST / "index.html").read_text()


def _first_load_assets() -> list[str]:
    """Paths the browser fetches on the first load: index.html and what it links."""
    html = _index()
    refs = re.findall(r'(?:src|href)="(assets/[^"]+)"', html)
    return ["index.html", *dict.fromkeys(refs)]


def test_bundle_is_committed_and_complete():
    html = _index()
    for rel in _first_load_assets():
        assert (DIST / rel).is_file(), rel
        assert (DIST / f"{rel}.gz").is_file(), f"{rel}.gz"
        assert gzip.decompress((DIST / f"{rel}.gz").read_bytes()) == (DIST / rel).read_bytes(), f"stale {rel}.gz"
    assert re.search(r'<script type="module" src="assets/app-[A-Z0-9]+\.js"></script>', html)
    assert re.search(r'<link rel="stylesheet" href="assets/app-[A-Z0-9]+\.css">', html)


def test_index_has_nothing_csp_would_block():
    html = _index()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and " style=" not in html, "inline style"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), "third-party origin"


def test_bundle_fetches_nothing_from_other_origins():
    js = next((DIST / "assets").glob("app-*.js")).read_text()
    # Library source comments/strings mention URLs; what matters is no loader of remote code.
    assert "import(" not in js.replace("import()", "")
    assert not re.search(r"""fetch\(\s*["'`]https?://""", js)
    css = next((DIST / "assets").glob("app-*.css")).read_text()
    assert "@import" not in css and "url(http" not in css


def test_first_load_under_budget():
    total = sum((DIST / f"{rel}.gz").stat().st_size for rel in _first_load_assets())
    print(f"first load: {total} bytes gzipped")
    assert total < FIRST_LOAD_BUDGET_GZ


def test_dependencies_are_pinned():
    pkg = json.loads((WEBUI / "package.json").read_text())
    deps = {**pkg.get("dependencies", {}), **pkg.get("devDependencies", {})}
    assert {"marked", "dompurify", "highlight.js", "esbuild"} <= deps.keys()
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned exactly: {version}"
    lock = json.loads((WEBUI / "package-lock.json").read_text())
    for name in deps:
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == deps[name]
        assert entry.get("integrity", "").startswith("sha512-")


@pytest.fixture
async def client(aiohttp_client):
    app = web.Application()
    add_webui_routes(app, DIST)
    return await aiohttp_client(app)


def _asset_paths() -> list[str]:
    return ["/" + rel for rel in _first_load_assets() if rel != "index.html"]


async def test_index_headers(client):
    r = await client.get("/", headers={"Accept-Encoding": "identity"})
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["Content-Security-Policy"] == CSP
    for directive in (
        "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
        "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'",
    ):
        assert directive in CSP
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "Content-Encoding" not in r.headers
    assert await r.text() == _index()


async def test_assets_are_immutable_and_gzipped(client):
    for path in _asset_paths():
        raw = (DIST / path[1:]).read_bytes()
        r = await client.get(path, headers={"Accept-Encoding": "gzip, deflate, br"}, auto_decompress=False)
        assert r.status == 200, path
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in r.headers
        body = await r.read()
        if len(raw) > 1024:
            assert r.headers.get("Content-Encoding") == "gzip", path
            assert r.headers["Vary"] == "Accept-Encoding"
            assert gzip.decompress(body) == raw
        else:
            assert gzip.decompress(body) == raw if r.headers.get("Content-Encoding") else body == raw
        ctype = r.headers["Content-Type"]
        if path.endswith(".js"):
            assert ctype == "text/javascript; charset=utf-8"
        elif path.endswith(".css"):
            assert ctype == "text/css; charset=utf-8"
        elif path.endswith(".svg"):
            assert ctype == "image/svg+xml"


async def test_gzip_only_when_accepted(client):
    js = next(p for p in _asset_paths() if p.endswith(".js"))
    r = await client.get(js, headers={"Accept-Encoding": "identity"}, auto_decompress=False)
    assert "Content-Encoding" not in r.headers
    assert await r.read() == (DIST / js[1:]).read_bytes()
    r = await client.get(js, headers={"Accept-Encoding": "gzip;q=0, br"}, auto_decompress=False)
    assert "Content-Encoding" not in r.headers


async def test_etag_revalidation(client):
    r = await client.get("/")
    etag = r.headers["ETag"]
    r2 = await client.get("/", headers={"If-None-Match": etag})
    assert r2.status == 304
    assert r2.headers["Cache-Control"] == "no-cache"


async def test_unknown_asset_404_and_no_traversal(client):
    assert (await client.get("/assets/nope.js")).status == 404
    assert (await client.get("/assets/..%2Findex.html")).status == 404
    assert (await client.get("/assets/../../pyproject.toml")).status == 404


async def test_missing_bundle_serves_placeholder(aiohttp_client, tmp_path):
    app = web.Application()
    add_webui_routes(app, tmp_path / "does-not-exist")
    client = await aiohttp_client(app)
    r = await client.get("/")
    assert r.status == 200
    assert "npm run build" in await r.text()
    assert r.headers["Content-Security-Policy"] == CSP


async def test_gz_made_at_startup_when_build_has_none(aiohttp_client, tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>x</title>" + "x" * 2000)
    (tmp_path / "assets" / "app-ABC.js").write_text("console.log(1);" * 200)
    # A stale .gz twin is ignored rather than served.
    (tmp_path / "assets" / "app-ABC.js.gz").write_bytes(gzip.compress(b"old"))
    app = web.Application()
    add_webui_routes(app, tmp_path)
    client = await aiohttp_client(app)
    r = await client.get("/assets/app-ABC.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert r.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await r.read()) == (tmp_path / "assets" / "app-ABC.js").read_bytes()


def test_committed_dist_matches_sources(tmp_path):
    """dist/ is what `npm run build` makes from src/ (`make test` runs `npm ci` in webui/ first)."""
    import os
    import shutil
    import subprocess

    node = shutil.which("node")
    assert node and (WEBUI / "node_modules" / "esbuild").is_dir(), "run `make webui-deps` (npm ci in webui/)"
    out = tmp_path / "dist"
    subprocess.run([node, "build.mjs"], cwd=WEBUI, env={**os.environ, "WEBUI_OUT": str(out)},
                   check=True, capture_output=True)
    built = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DIST).as_posix() for p in DIST.rglob("*") if p.is_file())
    assert built == committed, "webui/dist is stale: run `cd webui && npm run build` and commit dist/"
    for rel in built:
        assert (out / rel).read_bytes() == (DIST / rel).read_bytes(), rel
