// @ts-check
// The usage panel's "My batches" section without the DOM: GET /v1/batches (OpenAI's Batch
// objects) turned into the rows it lists (progress, status, relative time, which buttons
// apply), worded here so that it is unit-tested under Node. The view only builds elements.
import { fmtInt } from './format.js';
import { ApiError } from './http.js';

/** @typedef {import('./types.js').Batch} Batch */
/** @typedef {import('./types.js').BatchStatus} BatchStatus */

/** Batches the section asks for: the newest page of them. */
export const BATCH_LIMIT = 20;
/** How often the open panel asks again while a batch is not finished. */
export const BATCH_POLL_MS = 3000;

/** @type {Record<BatchStatus, string>} what each of OpenAI's status names means, for its tooltip */
const MEANING = {
  validating: 'Its input file is being checked',
  in_progress: 'Its requests are running, behind interactive use',
  finalizing: 'Its output files are being written',
  completed: 'Done: every request was answered or failed',
  failed: 'Its input file was refused: nothing ran',
  cancelling: 'Stopping: no further requests are sent',
  cancelled: 'Cancelled: what was answered before is in its output file',
  expired: 'Its 24-hour window ended before every request ran',
};

/** Statuses a batch leaves by itself: the section asks again while one is listed. */
const MOVING = new Set(['validating', 'in_progress', 'finalizing', 'cancelling']);
/** Statuses the Cancel button is offered for (finalizing is all but done). */
const CANCELLABLE = new Set(['validating', 'in_progress']);

/** @typedef {'run'|'ok'|'warn'|'bad'|'off'} BatchLevel  the colour of a status and its bar */

/** @param {Batch} b @returns {BatchLevel} */
function levelOf(b) {
  if (MOVING.has(b.status)) return 'run';
  if (b.status === 'failed' || b.status === 'expired') return 'bad';
  if (b.status === 'cancelled') return 'off';
  return b.request_counts.failed > 0 ? 'warn' : 'ok';
}

/** "batch-0123456789abcdef01234567" -> "batch-…01234567": enough to tell a key's batches apart. @param {string} id */
export function shortId(id) {
  const cut = id.lastIndexOf('-');
  const tail = id.slice(cut + 1);
  return tail.length > 8 ? `${id.slice(0, cut + 1)}…${tail.slice(-8)}` : id;
}

/**
 * How long ago *seconds* (a Unix time) was, from *now* (Date.now()): "just now", "42 s ago",
 * "5 min ago", "3 h ago", "2 d ago".
 * @param {number} seconds @param {number} now
 */
export function timeAgo(seconds, now) {
  const s = Math.max(0, now / 1000 - seconds);
  if (s < 10) return 'just now';
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/**
 * @typedef {object} BatchRow  One batch as the section lists it.
 * @property {string} id
 * @property {string} short  the id, shortened
 * @property {string} endpoint
 * @property {BatchStatus} status  OpenAI's name, shown as it is (the SDK and `localai batch ls` say the same)
 * @property {string} meaning  what the status means, in words
 * @property {BatchLevel} level
 * @property {number|null} fraction  of the requests done (answered or failed), 0..1; null before the count is known
 * @property {string} progress  "2 of 3 · 1 failed", "—" before the count is known
 * @property {string} created  "5 min ago"
 * @property {string} createdAt  UTC ISO-8601 (the view shows it in local time on hover)
 * @property {string|null} outputFileId  the answers, once written
 * @property {string|null} errorFileId  the failed requests, once written
 * @property {boolean} canCancel
 * @property {string|null} problem  why a failed batch failed (its first error), or null
 */

/** @param {Batch} b */
function problemOf(b) {
  const first = b.errors && b.errors.data && b.errors.data[0];
  if (!first) return null;
  const more = b.errors && b.errors.data.length > 1 ? ` (and ${fmtInt(b.errors.data.length - 1)} more)` : '';
  return `${first.line != null ? `Line ${first.line}: ` : ''}${first.message}${more}`;
}

/** @param {Batch} b @param {number} now @returns {BatchRow} */
export function batchRow(b, now) {
  const { total, completed, failed } = b.request_counts;
  const done = completed + failed;
  return {
    id: b.id,
    short: shortId(b.id),
    endpoint: b.endpoint,
    status: b.status,
    meaning: MEANING[b.status] || b.status,
    level: levelOf(b),
    fraction: total > 0 ? Math.min(1, done / total) : null,
    progress: total > 0 ? `${fmtInt(done)} of ${fmtInt(total)}${failed ? ` · ${fmtInt(failed)} failed` : ''}` : '—',
    created: timeAgo(b.created_at, now),
    createdAt: new Date(b.created_at * 1000).toISOString(),
    outputFileId: b.output_file_id,
    errorFileId: b.error_file_id,
    canCancel: CANCELLABLE.has(b.status),
    problem: problemOf(b),
  };
}

/**
 * Newest first. The gateway lists them so already, in the order they were made: the sort
 * (stable) keeps its order within a second, which the ids (random) cannot tell.
 * @param {Batch} a @param {Batch} b
 */
const newestFirst = (a, b) => b.created_at - a.created_at;

/** @param {Batch[]} batches @param {number} now @returns {BatchRow[]} */
export function batchRows(batches, now) {
  return [...batches].sort(newestFirst).map((b) => batchRow(b, now));
}

/** Whether the panel should ask again soon: a listed batch is not finished. @param {Batch[]} batches */
export const anyMoving = (batches) => batches.some((b) => MOVING.has(b.status));

/** The name a downloaded file is saved under. @param {string} batchId @param {'output'|'errors'} kind */
export const downloadName = (batchId, kind) => `${batchId}-${kind}.jsonl`;

/**
 * Whether the gateway has no Batch API for the section to show: `404 batch_disabled`
 * (`gateway.batch_dir: null`), or a gateway from before it (no such route).
 * @param {unknown} e  what GET /v1/batches threw
 */
export const batchesOff = (e) => e instanceof ApiError && e.status === 404;

/** Why the list could not be loaded, in words. @param {unknown} e */
export function batchesError(e) {
  if (!(e instanceof ApiError)) return "Can't reach the gateway to list your batches.";
  if (e.status === 401) return 'The gateway did not accept your API key.';
  return `Could not load your batches (HTTP ${e.status}): ${e.message}`;
}
