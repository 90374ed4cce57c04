// @ts-check
// What the page does, without drawing it: each action changes the state through a
// named store.update() (the views re-render from their subscriptions), saves the
// chats, and talks to the gateway through core/gateway.js.
import { ApiError } from './core/http.js';
import { cancelBatch as postCancel, fileContent, getTeamUsage, getUsage, listBatches, listModels, probe, requestAnswer } from './core/gateway.js';
import { BATCH_LIMIT, BATCH_POLL_MS, anyMoving, batchesError, batchesOff } from './core/batches.js';
import { USAGE_SINCE, usageError } from './core/usage.js';
import { connectionOf } from './core/models.js';
import { addUserTurn, dropLastAnswers, editUserMessage, msgId, newConversation } from './core/conversation.js';
import { readAnswer, AnswerClock, noteResponseHeaders, asRequestError, describeError, everySecond, loadingText } from './core/chat.js';
import { store, chats, settings, apiKey, currentModelId, NO_USAGE, NO_BATCHES } from './state.js';

/** @typedef {import('./core/types.js').Conversation} Conversation */
/** @typedef {import('./core/types.js').Message} Message */
/** @typedef {import('./state.js').AppState} AppState */
/** @typedef {import('./state.js').LiveAnswer} LiveAnswer */

const KEY_REJECTED = 'The gateway did not accept the saved API key. Enter a valid key.';
const KEY_NEEDED = 'This gateway needs an API key.';

/**
 * @param {string} text
 * @param {'info'|'ok'|'error'} [kind]
 * @param {number} [ms]
 */
export function notify(text, kind = 'info', ms = 3500) {
  store.update('notify', { notice: { text, kind, ms } });
}

/** Ask the user for the API key. @param {string} [message]  why */
export function askForKey(message = '') {
  store.update('askForKey', { keyPrompt: { message } });
}

/** Ask for the key with the reason the current auth state gives. */
export function askForKeyAsAuthSays() {
  askForKey(store.state.auth === 'bad' ? KEY_REJECTED : KEY_NEEDED);
}

// ---- the gateway: models and connection ----

export async function loadModels() {
  /** @type {Partial<AppState>} */
  const patch = {};
  try {
    patch.models = await listModels(apiKey());
    patch.modelsLoaded = true;
    if (store.state.auth !== 'ok') patch.auth = 'ok';
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      store.update('modelsRefused', { auth: apiKey() ? 'bad' : 'missing' });
      askForKeyAsAuthSays();
    } else if (e instanceof ApiError) {
      notify(`Could not load the model list: ${e.message}`, 'error');
    }
    // Network errors are reported by the connection indicator.
  }
  store.update('listModels', patch.models ? patch : { models: store.state.models });
}

const POLL_OK_MS = 5000;
const POLL_HIDDEN_MS = 30000;
// The poll's own bookkeeping: nothing is drawn from it.
/** @type {ReturnType<typeof setTimeout>|undefined} */
let pollTimer;
let failCount = 0;
/** @type {Record<string, string|undefined>} */
let previousStates = {};

/** @type {Set<() => void>} retry waits that end early when a model turns ready / the gateway is back */
const wakers = new Set();

/** Probe the gateway now (and again later: sooner while it is down). */
export async function poll() {
  clearTimeout(pollTimer);
  let next = document.hidden ? POLL_HIDDEN_MS : POLL_OK_MS;
  const wasDown = store.state.conn === 'down';
  try {
    const { health, ready } = await probe(apiKey());
    failCount = 0;
    const c = connectionOf(health, ready, previousStates);
    previousStates = c.states;
    if (wasDown || c.cameReady) for (const w of [...wakers]) w();
    store.update('probed', { health, conn: c.conn, connLabel: c.label });
    // Reload the model list when the gateway's set of models changed.
    const known = store.state.models.map((m) => m.id).sort().join(',');
    const auth = store.state.auth;
    if (wasDown || (auth !== 'bad' && auth !== 'missing' && c.ids && c.ids !== known)) await loadModels();
    if (wasDown) notify('Reconnected to the gateway.', 'ok');
  } catch {
    failCount++;
    next = Math.min(8000, 1000 * 2 ** Math.min(failCount - 1, 3));
    store.update('probeFailed', { conn: 'down', nextPollAt: Date.now() + next });
  }
  pollTimer = setTimeout(poll, next);
}

// ---- the API key ----

/**
 * Save *key* ('' forgets it) if the gateway takes it; false when it answered 401.
 * @param {string} key
 */
export async function saveKey(key) {
  settings.set('apiKey', key || null);
  try {
    await listModels(apiKey());
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      store.update('keyRefused', { auth: key ? 'bad' : 'missing' });
      return false;
    }
  }
  return true;
}

/** After a new key: list the models with it (that sets auth). */
export async function reloadWithKey() {
  store.update('keyChanged', { auth: 'unknown', usage: NO_USAGE, batches: NO_BATCHES }); // what was shown was the old key's
  await loadModels();
}

export function forgetKey() {
  settings.set('apiKey', null);
  store.update('keyForgotten', { usage: NO_USAGE, batches: NO_BATCHES });
}

// ---- usage and budgets ----

/**
 * Fetch the key's usage and budgets, and the team's for an admin key (a key that is
 * not one is not sent to /v1/usage/team: it would only be refused). A failure keeps
 * what was shown, with the reason.
 */
export async function loadUsage() {
  store.update('usageLoading', { usage: { ...store.state.usage, status: 'loading' } });
  try {
    const mine = await getUsage(apiKey(), USAGE_SINCE);
    const team = mine.admin ? await getTeamUsage(apiKey(), USAGE_SINCE) : null;
    store.update('usageLoaded', { usage: { status: 'ok', mine, team, error: null, at: Date.now() } });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) store.update('usageRefused', { auth: apiKey() ? 'bad' : 'missing' });
    store.update('usageFailed', { usage: { ...store.state.usage, status: 'error', error: usageError(e) } });
  }
}

// ---- batch jobs (the usage panel's "My batches") ----

// The watch's own bookkeeping: nothing is drawn from it.
let watchingBatches = false;
/** @type {ReturnType<typeof setTimeout>|undefined} */
let batchTimer;

/**
 * Fetch the key's newest batches; while the panel watches them (watchBatches) and one of
 * them is not finished, again in BATCH_POLL_MS. A 404 (no Batch API on this gateway)
 * turns the section off; another failure keeps what was shown, with the reason.
 */
export async function loadBatches() {
  clearTimeout(batchTimer);
  store.update('batchesLoading', { batches: { ...store.state.batches, status: 'loading' } });
  try {
    const { data, has_more } = await listBatches(apiKey(), BATCH_LIMIT);
    store.update('batchesLoaded', { batches: { status: 'ok', list: data, more: has_more, error: null, at: Date.now() } });
  } catch (e) {
    if (batchesOff(e)) {
      store.update('batchesOff', { batches: { ...NO_BATCHES, status: 'off' } });
      return;
    }
    if (e instanceof ApiError && e.status === 401) store.update('batchesRefused', { auth: apiKey() ? 'bad' : 'missing' });
    store.update('batchesFailed', { batches: { ...store.state.batches, status: 'error', error: batchesError(e) } });
  }
  const b = store.state.batches;
  if (watchingBatches && b.status === 'ok' && anyMoving(b.list)) {
    clearTimeout(batchTimer); // a load that overlapped this one (a Cancel's) may have set one
    batchTimer = setTimeout(loadBatches, BATCH_POLL_MS);
  }
}

/** The panel opened (true: list the batches now, and follow them) or closed (false: stop asking). @param {boolean} on */
export function watchBatches(on) {
  watchingBatches = on;
  clearTimeout(batchTimer);
  if (on) return loadBatches();
  return Promise.resolve();
}

/** Cancel batch *id*, then list again (it shows cancelling, then cancelled). @param {string} id */
export async function cancelBatch(id) {
  try {
    await postCancel(apiKey(), id);
  } catch (e) {
    notify(e instanceof ApiError ? `Could not cancel the batch: ${e.message}` : "Can't reach the gateway.", 'error');
  }
  await loadBatches();
}

/**
 * An output or error file's content, for the view to save; null (with a notice) when it
 * could not be fetched.
 * @param {string} fileId
 * @returns {Promise<Blob|null>}
 */
export async function batchFile(fileId) {
  try {
    return await fileContent(apiKey(), fileId);
  } catch (e) {
    notify(e instanceof ApiError ? `Could not download the file: ${e.message}` : "Can't reach the gateway.", 'error');
    return null;
  }
}

// ---- settings ----

const THEMES = ['system', 'light', 'dark'];

/** Switch to the next theme; returns it. */
export function cycleTheme() {
  const t = settings.get('theme', 'system');
  const next = THEMES[(THEMES.indexOf(t) + 1) % THEMES.length];
  settings.set('theme', next);
  return next;
}

/** @param {boolean} open */
export function rememberSidebar(open) {
  settings.set('sidebar', open);
}

// ---- which chat is on screen ----

export function newChat() {
  store.update('newChat', { conv: newConversation(currentModelId()), navigated: 'new' });
}

/** @param {string} id */
export function openChat(id) {
  const shown = store.state.conv;
  if (shown && shown.id === id) {
    store.update('openChat', { navigated: 'open' });
    return;
  }
  const live = store.state.live.get(id);
  const conv = live ? live.conv : chats.load(id);
  if (!conv) {
    notify('That chat no longer exists.', 'error');
    newChat();
    return;
  }
  for (const m of conv.messages) if (m.status === 'streaming' && !live) m.status = 'stopped';
  store.update('openChat', { conv, navigated: 'open' });
}

/** Show the chat the URL names (#/c/<id>), else keep the one on screen, else a new one. @param {string} hash */
export function routeTo(hash) {
  const m = /^#\/c\/([\w-]+)$/.exec(hash);
  if (m && chats.has(m[1])) openChat(m[1]);
  else if (!store.state.conv || (m && !chats.has(m[1]))) newChat();
}

/** @param {string} id */
export function pickModel(id) {
  const conv = store.state.conv;
  if (!conv) return;
  conv.model = id;
  settings.set('model', id);
  if (chats.has(conv.id)) chats.save(conv, { touch: false });
  store.update('pickModel', { convRevision: store.state.convRevision + 1 });
}

/**
 * The chat dialog's fields, as typed.
 * @param {{system: string, temperature: string, maxTokens: string}} f
 */
export function saveChatSettings(f) {
  const c = store.state.conv;
  if (!c) return;
  c.system = f.system;
  const t = f.temperature.trim();
  const mt = f.maxTokens.trim();
  c.params = {};
  if (t !== '' && !Number.isNaN(Number(t))) c.params.temperature = Math.max(0, Math.min(2, Number(t)));
  if (mt !== '' && Number(mt) > 0) c.params.max_tokens = Math.floor(Number(mt));
  if (c.messages.length || chats.has(c.id)) chats.save(c, { touch: false });
  store.update('saveChatSettings', { convRevision: store.state.convRevision + 1 });
}

// ---- the saved chats ----

/** @param {string} id @param {string} title */
export function renameChat(id, title) {
  const shown = store.state.conv;
  const onScreen = !!shown && shown.id === id;
  const conv = onScreen ? shown : chats.load(id);
  if (!conv) return;
  conv.title = title;
  conv.renamed = true;
  chats.save(conv, { touch: false });
  store.update('renameChat', onScreen ? { chats: chats.list(), convRevision: store.state.convRevision + 1 } : { chats: chats.list() });
}

/** @param {string} id */
export function deleteChat(id) {
  const live = store.state.live.get(id);
  if (live) {
    live.conv.deleted = true; // the ending stream must not save it back
    live.ctrl.abort();
  }
  chats.remove(id);
  store.update('deleteChat', { chats: chats.list() });
  const shown = store.state.conv;
  if (shown && shown.id === id) newChat();
}

/** Import chats from a parsed export file; throws when it is not one. @param {unknown} data */
export function importChats(data) {
  const result = chats.importData(data);
  store.update('importChats', { chats: chats.list() });
  return result;
}

/** Another tab changed the saved chats (a `storage` event for *key*). @param {string} key */
export function chatsChangedElsewhere(key) {
  chats.reload();
  const shown = store.state.conv;
  if (shown && key === `localai.conv.${shown.id}` && !store.state.live.has(shown.id)) {
    const fresh = chats.load(shown.id);
    if (fresh) store.update('chatChangedElsewhere', { conv: fresh });
  }
  store.update('chatsChangedElsewhere', { chats: chats.list() });
}

// ---- answers ----

const SAVE_EVERY_MS = 3000;
// The page is going away: streams cut now end as "stopped", not as errors.
let unloading = false;

/** Send the user's *text* in the chat on screen and answer it. @param {string} text */
export function send(text) {
  const conv = store.state.conv;
  if (!conv) return;
  const { message, dropped } = addUserTurn(conv, text, currentModelId());
  chats.save(conv);
  store.update('send', { turn: { added: message, removed: dropped }, chats: chats.list(), convRevision: store.state.convRevision + 1 });
  generate(conv);
}

/** Answer the last user message of the chat on screen again. */
export function regenerate() {
  const conv = store.state.conv;
  if (!conv || store.state.live.has(conv.id)) return;
  const dropped = dropLastAnswers(conv);
  if (!dropped) return;
  chats.save(conv);
  store.update('regenerate', { turn: { added: null, removed: dropped } });
  generate(conv);
}

/**
 * Replace user message *m*'s text, forget what came after, and answer again. False
 * when *m* is no longer in the chat on screen.
 * @param {Message} m @param {string} text
 */
export function editAndResend(m, text) {
  const conv = store.state.conv;
  if (!conv) return false;
  const live = store.state.live.get(conv.id);
  if (live) live.ctrl.abort();
  if (!editUserMessage(conv, m, text)) return false;
  chats.save(conv);
  store.update('editMessage', { conv, chats: chats.list() });
  generate(conv);
  return true;
}

/** Stop the answer of the chat on screen; false when none is streaming. */
export function stopCurrent() {
  const conv = store.state.conv;
  const live = conv && store.state.live.get(conv.id);
  if (!live) return false;
  live.ctrl.abort();
  return true;
}

/** The page is going away: what is streaming is saved as stopped. */
export function pageUnloading() {
  unloading = true;
  for (const s of store.state.live.values()) {
    s.msg.status = 'stopped';
    chats.save(s.conv);
  }
}

/** @param {LiveAnswer} answer @param {'start'|'text'|'wait'|'truncated'|'end'} change */
const answerChanged = (answer, change) => ({ answer: { answer, change } });

/** @param {LiveAnswer} s @param {string|null} text */
function setWait(s, text) {
  s.wait = text;
  store.update('answerWaiting', answerChanged(s, 'wait'));
}

/** Answer the last message of *conv*. @param {Conversation} conv */
async function generate(conv) {
  const model = currentModelId();
  if (!model) {
    const auth = store.state.auth;
    notify(auth === 'ok' ? 'No model is available.' : 'Enter an API key first.', 'error');
    if (auth !== 'ok') askForKey();
    return;
  }
  const upto = conv.messages.length;
  /** @type {Message} */
  const msg = { id: msgId(), role: 'assistant', content: '', model, created: Date.now(), status: 'streaming' };
  conv.messages.push(msg);
  /** @type {LiveAnswer} */
  const s = { conv, msg, ctrl: new AbortController(), wait: null };
  const live = store.state.live;
  live.set(conv.id, s);
  store.update('answerStarted', { live, ...answerChanged(s, 'start') });

  /** @type {(() => void)|null} stops the "loading coder… 4 s" counter */
  let stopLoadingClock = null;
  /**
   * While the gateway brings the answer's model in (a sleeping or stopped one), the answer
   * says so with the seconds since it was asked: "loading coder… 4 s".
   * @param {string|null} loading  the model being loaded; null: it answers now
   * @param {number} since  performance.now() when the request went out
   */
  const showLoading = (loading, since) => {
    if (loading && !stopLoadingClock) {
      stopLoadingClock = everySecond(since, (ms) => setWait(s, loadingText(loading, ms)));
      poll(); // the picker shows it loading, not still asleep
    } else if (!loading && stopLoadingClock) {
      stopLoadingClock();
      stopLoadingClock = null;
      setWait(s, null);
      poll(); // it came in (or failed to): the picker shows its new state now
    }
  };

  let clock = new AnswerClock();
  let lastSave = Date.now();
  try {
    const { resp, sentAt } = await requestAnswer({
      conv, model, upto, key: apiKey(), signal: s.ctrl.signal, wakers,
      onWait: (text) => setWait(s, text),
      onNetworkError: () => { poll(); },
    });
    clock = new AnswerClock(sentAt);
    setWait(s, null);
    if (noteResponseHeaders(resp, msg) > 0) store.update('answerTruncated', answerChanged(s, 'truncated'));
    await readAnswer(resp, msg, clock, () => {
      store.update('answerGrew', answerChanged(s, 'text'));
      if (Date.now() - lastSave > SAVE_EVERY_MS && !conv.deleted) {
        lastSave = Date.now();
        chats.save(conv);
      }
    }, (loading) => showLoading(loading, sentAt));
    msg.status = 'done';
  } catch (e) {
    if ((e instanceof Error && e.name === 'AbortError') || unloading) msg.status = 'stopped';
    else {
      msg.status = 'error';
      const err = asRequestError(e);
      msg.error = describeError(err, model);
      if ('status' in err && err.status === 401) store.update('answerRefused', { auth: 'bad' });
      if ('status' in err && err.status === 404) loadModels();
    }
  }
  showLoading(null, 0);
  setWait(s, null);
  const stats = clock.stats();
  if (stats) msg.stats = stats;
  // An edit may already have started the next answer for this chat.
  if (live.get(conv.id) === s) live.delete(conv.id);
  if (!conv.deleted && conv.messages.includes(msg)) chats.save(conv);
  store.update('answerEnded', { live, ...answerChanged(s, 'end'), chats: chats.list() });
}
