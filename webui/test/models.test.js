// Model lookups, states and the model a chat uses; how numbers and dates are worded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseModel, contextLimit, findModel, isAvailable, isChatModel, loadsOnUse, modelState, pickerLabel } from '../src/core/models.js';
import { dayGroup, fmtInt, fmtK, fmtStats } from '../src/core/format.js';

const models = [
  { id: 'coder', aliases: ['dev'], context_limit: 1536, max_model_len: 2048 },
  { id: 'coder-precise', preset_of: 'coder', max_model_len: 2048 },
  { id: 'embed', task: 'embed' },
  { id: 'chat', default: true, state: 'loading', state_reason: 'warming up' },
];

test('models are found by id or alias; embedding models are not chat models', () => {
  assert.equal(findModel(models, 'dev').id, 'coder');
  assert.equal(findModel(models, 'nope'), null);
  assert.equal(isChatModel(models[2]), false);
  assert.equal(contextLimit(models, 'coder'), 1536);
  assert.equal(contextLimit(models, 'coder-precise'), 2048);
});

test('a model\'s state comes from /health (a preset: its base model\'s), else from the list', () => {
  const health = { models: { coder: { state: 'failed', reason: 'OOM' } } };
  assert.deepEqual(modelState(models, health, 'coder-precise'), { state: 'failed', reason: 'OOM' });
  assert.deepEqual(modelState(models, null, 'chat'), { state: 'loading', reason: 'warming up' });
  assert.deepEqual(modelState(models, null, 'coder'), { state: 'ready', reason: null });
  assert.deepEqual(modelState(models, null, 'ghost'), { state: 'unknown', reason: null });
});

test('a sleeping or stopped model is available and listed with its state; a failed one is not available', () => {
  assert.deepEqual(['ready', 'sleeping', 'stopped', 'waking', 'loading', 'failed'].map(isAvailable),
    [true, true, true, false, false, false]);
  assert.deepEqual(['sleeping', 'stopped', 'ready'].map(loadsOnUse), [true, true, false]);
  assert.equal(pickerLabel('coder', 'sleeping'), 'coder (sleeping)');
  assert.equal(pickerLabel('general', 'stopped'), 'general (stopped)');
  assert.equal(pickerLabel('coder', 'ready'), 'coder');
  assert.equal(pickerLabel('coder', 'failed'), 'coder'); // its reason is shown beside it instead
});

test('the chat\'s model, else the last picked, else the default', () => {
  const known = { models, modelsLoaded: true, health: null };
  assert.equal(chooseModel(known, 'coder-precise', 'chat'), 'coder-precise');
  assert.equal(chooseModel(known, 'deleted-model', 'dev'), 'coder');
  assert.equal(chooseModel(known, null, 'embed'), 'chat'); // not a chat model: the default instead
  assert.equal(chooseModel({ ...known, modelsLoaded: false }, 'deleted-model', null), 'deleted-model');
  assert.equal(chooseModel({ models: [], modelsLoaded: true, health: null }, 'x', null), 'x');
});

test('numbers and stats as the UI words them', () => {
  assert.equal(fmtInt(12345.6), '12,346');
  assert.deepEqual([fmtK(999), fmtK(1000), fmtK(1536), fmtK(32768)], ['999', '1k', '1.5k', '33k']);
  assert.equal(fmtStats({ ttft_ms: 250, tps: 12.34, prompt_tokens: 10, completion_tokens: 1200, estimated: false }),
    '0.25 s to first token · 12.3 tok/s · 10 prompt + 1,200 completion tokens');
  assert.equal(fmtStats({ ttft_ms: null, tps: null, prompt_tokens: null, completion_tokens: 7, estimated: true }), '≈7 tokens');
  assert.equal(fmtStats(undefined), '');
});

test('chats are grouped by day', () => {
  const now = new Date(2026, 10, 30, 15, 0);
  const at = (d, h = 12) => new Date(2026, 10, d, h).getTime();
  assert.equal(dayGroup(at(30, 1), now), 'Today');
  assert.equal(dayGroup(at(29, 23), now), 'Yesterday');
  assert.equal(dayGroup(at(24), now), 'Previous 7 days');
  assert.equal(dayGroup(at(2), now), 'Previous 30 days');
  assert.match(dayGroup(new Date(2025, 0, 5).getTime(), now), /2025/);
});
