// One answer without the DOM: the request, retries against a real HTTP server, reading the stream, stats.
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { ApiError, NetworkError } from '../src/core/http.js';
import {
  AnswerClock, backoffSeconds, chatRequest, describeError, estimateTokens, everySecond, loadingModel, loadingText,
  readAnswer, retryPolicy, sendWithRetries,
} from '../src/core/chat.js';

const msg = (role, content, extra = {}) => ({ id: `${role}-${content}`, role, content, created: 0, ...extra });
const conv = (messages, extra = {}) => ({ id: 'c', title: 't', created: 0, updated: 0, model: null, system: '', params: {}, messages, ...extra });

test('the request carries the system prompt, the turns with text, and the chat parameters', () => {
  const c = conv([msg('user', 'hi'), msg('assistant', '', { status: 'error' }), msg('user', 'again'), msg('assistant', 'streaming')],
    { system: 'be brief', params: { temperature: 0.5, max_tokens: 12 } });
  assert.deepEqual(chatRequest(c, 'coder', 3), {
    model: 'coder',
    messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hi' }, { role: 'user', content: 'again' }],
    stream: true,
    stream_options: { include_usage: true },
    temperature: 0.5,
    max_tokens: 12,
  });
  assert.deepEqual(Object.keys(chatRequest(conv([msg('user', 'x')], { system: '  ' }), 'm', 1)), ['model', 'messages', 'stream', 'stream_options']);
});

test('what is retried, how long it waits, and what the user is told', () => {
  const busy = new ApiError(429, { message: 'full' }, new Headers({ 'Retry-After': '5' }));
  const pol = retryPolicy(busy);
  assert.equal(pol.max, 6);
  assert.equal(backoffSeconds(pol, busy, 1), 5); // the gateway asked for more than 1 s
  assert.equal(backoffSeconds(pol, new ApiError(429), 4), 8); // doubling
  assert.equal(backoffSeconds(pol, new ApiError(429), 9), 30); // capped
  assert.equal(pol.text(5, 2, 6), 'The gateway is busy (queue full). Retrying in 5 s… (retry 2 of 6)');
  assert.equal(retryPolicy(new ApiError(503, { code: 'model_loading' })).max, 60);
  assert.equal(retryPolicy(new ApiError(502)).max, 4);
  assert.equal(retryPolicy(new NetworkError()).cap, 8);
  assert.equal(retryPolicy(new ApiError(400)), null);
  assert.equal(retryPolicy(new ApiError(401)), null);
});

test('failed answers are described for people', () => {
  assert.equal(describeError(new ApiError(401), 'm').status, 401);
  assert.match(describeError(new ApiError(404, { code: 'model_not_found' }), 'gone').title, /“gone” is not available/);
  const long = describeError(new ApiError(400, { message: 'too long', code: 'context_length_exceeded' }), 'm');
  assert.match(long.detail, /^Start a new chat.*too long \(context_length_exceeded\)$/);
  assert.equal(describeError(new NetworkError(), 'm').title, "Can't reach the gateway.");
  const withId = new ApiError(500, { message: 'boom' }, new Headers({ 'X-Request-ID': 'r1' }));
  assert.deepEqual(describeError(withId, 'm'), { title: 'Request failed (HTTP 500).', detail: 'boom request r1' });
});

test('a model that could not be brought in is described as such, from a status or a stream\'s error event', () => {
  // A stream's error event has the code but no status (sseChunks makes it a 500).
  const streamed = new ApiError(500, { message: "Model 'coder' is not available: start failed: no weights", code: 'model_unavailable' });
  assert.equal(describeError(streamed, 'coder').title, 'The model “coder” is unavailable.');
  assert.match(describeError(streamed, 'coder').detail, /no weights \(model_unavailable\)$/);
  const noRoom = new ApiError(503, { message: 'no room', code: 'queue_timeout' });
  assert.equal(describeError(noRoom, 'coder').title, 'The model “coder” could not be served in time.');
});

test('while the gateway loads the model: its name and the whole seconds since the request', () => {
  assert.equal(loadingModel('waiting for coder to load'), 'coder');
  assert.equal(loadingModel('keep-alive'), null);
  assert.equal(loadingText('coder', 4999), 'loading coder… 4 s');
  assert.equal(loadingText('coder', -3), 'loading coder… 0 s');
});

test('the loading counter ticks at each whole second after the request, until stopped', (t) => {
  mock.timers.enable({ apis: ['setTimeout'] });
  t.after(() => mock.timers.reset());
  let clock = 10300; // asked at 10000: 0.3 s ago
  const advance = (ms) => { clock += ms; mock.timers.tick(ms); };
  const seen = [];
  const stop = everySecond(10000, (ms) => seen.push(ms), () => clock);
  assert.deepEqual(seen, [300]);
  advance(699);
  assert.deepEqual(seen, [300]);
  advance(1);
  advance(1000);
  advance(1000);
  assert.deepEqual(seen, [300, 1000, 2000, 3000]);
  stop();
  advance(5000);
  assert.equal(seen.length, 4);
});

test('heartbeats before the first event report the model loading; the first event ends it', async () => {
  const body = ': waiting for coder to load\n\n: waiting for coder to load\n\n'
    + 'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
    + 'data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
  const m = msg('assistant', '');
  const calls = [];
  await readAnswer(new Response(body), m, new AnswerClock(), () => calls.push(`text:${m.content}`), (model) => calls.push(model));
  assert.deepEqual(calls, ['coder', 'coder', null, 'text:Hi']);
  const plain = [];
  await readAnswer(new Response(SSE), msg('assistant', ''), new AnswerClock(), () => {}, (model) => plain.push(model));
  assert.deepEqual(plain, []); // a resident model: no loading at all
});

/** A real HTTP server answering POSTs from a script of [status, body, headers]. */
async function scripted(replies) {
  const seen = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      seen.push(JSON.parse(body));
      const [status, text, headers] = replies.shift();
      res.writeHead(status, headers);
      res.end(text);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/v1/chat/completions`;
  return { url, seen, close: () => new Promise((r) => server.close(r)) };
}

const SSE = 'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
  + 'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}\n\n'
  + 'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
  + 'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
  + 'data: [DONE]\n\n';
const busy = [429, '{"error":{"message":"queue full","code":"queue_full"}}', { 'Content-Type': 'application/json', 'Retry-After': '30' }];

test('a busy gateway is retried; a waiting retry wakes early; then the answer is read', async (t) => {
  const srv = await scripted([busy, busy, [200, SSE, { 'Content-Type': 'text/event-stream', 'X-Request-ID': 'r9' }]]);
  t.after(srv.close);
  const waits = [];
  const wakers = new Set();
  const { resp } = await sendWithRetries({
    url: srv.url, body: { model: 'm' }, headers: {}, signal: new AbortController().signal, wakers,
    // The gateway asked for 30 s: the test stands in for "a model turned ready" and wakes the wait.
    onWait: (text) => { waits.push(text); if (text) queueMicrotask(() => { for (const w of wakers) w(); }); },
  });
  assert.equal(srv.seen.length, 3);
  // (shown when the wait starts, then each second of its countdown)
  assert.deepEqual([...new Set(waits.filter(Boolean).map((w) => w.replace(/in \d+ s/, 'in N s')))], [
    'The gateway is busy (queue full). Retrying in N s… (retry 1 of 6)',
    'The gateway is busy (queue full). Retrying in N s… (retry 2 of 6)',
  ]);
  assert.equal(waits.at(-1), null);
  assert.equal(wakers.size, 0);
  const m = msg('assistant', '');
  const clock = new AnswerClock();
  let painted = 0;
  await readAnswer(resp, m, clock, () => { painted++; });
  assert.equal(m.content, 'Hello');
  assert.equal(m.reasoning, 'hmm');
  assert.equal(m.finish, 'stop');
  assert.equal(painted, 3);
  assert.deepEqual(clock.usage, { prompt_tokens: 7, completion_tokens: 2 });
});

test('a client error is not retried', async (t) => {
  const srv = await scripted([[400, '{"error":{"message":"bad field","code":"invalid_value"}}', {}]]);
  t.after(srv.close);
  await assert.rejects(
    sendWithRetries({ url: srv.url, body: {}, headers: {}, signal: new AbortController().signal, wakers: new Set(), onWait: () => {} }),
    (e) => e instanceof ApiError && e.status === 400 && e.message === 'bad field',
  );
  assert.equal(srv.seen.length, 1);
});

test('Stop during a retry wait ends it with an AbortError', async (t) => {
  const srv = await scripted([busy]);
  t.after(srv.close);
  const ctrl = new AbortController();
  await assert.rejects(
    sendWithRetries({ url: srv.url, body: {}, headers: {}, signal: ctrl.signal, wakers: new Set(), onWait: (text) => { if (text) ctrl.abort(); } }),
    { name: 'AbortError' },
  );
  assert.equal(srv.seen.length, 1);
});

test('an unreachable gateway is retried five times, then reported as a network error', async () => {
  const server = createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/`;
  await new Promise((r) => server.close(r)); // nothing listens there now
  const wakers = new Set();
  let networkErrors = 0;
  await assert.rejects(
    sendWithRetries({
      url, body: {}, headers: {}, signal: new AbortController().signal, wakers,
      onWait: (text) => { if (text) queueMicrotask(() => { for (const w of wakers) w(); }); },
      onNetworkError: () => { networkErrors++; },
    }),
    (e) => e instanceof NetworkError,
  );
  assert.equal(networkErrors, 6);
});

test('stats: time to first token, speed after it, reported or counted tokens', () => {
  const clock = new AnswerClock(1000);
  assert.equal(clock.stats(1500), undefined); // nothing arrived
  for (let i = 0; i < 5; i++) clock.piece(1250 + i * 100);
  assert.deepEqual(clock.stats(2250), { ttft_ms: 250, tps: 4, prompt_tokens: null, completion_tokens: 5, estimated: true });
  clock.usage = { prompt_tokens: 10, completion_tokens: 11 };
  assert.deepEqual(clock.stats(2250), { ttft_ms: 250, tps: 10, prompt_tokens: 10, completion_tokens: 11, estimated: false });
  const short = new AnswerClock(0);
  short.piece(10);
  assert.equal(short.stats(20).tps, null); // too few tokens to tell a speed
});

test('the context estimate starts from the last reported usage', () => {
  const c = conv([msg('user', 'x'.repeat(40)), msg('assistant', 'y'.repeat(40), { stats: { prompt_tokens: 100, completion_tokens: 20, estimated: false } }), msg('user', 'z'.repeat(8))]);
  assert.equal(estimateTokens(c), 120 + 2 + 4);
  assert.equal(estimateTokens(c, 'abcd'), 120 + 2 + 4 + 1 + 4);
  assert.equal(estimateTokens(conv([msg('user', 'abcd')], { system: 'abcdefgh' })), 2 + 4 + 1 + 4);
});
