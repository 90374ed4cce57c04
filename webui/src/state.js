// @ts-check
// The page's state, declared in one place: what the gateway told us, the chat on
// screen, the answers streaming, and the browser storage they are saved in.
import { ChatStorage, Settings } from './core/storage.js';
import { toast } from './view/toast.js';

/** @typedef {import('./core/types.js').Model} Model */
/** @typedef {import('./core/types.js').Health} Health */
/** @typedef {import('./core/types.js').Conversation} Conversation */
/** @typedef {import('./core/types.js').Message} Message */
/** @typedef {import('./view/thread.js').MessageView} MessageView */
/** @typedef {import('./markdown.js').StreamRenderer} StreamRenderer */

/**
 * @typedef {object} AppState
 * @property {Model[]} models  GET /v1/models
 * @property {boolean} modelsLoaded  the list was fetched at least once
 * @property {'unknown'|'ok'|'missing'|'bad'} auth  whether the gateway took our API key
 * @property {Health|null} health  GET /health
 * @property {Record<string, string|undefined>} prevStates  each model's state at the previous poll
 * @property {'unknown'|'ok'|'degraded'|'noready'|'down'} conn  the connection indicator
 * @property {number} failCount  polls failed in a row
 * @property {number} nextPollAt  Date.now() of the next poll while the gateway is down
 * @property {ReturnType<typeof setTimeout>|undefined} pollTimer
 * @property {Conversation|null} conv  the chat on screen
 * @property {boolean} stick  keep the thread scrolled to the bottom as answers grow
 * @property {boolean} unloading  the page is going away: streams cut now end as "stopped", not as errors
 */

/** @type {AppState} */
export const state = {
  models: [],
  modelsLoaded: false,
  auth: 'unknown',
  health: null,
  prevStates: {},
  conn: 'unknown',
  failCount: 0,
  nextPollAt: 0,
  pollTimer: undefined,
  conv: null,
  stick: true,
  unloading: false,
};

/**
 * @typedef {object} LiveAnswer  An answer being generated.
 * @property {Conversation} conv
 * @property {Message} msg
 * @property {AbortController} ctrl  the user's Stop
 * @property {MessageView|null} view  its view, while its chat is on screen
 * @property {StreamRenderer|null} renderer
 * @property {number} raf  the pending paint's animation frame, or 0
 * @property {(() => void)|null} loading  stops the "loading coder… 4 s" counter while its model loads
 */

/** @type {Map<string, LiveAnswer>} conversation id -> its answer being generated */
export const streams = new Map();

/** @type {Set<() => void>} retry waits that end early when a model turns ready / the gateway is back */
export const wakers = new Set();

export function wakeRetries() {
  for (const w of [...wakers]) w();
}

export const settings = new Settings(localStorage);

/** @param {unknown} e */
function storageMessage(e) {
  return e instanceof Error && e.name === 'QuotaExceededError'
    ? 'Browser storage is full: export and delete old chats to keep saving.'
    : 'Could not save to browser storage.';
}
export const chats = new ChatStorage(localStorage, (e) => toast(storageMessage(e), 'error', 6000));

/** The saved API key ('' when none). */
export function apiKey() {
  return settings.get('apiKey', '') || '';
}
