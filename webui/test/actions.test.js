// The actions under Node: each changes the state through a named update that the
// views would hear, and saves what it should. The page's localStorage and fetch are
// stood in for; actions.js is imported once they are.
import { test, before, afterEach } from 'node:test';
import assert from 'node:assert/strict';

const storage = new Map();
globalThis.localStorage = /** @type {any} */ ({
  get length() { return storage.size; },
  key: (i) => [...storage.keys()][i] ?? null,
  getItem: (k) => (storage.has(k) ? storage.get(k) : null),
  setItem: (k, v) => { storage.set(k, String(v)); },
  removeItem: (k) => { storage.delete(k); },
});

/** @type {typeof import('../src/actions.js')} */
let actions;
/** @type {typeof import('../src/state.js')} */
let page;
before(async () => {
  page = await import('../src/state.js');
  actions = await import('../src/actions.js');
});

const realFetch = globalThis.fetch;
afterEach(() => { globalThis.fetch = realFetch; });

/** Record the updates (action name and keys) while *fn* runs. */
async function updatesOf(fn) {
  const seen = [];
  const keys = /** @type {any[]} */ (Object.keys(page.store.state));
  const stop = page.store.subscribe(keys, (_s, u) => seen.push(`${u.action}:${u.keys.join(',')}`));
  try { await fn(); } finally { stop(); }
  return seen;
}

const sse = (...events) => () => new Response(events.map((e) => `data: ${typeof e === 'string' ? e : JSON.stringify(e)}\n\n`).join(''), { status: 200 });
const json = (body, status = 200) => () => new Response(JSON.stringify(body), { status });

/** @param {Record<string, () => Response>} routes */
function standIn(routes) {
  globalThis.fetch = async (url) => {
    if (!routes[url]) throw new TypeError('Failed to fetch');
    return routes[url]();
  };
}

test('the model list: listed with the key, auth turns ok; a 401 asks for the key', async () => {
  standIn({ 'v1/models': json({ data: [{ id: 'coder', default: true }] }) });
  await actions.loadModels();
  assert.equal(page.store.state.auth, 'ok');
  assert.deepEqual(page.store.state.models.map((m) => m.id), ['coder']);
  standIn({ 'v1/models': json({ error: { message: 'no' } }, 401) });
  const seen = await updatesOf(() => actions.loadModels());
  assert.deepEqual(seen, ['modelsRefused:auth', 'askForKey:keyPrompt', 'listModels:models']);
  assert.equal(page.store.state.auth, 'missing');
  assert.equal(page.store.state.keyPrompt.message, 'This gateway needs an API key.');
  standIn({ 'v1/models': json({ data: [{ id: 'coder', default: true }] }) });
  await actions.loadModels();
});

test('a new chat, then a message sent: the turn, the saved list, the answer streamed and saved', async () => {
  actions.newChat();
  const conv = page.store.state.conv;
  assert.equal(page.store.state.navigated, 'new');
  assert.equal(conv.model, 'coder');
  standIn({
    'v1/chat/completions': sse({ choices: [{ delta: { content: 'Hel' } }] }, { choices: [{ delta: { content: 'lo' }, finish_reason: 'stop' }] }, '[DONE]'),
  });
  const seen = await updatesOf(async () => {
    actions.send('hi there');
    await new Promise((r) => setTimeout(r, 50));
  });
  assert.equal(seen[0], 'send:turn,chats,convRevision');
  assert.equal(seen[1], 'answerStarted:live,answer');
  assert.ok(seen.includes('answerGrew:answer'));
  assert.equal(seen.at(-1), 'answerEnded:live,answer,chats');
  assert.equal(conv.title, 'hi there');
  assert.deepEqual(conv.messages.map((m) => [m.role, m.content, m.status]), [['user', 'hi there', undefined], ['assistant', 'Hello', 'done']]);
  assert.equal(page.store.state.live.size, 0);
  assert.equal(page.chats.load(conv.id).messages[1].content, 'Hello');
  assert.deepEqual(page.store.state.chats.map((e) => e.id), [conv.id]);
});

test('a refused answer marks the key bad; regenerating drops it and answers again', async () => {
  const conv = page.store.state.conv;
  standIn({ 'v1/chat/completions': json({ error: { message: 'bad key' } }, 401) });
  await updatesOf(async () => {
    actions.regenerate();
    await new Promise((r) => setTimeout(r, 50));
  });
  assert.equal(page.store.state.auth, 'bad');
  assert.equal(conv.messages.at(-1).status, 'error');
  assert.equal(conv.messages.at(-1).error.status, 401);
  assert.equal(conv.messages.length, 2);
});

test('renaming, opening, routing and deleting go through named updates', async () => {
  const conv = page.store.state.conv;
  assert.deepEqual(await updatesOf(() => actions.renameChat(conv.id, 'Greeting')), ['renameChat:chats,convRevision']);
  assert.equal(page.chats.load(conv.id).title, 'Greeting');
  actions.newChat();
  assert.notEqual(page.store.state.conv, conv);
  actions.routeTo(`#/c/${conv.id}`);
  assert.equal(page.store.state.conv.id, conv.id);
  assert.deepEqual(await updatesOf(() => actions.openChat(conv.id)), ['openChat:navigated']);
  const seen = await updatesOf(() => actions.deleteChat(conv.id));
  assert.deepEqual(seen, ['deleteChat:chats', 'newChat:conv,navigated']);
  assert.equal(page.chats.has(conv.id), false);
  assert.deepEqual(await updatesOf(() => actions.openChat(conv.id)), ['notify:notice', 'newChat:conv,navigated']);
});

test('a chat\'s settings and model are saved once it is saved; the revision tells the views', () => {
  const before = page.store.state.convRevision;
  actions.saveChatSettings({ system: 'be brief', temperature: '5', maxTokens: '12.7' });
  const conv = page.store.state.conv;
  assert.equal(conv.system, 'be brief');
  assert.deepEqual(conv.params, { temperature: 2, max_tokens: 12 });
  assert.equal(page.chats.has(conv.id), false); // a new chat without messages is not saved
  actions.pickModel('other');
  assert.equal(conv.model, 'other');
  assert.equal(page.settings.get('model'), 'other');
  assert.equal(page.store.state.convRevision, before + 2);
});

test('usage: a key that is not an admin asks /v1/usage only; an admin key the team too', async () => {
  const quota = { limit: null, used: 0, remaining: null, resets_at: '2026-12-07T00:00:00Z' };
  const usage = (admin) => ({ key: admin ? 'boss' : 'alice', admin, since: '', expires: null, models: null,
    quota: { tokens_per_day: quota, tokens_per_month: quota }, totals: {}, by_model: [], by_day: [] });
  const asked = [];
  const routes = { 'v1/usage?since=30d': json(usage(false)) };
  globalThis.fetch = async (url) => {
    asked.push(url);
    if (!routes[url]) throw new TypeError('Failed to fetch');
    return routes[url]();
  };
  assert.deepEqual(await updatesOf(() => actions.loadUsage()), ['usageLoading:usage', 'usageLoaded:usage']);
  assert.deepEqual(asked, ['v1/usage?since=30d']);
  const u = page.store.state.usage;
  assert.equal(u.status, 'ok');
  assert.equal(u.mine.key, 'alice');
  assert.equal(u.team, null);

  routes['v1/usage?since=30d'] = json(usage(true));
  routes['v1/usage/team?since=30d'] = json({ since: '', totals: {}, by_key: [{ key: 'boss' }], by_model: [], by_day: [] });
  await actions.loadUsage();
  assert.deepEqual(page.store.state.usage.team.by_key, [{ key: 'boss' }]);

  // A failure keeps what was shown, with the reason; a 401 also tells the page the key is bad.
  routes['v1/usage?since=30d'] = json({ error: { message: 'bad key' } }, 401);
  assert.deepEqual(await updatesOf(() => actions.loadUsage()), ['usageLoading:usage', 'usageRefused:auth', 'usageFailed:usage']);
  assert.equal(page.store.state.usage.status, 'error');
  assert.equal(page.store.state.usage.error, 'The gateway did not accept your API key.');
  assert.equal(page.store.state.usage.mine.key, 'boss');
  // Another key's usage is not shown under this one.
  actions.forgetKey();
  assert.deepEqual(page.store.state.usage, page.NO_USAGE);
});

test('batches: followed while the panel is open and one runs; a 404 turns the section off', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const b = (status) => ({ id: 'batch-1', endpoint: '/v1/chat/completions', status, created_at: 1, output_file_id: null,
    error_file_id: null, errors: null, request_counts: { total: 3, completed: 1, failed: 0 } });
  let answer = json({ object: 'list', data: [b('in_progress')], has_more: false });
  let lists = 0;
  globalThis.fetch = async (url, init) => {
    if (url === 'v1/batches/batch-1/cancel' && init.method === 'POST') {
      answer = json({ object: 'list', data: [b('cancelled')], has_more: false });
      return json(b('cancelling'))();
    }
    if (url !== 'v1/batches?limit=20') throw new TypeError('Failed to fetch');
    lists++;
    return answer();
  };
  assert.deepEqual(await updatesOf(() => actions.watchBatches(true)), ['batchesLoading:batches', 'batchesLoaded:batches']);
  assert.equal(page.store.state.batches.list[0].status, 'in_progress');
  t.mock.timers.tick(3000); // it runs: asked again
  await new Promise((r) => setImmediate(r));
  assert.equal(lists, 2);
  await actions.cancelBatch('batch-1');
  assert.equal(page.store.state.batches.list[0].status, 'cancelled');
  t.mock.timers.tick(30000); // nothing runs: not asked again
  await new Promise((r) => setImmediate(r));
  assert.equal(lists, 3);

  answer = json({ object: 'list', data: [b('in_progress')], has_more: false });
  await actions.loadBatches();
  await actions.watchBatches(false); // the panel closed: no more asking
  t.mock.timers.tick(30000);
  await new Promise((r) => setImmediate(r));
  assert.equal(lists, 4);

  answer = json({ error: { message: 'off', code: 'batch_disabled' } }, 404);
  assert.deepEqual(await updatesOf(() => actions.loadBatches()), ['batchesLoading:batches', 'batchesOff:batches']);
  assert.equal(page.store.state.batches.status, 'off');
  actions.forgetKey();
  assert.deepEqual(page.store.state.batches, page.NO_BATCHES);
});
