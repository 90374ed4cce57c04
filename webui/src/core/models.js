// @ts-check
// What the UI knows about the gateway's models: lookups by id or alias, their state
// (from /health, else /v1/models), which one a chat uses. No DOM: unit-tested under Node.

/** @typedef {import('./types.js').Model} Model */
/** @typedef {import('./types.js').Health} Health */

/** @param {Model[]} models @param {string|null|undefined} id */
export function findModel(models, id) {
  if (!id) return null;
  return models.find((m) => m.id === id) || models.find((m) => (m.aliases || []).includes(id)) || null;
}

/** Chat-capable (the gateway may also list embedding models: task "embed"). @param {Model} m */
export const isChatModel = (m) => !m.task || m.task === 'generate' || m.task === 'chat';

/**
 * @param {Model[]} models
 * @param {Health|null} health
 * @param {string} id
 * @returns {{state: string, reason: string|null}}
 */
export function modelState(models, health, id) {
  const m = findModel(models, id);
  const key = m ? m.preset_of || m.id : id; // a preset runs on its base model's server
  const hm = health && health.models && health.models[key];
  if (hm && hm.state) return { state: hm.state, reason: hm.reason || null };
  if (m) return { state: m.state || 'ready', reason: m.state_reason || null };
  return { state: 'unknown', reason: null };
}

/**
 * The model a chat talks to: its own (while the list is unknown, or when it still
 * exists), else the one last picked, else the default, a ready one, or the first.
 * @param {{models: Model[], modelsLoaded: boolean, health: Health|null}} known
 * @param {string|null|undefined} chatModel
 * @param {string|null|undefined} lastPicked
 * @returns {string|null}
 */
export function chooseModel(known, chatModel, lastPicked) {
  const { models, modelsLoaded, health } = known;
  if (chatModel && (findModel(models, chatModel) || !modelsLoaded)) return chatModel;
  const last = findModel(models, lastPicked);
  if (last && isChatModel(last)) return last.id;
  const chat = models.filter(isChatModel);
  const d = chat.find((m) => m.default) || chat.find((m) => modelState(models, health, m.id).state === 'ready') || chat[0];
  if (d) return d.id;
  return chatModel || null;
}

/** @param {Model[]} models @param {string|null} id */
export function contextLimit(models, id) {
  const m = findModel(models, id);
  if (!m) return null;
  return m.context_limit || m.max_model_len || null;
}

export const STATE_LABEL = /** @type {Record<string, string>} */ ({
  ready: 'Ready', loading: 'Loading…', failed: 'Failed', unknown: 'Unknown', stopped: 'Stopped',
  sleeping: 'Sleeping', waking: 'Waking…',
});

/**
 * A load: on_demand model off its card (asleep, or its server stopped): available all the
 * same, the gateway brings it in when a request asks for it.
 * @param {string} state
 */
export const loadsOnUse = (state) => state === 'sleeping' || state === 'stopped';

/** Serving now, or will be when asked: nothing for the user to worry about. @param {string} state */
export const isAvailable = (state) => state === 'ready' || loadsOnUse(state);

/** A model's name as the picker lists it; one that loads on use with its state ("coder (sleeping)"). @param {string} id @param {string} state */
export const pickerLabel = (id, state) => (loadsOnUse(state) ? `${id} (${state})` : id);

/**
 * @typedef {object} Connection  What a successful health probe says.
 * @property {'ok'|'degraded'|'noready'} conn
 * @property {string} label  the indicator's text
 * @property {Record<string, string|undefined>} states  each model's state now
 * @property {boolean} cameReady  a model that was not ready at the previous probe is now
 * @property {string} ids  the models /health lists, sorted, comma-joined ('' when none)
 */

/**
 * @param {Health|null} health  GET /health
 * @param {boolean} ready  GET /ready said 200
 * @param {Record<string, string|undefined>} previous  each model's state at the previous probe
 * @returns {Connection}
 */
export function connectionOf(health, ready, previous) {
  const hm = (health && health.models) || {};
  const states = Object.values(hm).map((m) => (m && m.state) || 'unknown');
  const cameReady = Object.entries(hm).some(([k, m]) => m && m.state === 'ready' && previous[k] && previous[k] !== 'ready');
  const now = Object.fromEntries(Object.entries(hm).map(([k, m]) => [k, m && m.state]));
  const ids = Object.keys(hm).sort().join(',');
  if (!ready) return { conn: 'noready', label: states.includes('loading') ? 'Models loading…' : 'No model ready', states: now, cameReady, ids };
  const down = states.filter((s) => !isAvailable(s)).length;
  if (down) return { conn: 'degraded', label: `Connected · ${down} not ready`, states: now, cameReady, ids };
  return { conn: 'ok', label: 'Connected', states: now, cameReady, ids };
}
