// The page's store: named updates, subscriptions by key, unsubscribing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Store } from '../src/core/store.js';

test('an update changes the state and calls the listeners of the keys it touched, in order', () => {
  const store = new Store({ a: 1, b: 'x', c: [] });
  const heard = [];
  store.subscribe(['a'], (s, u) => heard.push(['a', s.a, u.action, u.keys]));
  store.subscribe(['b', 'c'], (s, u) => heard.push(['bc', s.b, u.action, u.keys]));
  store.update('setA', { a: 2 });
  store.update('setBoth', { a: 3, b: 'y' });
  assert.equal(store.state.a, 3);
  assert.deepEqual(heard, [
    ['a', 2, 'setA', ['a']],
    ['a', 3, 'setBoth', ['a', 'b']],
    ['bc', 'y', 'setBoth', ['a', 'b']],
  ]);
});

test('a listener is called once per update however many of its keys it touched', () => {
  const store = new Store({ a: 1, b: 2 });
  let calls = 0;
  store.subscribe(['a', 'b'], () => calls++);
  store.update('both', { a: 5, b: 6 });
  assert.equal(calls, 1);
});

test('a key set to the same object still counts as changed (objects edited in place)', () => {
  const list = [1];
  const store = new Store({ list });
  let calls = 0;
  store.subscribe(['list'], () => calls++);
  list.push(2);
  store.update('grew', { list });
  assert.equal(calls, 1);
  assert.deepEqual(store.state.list, [1, 2]);
});

test('an update that touches none of its keys leaves a listener alone; unsubscribing stops it', () => {
  const store = new Store({ a: 1, b: 2 });
  let calls = 0;
  const stop = store.subscribe(['a'], () => calls++);
  store.update('other', { b: 3 });
  assert.equal(calls, 0);
  store.update('mine', { a: 2 });
  stop();
  store.update('mine', { a: 3 });
  assert.equal(calls, 1);
});

test('the store copies its initial state; a listener that updates is heard by the others at once', () => {
  const initial = { n: 0, doubled: 0 };
  const store = new Store(initial);
  store.subscribe(['n'], (s) => store.update('double', { doubled: s.n * 2 }));
  const seen = [];
  store.subscribe(['doubled'], (s) => seen.push(s.doubled));
  store.update('set', { n: 4 });
  assert.deepEqual(seen, [8]);
  assert.equal(initial.n, 0);
});

test('subscribing while an update is being heard takes effect at the next update', () => {
  const store = new Store({ a: 0 });
  const heard = [];
  store.subscribe(['a'], () => {
    heard.push('first');
    if (heard.length === 1) store.subscribe(['a'], () => heard.push('late'));
  });
  store.update('one', { a: 1 });
  assert.deepEqual(heard, ['first']);
  store.update('two', { a: 2 });
  assert.deepEqual(heard, ['first', 'first', 'late']);
});
