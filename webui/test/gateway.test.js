// The requests to the gateway (with a stand-in fetch) and what a health probe says.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { listModels, probe, requestAnswer } from '../src/core/gateway.js';
import { ApiError } from '../src/core/http.js';
import { connectionOf } from '../src/core/models.js';

const realFetch = globalThis.fetch;
afterEach(() => { globalThis.fetch = realFetch; });

/**
 * Answer fetches from *routes* (url -> Response factory), recording each request.
 * @param {Record<string, () => Response>} routes
 */
function standIn(routes) {
  const calls = [];
  globalThis.fetch = async (url, init = {}) => {
    calls.push({ url, init });
    const route = routes[url];
    if (!route) throw new TypeError('Failed to fetch');
    return route();
  };
  return calls;
}

const json = (body, status = 200) => () => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

test('the model list is asked for with the key; a 401 is an ApiError', async () => {
  const calls = standIn({ 'v1/models': json({ data: [{ id: 'coder' }] }) });
  assert.deepEqual(await listModels('sk-1'), [{ id: 'coder' }]);
  assert.equal(calls[0].init.headers.Authorization, 'Bearer sk-1');
  standIn({ 'v1/models': json({ error: { message: 'bad key' } }, 401) });
  await assert.rejects(listModels('nope'), (e) => e instanceof ApiError && e.status === 401);
  standIn({ 'v1/models': json({ object: 'list' }) });
  assert.deepEqual(await listModels(''), []);
});

test('a probe reads /health and /ready; a 503 is an answer, another 5xx or no answer throws', async () => {
  const calls = standIn({ health: json({ models: { coder: { state: 'ready' } } }), ready: json({}, 200) });
  assert.deepEqual(await probe('sk-1'), { health: { models: { coder: { state: 'ready' } } }, ready: true });
  assert.equal(calls.find((c) => c.url === 'health').init.headers.Authorization, 'Bearer sk-1');
  assert.equal(calls.find((c) => c.url === 'ready').init.headers, undefined);
  standIn({ health: json({ models: {} }, 503), ready: json({}, 503) });
  assert.deepEqual(await probe(''), { health: { models: {} }, ready: false });
  standIn({ health: () => new Response('not json', { status: 200 }), ready: json({}) });
  assert.deepEqual(await probe(''), { health: null, ready: true });
  standIn({ health: json({}, 500), ready: json({}) });
  await assert.rejects(probe(''), /HTTP 500/);
  standIn({});
  await assert.rejects(probe(''), TypeError);
});

test('an answer is POSTed as a stream to /v1/chat/completions with the key', async () => {
  const calls = standIn({ 'v1/chat/completions': () => new Response('data: [DONE]\n\n', { status: 200 }) });
  const conv = { id: 'c', title: 't', created: 0, updated: 0, model: 'coder', system: 'be brief', params: { max_tokens: 5 },
    messages: [{ id: 'm', role: 'user', content: 'hi', created: 0 }] };
  const { resp } = await requestAnswer({
    conv, model: 'coder', upto: 1, key: 'sk-1', signal: new AbortController().signal, wakers: new Set(),
    onWait: () => {}, onNetworkError: () => {},
  });
  assert.equal(resp.status, 200);
  const { init } = calls[0];
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.Authorization, 'Bearer sk-1');
  assert.equal(init.headers.Accept, 'text/event-stream');
  const body = JSON.parse(init.body);
  assert.equal(body.stream, true);
  assert.equal(body.max_tokens, 5);
  assert.deepEqual(body.messages, [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hi' }]);
});

test('a probe\'s answer becomes the indicator: not ready, models down, or connected', () => {
  const health = (states) => ({ models: Object.fromEntries(Object.entries(states).map(([k, s]) => [k, { state: s }])) });
  assert.deepEqual(connectionOf(health({ a: 'loading' }), false, {}),
    { conn: 'noready', label: 'Models loading…', states: { a: 'loading' }, cameReady: false, ids: 'a' });
  assert.equal(connectionOf(null, false, {}).label, 'No model ready');
  const degraded = connectionOf(health({ b: 'ready', a: 'failed', c: 'sleeping' }), true, {});
  assert.equal(degraded.conn, 'degraded');
  assert.equal(degraded.label, 'Connected · 1 not ready');
  assert.equal(degraded.ids, 'a,b,c');
  assert.equal(connectionOf(health({ a: 'ready', c: 'stopped' }), true, {}).conn, 'ok');
});

test('a model that was known and not ready at the previous probe, and is ready now, came ready', () => {
  const now = { models: { a: { state: 'ready' }, b: { state: 'ready' } } };
  assert.equal(connectionOf(now, true, { a: 'loading' }).cameReady, true);
  assert.equal(connectionOf(now, true, { a: 'ready' }).cameReady, false);
  assert.equal(connectionOf(now, true, {}).cameReady, false); // first seen: nothing was waiting on it
});
