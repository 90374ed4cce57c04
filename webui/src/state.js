// @ts-check
// The page's state, declared in one place: what the gateway told us, the chat on
// screen, the answers streaming, and the browser storage they are saved in.
// Views read it and subscribe to it; only actions.js changes it (store.update).
import { Store } from './core/store.js';
import { ChatStorage, Settings } from './core/storage.js';
import { chooseModel, contextLimit, modelState } from './core/models.js';

/** @typedef {import('./core/types.js').Model} Model */
/** @typedef {import('./core/types.js').Health} Health */
/** @typedef {import('./core/types.js').Conversation} Conversation */
/** @typedef {import('./core/types.js').ConversationSummary} ConversationSummary */
/** @typedef {import('./core/types.js').Message} Message */
/** @typedef {import('./core/types.js').MyUsage} MyUsage */
/** @typedef {import('./core/types.js').TeamUsage} TeamUsage */
/** @typedef {import('./core/types.js').Batch} Batch */

/**
 * @typedef {object} UsageState  What the usage panel last fetched.
 * @property {'idle'|'loading'|'ok'|'error'} status
 * @property {MyUsage|null} mine  GET /v1/usage
 * @property {TeamUsage|null} team  GET /v1/usage/team; null unless the key is an admin key
 * @property {string|null} error  why the last fetch failed
 * @property {number} at  Date.now() of the last answer
 */

/**
 * @typedef {object} BatchesState  What the usage panel's "My batches" section last fetched.
 * @property {'idle'|'loading'|'ok'|'error'|'off'} status  off: the gateway has no Batch API (the section is hidden)
 * @property {Batch[]} list  GET /v1/batches, the newest page
 * @property {boolean} more  the key has older batches than those listed
 * @property {string|null} error  why the last fetch failed
 * @property {number} at  Date.now() of the last answer
 */

/**
 * @typedef {object} LiveAnswer  An answer being generated.
 * @property {Conversation} conv
 * @property {Message} msg
 * @property {AbortController} ctrl  the user's Stop
 * @property {string|null} wait  what it says while waiting: a retry's countdown, "loading coder… 4 s"
 */

/**
 * @typedef {object} AppState
 * Each key is also what views subscribe to; an update names the keys it touched.
 * @property {Model[]} models  GET /v1/models
 * @property {boolean} modelsLoaded  the list was fetched at least once
 * @property {'unknown'|'ok'|'missing'|'bad'} auth  whether the gateway took our API key
 * @property {Health|null} health  GET /health
 * @property {'unknown'|'ok'|'degraded'|'noready'|'down'} conn  the connection indicator
 * @property {string} connLabel  its text while connected
 * @property {number} nextPollAt  Date.now() of the next probe while the gateway is down
 * @property {Conversation|null} conv  the chat on screen; updated when another one is shown or its messages were rebuilt
 * @property {number} convRevision  bumped when the chat on screen's title, model, system prompt or parameters change
 * @property {'new'|'open'|null} navigated  the user went to a new chat or opened one (the phone's sidebar closes)
 * @property {{added: Message|null, removed: Message[]}|null} turn  messages added to / removed from the end of the chat on screen
 * @property {ConversationSummary[]} chats  the saved chats, newest first (the sidebar)
 * @property {Map<string, LiveAnswer>} live  conversation id -> its answer being generated
 * @property {{answer: LiveAnswer, change: 'start'|'text'|'wait'|'truncated'|'end'}|null} answer  what last happened to an answer being generated
 * @property {{message: string}|null} keyPrompt  the API key is asked for, and why ('' when the user asked)
 * @property {{text: string, kind: 'info'|'ok'|'error', ms: number}|null} notice  a short notice to show
 * @property {UsageState} usage  the key's usage and budgets (and the team's, for an admin key)
 * @property {BatchesState} batches  the key's batch jobs
 */

/** @type {UsageState} no usage fetched (yet, or for the key now in use) */
export const NO_USAGE = { status: 'idle', mine: null, team: null, error: null, at: 0 };

/** @type {BatchesState} no batches fetched (yet, or for the key now in use) */
export const NO_BATCHES = { status: 'idle', list: [], more: false, error: null, at: 0 };

export const settings = new Settings(localStorage);

/** @type {AppState} */
const initialState = {
  models: [],
  modelsLoaded: false,
  auth: 'unknown',
  health: null,
  conn: 'unknown',
  connLabel: '',
  nextPollAt: 0,
  conv: null,
  convRevision: 0,
  navigated: null,
  turn: null,
  chats: [],
  live: new Map(),
  answer: null,
  keyPrompt: null,
  notice: null,
  usage: NO_USAGE,
  batches: NO_BATCHES,
};
export const store = new Store(initialState);

/** @param {unknown} e */
function storageMessage(e) {
  return e instanceof Error && e.name === 'QuotaExceededError'
    ? 'Browser storage is full: export and delete old chats to keep saving.'
    : 'Could not save to browser storage.';
}
export const chats = new ChatStorage(localStorage, (e) => {
  store.update('storageFailed', { notice: { text: storageMessage(e), kind: 'error', ms: 6000 } });
});
store.update('chatsLoaded', { chats: chats.list() });

/** The saved API key ('' when none). */
export function apiKey() {
  return settings.get('apiKey', '') || '';
}

/** The model the chat on screen talks to. */
export function currentModelId() {
  const s = store.state;
  return chooseModel(s, s.conv && s.conv.model, settings.get('model'));
}

/** @param {string} id */
export const stateOf = (id) => modelState(store.state.models, store.state.health, id);

/** @param {string|null} id */
export const contextLimitOf = (id) => contextLimit(store.state.models, id);

/** Whether the chat on screen has an answer streaming. */
export function answering() {
  const s = store.state;
  return !!s.conv && s.live.has(s.conv.id);
}
