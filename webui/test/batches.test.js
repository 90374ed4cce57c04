// The usage panel's "My batches" without the DOM: GET /v1/batches (OpenAI's Batch objects,
// as docs/batch.md has them) turned into rows (progress, status, age, which buttons apply);
// the requests (the key in a header, never in a URL); and what a 404 means (no Batch API).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { anyMoving, batchRow, batchRows, batchesError, batchesOff, downloadName, shortId, timeAgo } from '../src/core/batches.js';
import { cancelBatch, fileContent, listBatches } from '../src/core/gateway.js';
import { ApiError } from '../src/core/http.js';

const realFetch = globalThis.fetch;
afterEach(() => { globalThis.fetch = realFetch; });

const NOW = Date.UTC(2026, 11, 6, 16, 0, 0);
const SEC = NOW / 1000;

/** A batch as GET /v1/batches lists it. */
function batch(id, status, created, counts = [3, 0, 0], files = {}) {
  const [total, completed, failed] = counts;
  return {
    id, object: 'batch', endpoint: '/v1/chat/completions', errors: null, input_file_id: 'file-in', completion_window: '24h',
    status, output_file_id: null, error_file_id: null, created_at: created, request_counts: { total, completed, failed },
    metadata: null, ...files,
  };
}

test('a row: progress counts answered and failed requests of the total; the status is OpenAI\'s name', () => {
  const r = batchRow(batch('batch-0123456789abcdef01234567', 'in_progress', SEC - 300, [3, 1, 1]), NOW);
  assert.equal(r.short, 'batch-…01234567');
  assert.equal(r.status, 'in_progress');
  assert.match(r.meaning, /running/);
  assert.equal(r.level, 'run');
  assert.equal(Math.round(r.fraction * 100), 67);
  assert.equal(r.progress, '2 of 3 · 1 failed');
  assert.equal(r.created, '5 min ago');
  assert.equal(r.createdAt, new Date((SEC - 300) * 1000).toISOString());
  assert.equal(r.canCancel, true);
  assert.equal(r.outputFileId, null);
});

test('which actions apply: Cancel while validating or in progress; the files once written', () => {
  const cancellable = ['validating', 'in_progress', 'finalizing', 'completed', 'failed', 'cancelling', 'cancelled', 'expired']
    .filter((s) => batchRow(batch('b', s, SEC), NOW).canCancel);
  assert.deepEqual(cancellable, ['validating', 'in_progress']);
  const done = batchRow(batch('b', 'completed', SEC, [3, 2, 1], { output_file_id: 'file-out', error_file_id: 'file-err' }), NOW);
  assert.deepEqual([done.outputFileId, done.errorFileId, done.fraction, done.level], ['file-out', 'file-err', 1, 'warn']);
  assert.equal(batchRow(batch('b', 'completed', SEC, [3, 3, 0]), NOW).level, 'ok');
  assert.equal(batchRow(batch('b', 'cancelled', SEC, [3, 1, 0]), NOW).level, 'off');
  assert.equal(batchRow(batch('b', 'expired', SEC), NOW).level, 'bad');
});

test('before validation counts nothing, the bar has no value; a failed batch says why', () => {
  const v = batchRow(batch('b', 'validating', SEC, [0, 0, 0]), NOW);
  assert.deepEqual([v.fraction, v.progress, v.problem], [null, '—', null]);
  const failed = batch('b', 'failed', SEC, [0, 0, 0]);
  failed.errors = { object: 'list', data: [
    { code: 'invalid_model', message: "Model 'nope' does not exist.", line: 2 },
    { code: 'duplicate_custom_id', message: 'custom_id seen before', line: 3 },
  ] };
  const r = batchRow(failed, NOW);
  assert.equal(r.problem, "Line 2: Model 'nope' does not exist. (and 1 more)");
  assert.equal(r.level, 'bad');
});

test('rows are newest first, the gateway\'s order kept within a second; followed while one is not finished', () => {
  const list = [batch('batch-a', 'completed', SEC - 7200), batch('batch-b', 'cancelling', SEC - 20), batch('batch-c', 'in_progress', SEC - 20)];
  assert.deepEqual(batchRows(list, NOW).map((r) => r.id), ['batch-b', 'batch-c', 'batch-a']);
  assert.equal(anyMoving(list), true);
  assert.equal(anyMoving([batch('x', 'finalizing', SEC)]), true);
  assert.equal(anyMoving([batch('x', 'completed', SEC), batch('y', 'cancelled', SEC), batch('z', 'failed', SEC)]), false);
  assert.equal(anyMoving([]), false);
});

test('ages and names as the section words them', () => {
  assert.deepEqual([2, 42, 300, 3 * 3600 + 50, 2 * 86400 + 5, -30].map((s) => timeAgo(SEC - s, NOW)),
    ['just now', '42 s ago', '5 min ago', '3 h ago', '2 d ago', 'just now']);
  assert.equal(shortId('batch-abc'), 'batch-abc');
  assert.equal(downloadName('batch-1', 'errors'), 'batch-1-errors.jsonl');
});

test('a 404 (batch_disabled, or no such route) turns the section off; other failures are worded', () => {
  assert.equal(batchesOff(new ApiError(404, { code: 'batch_disabled', message: 'off' })), true);
  assert.equal(batchesOff(new ApiError(500, {})), false);
  assert.equal(batchesOff(new TypeError('Failed to fetch')), false);
  assert.equal(batchesError(new ApiError(401, {})), 'The gateway did not accept your API key.');
  assert.equal(batchesError(new ApiError(500, { message: 'boom' })), 'Could not load your batches (HTTP 500): boom');
  assert.match(batchesError(new TypeError('Failed to fetch')), /Can't reach/);
});

test('the requests: the list, a cancel, a file\'s content, each with the key in its header', async () => {
  const asked = [];
  globalThis.fetch = async (url, init) => {
    asked.push(`${init.method || 'GET'} ${url} ${init.headers.Authorization}`);
    if (url.startsWith('v1/batches?')) return new Response(JSON.stringify({ object: 'list', data: [batch('b1', 'completed', SEC)], has_more: true }));
    if (url.endsWith('/cancel')) return new Response(JSON.stringify(batch('b 2', 'cancelling', SEC)));
    return new Response('{"a":1}\n{"a":2}\n');
  };
  const list = await listBatches('sk-k', 20);
  assert.deepEqual([list.data.map((b) => b.id), list.has_more], [['b1'], true]);
  assert.equal((await cancelBatch('sk-k', 'b 2')).status, 'cancelling');
  assert.equal(await (await fileContent('sk-k', 'file-out')).text(), '{"a":1}\n{"a":2}\n');
  assert.deepEqual(asked, [
    'GET v1/batches?limit=20 Bearer sk-k',
    'POST v1/batches/b%202/cancel Bearer sk-k',
    'GET v1/files/file-out/content Bearer sk-k',
  ]);
  globalThis.fetch = async () => new Response(JSON.stringify({ error: { message: 'off', code: 'batch_disabled' } }), { status: 404 });
  await assert.rejects(listBatches('sk-k', 20), (e) => e instanceof ApiError && e.status === 404 && e.code === 'batch_disabled');
  await assert.rejects(fileContent('sk-k', 'file-x'), (e) => e instanceof ApiError && e.status === 404);
});
