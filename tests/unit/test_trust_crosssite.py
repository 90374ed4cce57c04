"""Issue 18, defect 10: cross-site requests.

A web page on any origin can make a teammate's browser POST text/plain, a form or an untyped
blob to the gateway without asking first (no CORS preflight). /v1 answers those 415; the
Ollama family /api now does too for any request from a browser (it carries an Origin), while
curl (`-d`: a form type, no Origin) and the Ollama clients (JSON) keep working."""

from __future__ import annotations

import aiohttp
import ollama
import pytest

from tests.fakebackend import FakeBackend
from tests.unit.test_ollama import assert_ollama_error

HI = [{"role": "user", "content": "hi"}]

GENERATE = b'{"model": "m", "prompt": "hi", "stream": false}'


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          None])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show", "/api/embed"])
async def test_a_web_page_cannot_post_to_the_ollama_api(stack, content_type, path):
    fake = FakeBackend(chunks=1)
    s = await stack({"m": fake})  # no keys: the page needs none, as in the report
    headers = {"Origin": "https://evil.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    # aiohttp adds application/octet-stream to bytes; a browser's fetch of a bare Blob sends none.
    data = GENERATE if content_type is not None else aiohttp.BytesPayload(GENERATE, content_type="")
    async with s.http.post(s.url + path, data=data, headers=headers, skip_auto_headers=["Content-Type"]) as r:
        assert r.status == 415, await r.text()
        assert_ollama_error(await r.json(), "Content-Type must be application/json")
    assert fake.received == []  # nothing reached (or woke) a model


async def test_ollama_clients_and_curl_still_post_to_the_ollama_api(stack):
    fake = FakeBackend(chunks=1)
    s = await stack({"m": fake})
    answer = await ollama.AsyncClient(host=s.url).chat(model="m", messages=HI)
    assert answer.done and answer.message.content
    async with s.http.post(s.url + "/api/generate", data=GENERATE,  # `curl -d`: a form type, no Origin
                           headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 200
    async with s.http.post(s.url + "/api/generate", data=GENERATE,  # the WebUI's own origin, JSON
                           headers={"Content-Type": "application/json", "Origin": s.url}) as r:
        assert r.status == 200
