"""Fast tier: a backend's own error answer reaches the client as the backend gave it."""

from __future__ import annotations

from collections import deque

from tests.fakebackend import FakeBackend, ScriptedError


async def test_backend_error_keeps_its_status_body_and_retry_after(stack):
    # An upstream that rate-limits (an external OpenAI-compatible server) says when to come
    # back; a client that honours Retry-After must get the upstream's value, not a guess.
    fake = FakeBackend(errors=deque([ScriptedError(429, "rate_limited", 7)]))
    s = await stack({"m": fake})
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
        assert (await r.json())["error"]["code"] == "rate_limited"
    async with s.http.post(s.url + "/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200 and "Retry-After" not in r.headers  # the script is used up
