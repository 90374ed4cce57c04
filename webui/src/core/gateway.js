// @ts-check
// The requests the WebUI makes to the gateway: the model list, the health probes, a
// chat answer's stream. Paths are relative: the page is served by the gateway itself.
// No DOM: unit-tested under Node (with a stand-in fetch).
import { ApiError, authHeaders, getJSON, readError, withTimeout } from './http.js';
import { chatRequest, sendWithRetries } from './chat.js';

/** @typedef {import('./types.js').Model} Model */
/** @typedef {import('./types.js').Health} Health */
/** @typedef {import('./types.js').Conversation} Conversation */
/** @typedef {import('./types.js').MyUsage} MyUsage */
/** @typedef {import('./types.js').TeamUsage} TeamUsage */
/** @typedef {import('./types.js').Batch} Batch */
/** @typedef {import('./types.js').BatchList} BatchList */

const PROBE_TIMEOUT_MS = 5000;

/**
 * GET /v1/models with *key*; throws an ApiError (401: the key was not taken) or a
 * network error.
 * @param {string} key
 * @returns {Promise<Model[]>}
 */
export async function listModels(key) {
  const { data } = await getJSON('v1/models', { key });
  return Array.isArray(data.data) ? data.data : [];
}

/**
 * GET /health (with the key it also says why a model is down) and /ready together.
 * Throws when the gateway cannot be reached or fails (a 503 is an answer: not ready).
 * @param {string} key
 * @returns {Promise<{health: Health|null, ready: boolean}>}
 */
export async function probe(key) {
  const t = withTimeout(PROBE_TIMEOUT_MS);
  let hr;
  let rr;
  try {
    [hr, rr] = await Promise.all([
      fetch('health', { headers: authHeaders(key), cache: 'no-store', signal: t.signal }),
      fetch('ready', { cache: 'no-store', signal: t.signal }),
    ]);
  } finally {
    t.done();
  }
  if (hr.status >= 500 && hr.status !== 503) throw new Error(`HTTP ${hr.status}`);
  let health = null;
  try { health = await hr.json(); } catch { health = null; }
  return { health: health && typeof health === 'object' ? health : null, ready: rr.status === 200 };
}

/**
 * GET /v1/usage: the key's own usage since *since* ("30d") and its budgets. Throws an
 * ApiError (401: the key was not taken; 404: a gateway that keeps no usage) or a network error.
 * @param {string} key
 * @param {string} since
 * @returns {Promise<MyUsage>}
 */
export async function getUsage(key, since) {
  const { data } = await getJSON(`v1/usage?since=${encodeURIComponent(since)}`, { key });
  return data;
}

/**
 * GET /v1/usage/team: every key's usage; null when the key is not an admin key (403).
 * @param {string} key
 * @param {string} since
 * @returns {Promise<TeamUsage|null>}
 */
export async function getTeamUsage(key, since) {
  try {
    const { data } = await getJSON(`v1/usage/team?since=${encodeURIComponent(since)}`, { key });
    return data;
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return null;
    throw e;
  }
}

/**
 * GET /v1/batches: the key's newest *limit* batches. Throws an ApiError (404: the Batch
 * API is off, or the gateway has none) or a network error.
 * @param {string} key
 * @param {number} limit
 * @returns {Promise<BatchList>}
 */
export async function listBatches(key, limit) {
  const { data } = await getJSON(`v1/batches?limit=${limit}`, { key });
  return { data: Array.isArray(data.data) ? data.data : [], has_more: !!data.has_more };
}

/**
 * A request with the key, its answer read by *read* before the timeout is cleared (the
 * timeout bounds the whole body); non-2xx answers throw an ApiError.
 * @template T
 * @param {string} url
 * @param {string} key
 * @param {(resp: Response) => Promise<T>} read
 * @param {{method?: string, timeout?: number}} [opts]
 * @returns {Promise<T>}
 */
async function call(url, key, read, { method = 'GET', timeout = 8000 } = {}) {
  const t = withTimeout(timeout);
  try {
    const resp = await fetch(url, { method, headers: authHeaders(key), cache: 'no-store', signal: t.signal });
    if (!resp.ok) throw await readError(resp);
    return await read(resp);
  } finally {
    t.done();
  }
}

/**
 * POST /v1/batches/{id}/cancel: the batch as it is now (cancelling, or cancelled).
 * @param {string} key
 * @param {string} id
 * @returns {Promise<Batch>}
 */
export function cancelBatch(key, id) {
  return call(`v1/batches/${encodeURIComponent(id)}/cancel`, key, (r) => r.json(), { method: 'POST' });
}

/**
 * GET /v1/files/{id}/content, read whole: an output or error file, to be saved. The key
 * goes in the Authorization header, so the file is fetched here rather than linked to.
 * Two minutes for up to gateway.batch_max_file_bytes from the gateway.
 * @param {string} key
 * @param {string} id
 * @returns {Promise<Blob>}
 */
export function fileContent(key, id) {
  return call(`v1/files/${encodeURIComponent(id)}/content`, key, (r) => r.blob(), { timeout: 120000 });
}

/**
 * @typedef {object} AnswerRequest
 * @property {Conversation} conv
 * @property {string} model
 * @property {number} upto  answer the first *upto* messages
 * @property {string} key
 * @property {AbortSignal} signal  the user's Stop
 * @property {Set<() => void>} wakers  see SendOptions
 * @property {(text: string|null) => void} onWait
 * @property {() => void} onNetworkError
 */

/**
 * POST /v1/chat/completions for a streaming answer, with the retries of sendWithRetries().
 * @param {AnswerRequest} r
 */
export function requestAnswer(r) {
  return sendWithRetries({
    url: 'v1/chat/completions',
    body: chatRequest(r.conv, r.model, r.upto),
    headers: authHeaders(r.key, { 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
    signal: r.signal,
    wakers: r.wakers,
    onWait: r.onWait,
    onNetworkError: r.onNetworkError,
  });
}
