// Conversations and the browser storage they live in (a Map-backed Storage stands in for localStorage).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addUserTurn, dropLastAnswers, editUserMessage, newConversation, normalize, titleFrom } from '../src/core/conversation.js';
import { Settings, ChatStorage } from '../src/core/storage.js';

/** The Web Storage interface over a Map, optionally full after *quota* characters. */
class MemoryStorage {
  constructor(quota = Infinity) { this.map = new Map(); this.quota = quota; }
  get length() { return this.map.size; }
  key(i) { return [...this.map.keys()][i] ?? null; }
  getItem(k) { return this.map.has(k) ? this.map.get(k) : null; }
  setItem(k, v) {
    const used = [...this.map].reduce((n, [key, val]) => n + (key === k ? 0 : val.length), 0);
    if (used + String(v).length > this.quota) throw Object.assign(new Error('full'), { name: 'QuotaExceededError' });
    this.map.set(k, String(v));
  }
  removeItem(k) { this.map.delete(k); }
  clear() { this.map.clear(); }
}

const answer = (content, status = 'done') => ({ id: `a-${content}-${status}`, role: 'assistant', content, created: 0, status });

test('a chat is titled by its first user line, shortened', () => {
  assert.equal(titleFrom([]), 'New chat');
  assert.equal(titleFrom([{ id: '1', role: 'user', content: '  Hello\n  world', created: 0 }]), 'Hello');
  const long = titleFrom([{ id: '1', role: 'user', content: 'x'.repeat(60), created: 0 }]);
  assert.equal(long.length, 48);
  assert.ok(long.endsWith('…'));
});

test('a new turn replaces answers that failed or stopped before any text', () => {
  const c = newConversation(null);
  addUserTurn(c, 'first question', 'coder');
  c.messages.push(answer('', 'error'), answer('', 'stopped'));
  const { message, dropped } = addUserTurn(c, 'second', 'other');
  assert.equal(dropped.length, 2);
  assert.deepEqual(c.messages.map((m) => m.content), ['first question', 'second']);
  assert.equal(c.messages[1], message);
  assert.equal(c.model, 'coder'); // the chat keeps its model
  assert.equal(c.title, 'first question');
  c.messages.push(answer('partial', 'stopped'));
  assert.equal(addUserTurn(c, 'third', null).dropped.length, 0); // an answer with text stays
});

test('regenerate drops the answers after the last question; edit drops what follows', () => {
  const c = newConversation('m');
  const q1 = addUserTurn(c, 'one', null).message;
  c.messages.push(answer('A'));
  addUserTurn(c, 'two', null);
  c.messages.push(answer('B'), answer('C'));
  assert.deepEqual(dropLastAnswers(c).map((m) => m.content), ['B', 'C']);
  assert.deepEqual(c.messages.map((m) => m.content), ['one', 'A', 'two']);
  assert.equal(dropLastAnswers(newConversation(null)), null);
  assert.ok(editUserMessage(c, q1, 'uno'));
  assert.deepEqual(c.messages.map((m) => m.content), ['uno']);
  assert.equal(c.title, 'uno');
  assert.equal(editUserMessage(c, { ...q1 }, 'x'), false);
});

test('imports accept other clients\' {role, content} lists and never resume a stream', () => {
  const c = normalize({ messages: [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: [{ type: 'text', text: 'multi' }, { type: 'text', text: 'part' }] },
    { role: 'assistant', content: 'half', status: 'streaming', stats: { completion_tokens: 1 } },
    { role: 'tool', content: 'dropped' },
    null,
  ] });
  assert.equal(c.system, 'be brief');
  assert.deepEqual(c.messages.map((m) => [m.role, m.content, m.status]), [['user', 'multipart', undefined], ['assistant', 'half', 'stopped']]);
  assert.deepEqual(c.messages[1].stats, { completion_tokens: 1 });
  assert.equal(c.title, 'multipart');
  assert.equal(c.renamed, false);
  assert.match(c.id, /^[0-9a-f]{24}$/);
  assert.equal(normalize({ id: '../../etc', messages: [] }).id.includes('/'), false);
  assert.equal(normalize({ hello: 'world' }), null);
});

test('chat storage keeps an index newest first, survives losing it, and removes', () => {
  const storage = new MemoryStorage();
  const chats = new ChatStorage(storage);
  const a = newConversation('m');
  const b = newConversation('m');
  chats.save(a);
  b.updated = a.updated + 1;
  chats.save(b, { touch: false });
  assert.deepEqual(chats.list().map((e) => e.id), [b.id, a.id]);
  assert.equal(chats.load(a.id).id, a.id);
  storage.removeItem('localai.index');
  assert.deepEqual(new ChatStorage(storage).list().map((e) => e.id), [b.id, a.id]);
  chats.remove(a.id);
  assert.equal(chats.has(a.id), false);
  assert.equal(chats.load(a.id), null);
  assert.deepEqual(JSON.parse(storage.getItem('localai.index')).map((e) => e.id), [b.id]);
});

test('importing skips chats already present and renames colliding ids', () => {
  const chats = new ChatStorage(new MemoryStorage());
  const c = newConversation('m');
  addUserTurn(c, 'hello', null);
  chats.save(c);
  const exported = chats.exportAll();
  assert.equal(exported.format, 'localai-chats');
  assert.deepEqual(chats.importData(exported), { added: 0, skipped: 1 });
  const changed = JSON.parse(JSON.stringify(exported));
  changed.conversations[0].messages[0].content = 'different';
  assert.deepEqual(chats.importData(changed), { added: 1, skipped: 0 });
  assert.equal(chats.list().length, 2);
  assert.throws(() => chats.importData({ hello: 'world' }), /does not look like a LocalAI chat export/);
});

test('a full storage is reported, not thrown', () => {
  const errors = [];
  const chats = new ChatStorage(new MemoryStorage(50), (e) => errors.push(e.name));
  const c = newConversation('m');
  addUserTurn(c, 'x'.repeat(100), null);
  assert.equal(chats.save(c), false);
  assert.deepEqual(errors, ['QuotaExceededError']);
  assert.equal(chats.has(c.id), false);
});

test('settings are JSON under the localai. prefix; null removes', () => {
  const storage = new MemoryStorage();
  const settings = new Settings(storage);
  assert.equal(settings.get('theme', 'system'), 'system');
  settings.set('theme', 'dark');
  assert.equal(storage.getItem('localai.theme'), '"dark"');
  assert.equal(settings.get('theme'), 'dark');
  settings.set('theme', null);
  assert.equal(storage.getItem('localai.theme'), null);
  storage.setItem('localai.broken', '{nope');
  assert.equal(settings.get('broken', 1), 1);
});
