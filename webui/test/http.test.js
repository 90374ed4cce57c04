// The gateway client's parsing: server-sent events, OpenAI-shaped errors, waits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError, abortableSleep, authHeaders, readError, sseChunks } from '../src/core/http.js';

/** A streaming Response whose body arrives in exactly these reads. */
function streamed(...reads) {
  const enc = new TextEncoder();
  return new Response(new ReadableStream({
    start(c) {
      for (const r of reads) c.enqueue(enc.encode(r));
      c.close();
    },
  }));
}

async function collect(resp) {
  const out = [];
  for await (const chunk of sseChunks(resp)) out.push(chunk);
  return out;
}

test('SSE events framed with LF or CRLF, split anywhere across reads', async () => {
  const resp = streamed('data: {"a":1}\n\nda', 'ta: {"a":2}\r\n\r\ndata:{"a"', ':3}\n\n');
  assert.deepEqual(await collect(resp), [{ a: 1 }, { a: 2 }, { a: 3 }]);
});

test('SSE stops at [DONE] and skips comments and lines that are not JSON', async () => {
  const resp = streamed(': keep-alive\n\ndata: not json\n\ndata: {"a":1}\n\ndata: [DONE]\n\ndata: {"a":2}\n\n');
  assert.deepEqual(await collect(resp), [{ a: 1 }]);
});

test('SSE comments (the gateway\'s heartbeats while a model loads) reach the comment callback', async () => {
  const resp = streamed(': waiting for coder to load\n\n: waiting for', ' coder to load\r\n\r\ndata: {"a":1}\n\n');
  const comments = [];
  const out = [];
  for await (const chunk of sseChunks(resp, (c) => comments.push(c))) out.push(chunk);
  assert.deepEqual(comments, ['waiting for coder to load', 'waiting for coder to load']);
  assert.deepEqual(out, [{ a: 1 }]);
});

test('an error event in the stream throws the gateway error', async () => {
  const resp = streamed('data: {"a":1}\n\ndata: {"error":{"message":"backend died","code":502,"type":"server_error"}}\n\n');
  const seen = [];
  await assert.rejects(async () => { for await (const c of sseChunks(resp)) seen.push(c); }, (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 502);
    assert.equal(e.message, 'backend died');
    return true;
  });
  assert.deepEqual(seen, [{ a: 1 }]);
});

test('readError reads the OpenAI error shape, Retry-After and the request id', async () => {
  const resp = new Response(JSON.stringify({ error: { message: 'queue full', type: 'rate_limit', code: 'queue_full' } }), {
    status: 429, headers: { 'Retry-After': '3', 'X-Request-ID': 'req-1' },
  });
  const e = await readError(resp);
  assert.equal(e.status, 429);
  assert.equal(e.message, 'queue full');
  assert.equal(e.code, 'queue_full');
  assert.equal(e.retryAfter, 3);
  assert.equal(e.requestId, 'req-1');
});

test('readError copes with a plain-text or string-error body', async () => {
  assert.equal((await readError(new Response('upstream exploded', { status: 500 }))).message, 'upstream exploded');
  assert.equal((await readError(new Response('{"error":"bad key"}', { status: 401 }))).message, 'bad key');
  assert.equal((await readError(new Response('', { status: 502, statusText: 'Bad Gateway' }))).message, 'Bad Gateway');
  assert.equal((await readError(new Response('x', { status: 503, headers: { 'Retry-After': 'soon' } }))).retryAfter, null);
});

test('authHeaders adds the key only when there is one', () => {
  assert.deepEqual(authHeaders('', { A: '1' }), { A: '1' });
  assert.deepEqual(authHeaders('sk-1', { A: '1' }), { A: '1', Authorization: 'Bearer sk-1' });
});

test('abortableSleep ends early with an AbortError when stopped', async () => {
  const ctrl = new AbortController();
  const t0 = Date.now();
  const p = abortableSleep(10_000, ctrl.signal);
  ctrl.abort();
  await assert.rejects(p, { name: 'AbortError' });
  assert.ok(Date.now() - t0 < 1000);
});

test('abortableSleep counts down whole seconds', async () => {
  const ticks = [];
  await abortableSleep(1200, undefined, (s) => ticks.push(s));
  assert.deepEqual(ticks.slice(0, 2), [2, 1]);
});
