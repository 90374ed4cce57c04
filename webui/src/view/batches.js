// @ts-check
// The usage panel's "My batches" section: the key's batch jobs, newest first, with their
// progress, their output and error files to download, and Cancel for those still running.
// What it shows is worked out in core/batches.js; this draws it from the `batches` state.
// It is followed (asked again every few seconds while a batch runs) while the panel is open.
import { h, targetOf } from '../dom.js';
import { store } from '../state.js';
import * as actions from '../actions.js';
import { batchRows, downloadName, BATCH_LIMIT } from '../core/batches.js';
import { el } from './elements.js';
import { confirmDialog } from './confirm.js';

/** @typedef {import('../core/batches.js').BatchRow} BatchRow */

/** @param {BatchRow} r */
function row(r) {
  const labelId = `batch-${r.id}-label`;
  const fill = h('span', { class: 'budget-fill' });
  fill.style.width = `${((r.fraction || 0) * 100).toFixed(1)}%`;
  const bar = h('div', {
    class: 'budget-bar', role: 'progressbar', 'aria-labelledby': labelId, 'aria-valuemin': 0, 'aria-valuemax': 100,
    'aria-valuenow': r.fraction == null ? null : Math.round(r.fraction * 100), 'aria-valuetext': r.progress,
  }, fill);
  const file = (/** @type {string|null} */ id, /** @type {'output'|'errors'} */ kind, /** @type {string} */ text) =>
    id && h('button', { type: 'button', class: 'link-btn', dataset: { act: 'download', file: id, kind } }, text);
  return h('li', { class: 'batch', dataset: { id: r.id, status: r.status, level: r.level } },
    h('div', { class: 'batch-head' },
      h('code', { class: 'batch-id', id: labelId, title: r.id }, r.short),
      h('span', { class: 'batch-endpoint' }, r.endpoint),
      h('span', { class: 'batch-status', title: r.meaning }, r.status),
      h('span', { class: 'batch-progress' }, r.progress)),
    bar,
    h('div', { class: 'batch-foot' },
      h('span', { class: 'batch-created', title: `Created ${new Date(r.createdAt).toLocaleString()}` }, r.created),
      r.problem && h('span', { class: 'batch-problem' }, r.problem),
      h('span', { class: 'spacer' }),
      file(r.outputFileId, 'output', 'Output file'),
      file(r.errorFileId, 'errors', 'Error file'),
      r.canCancel && h('button', { type: 'button', class: 'btn small', dataset: { act: 'cancel' } }, 'Cancel')));
}

function render() {
  const b = store.state.batches;
  // Hidden until the first answer, and on a gateway without the Batch API.
  el.batchSec.hidden = b.status === 'off' || (b.status !== 'error' && b.at === 0);
  el.batchStatus.textContent = b.error || '';
  el.batchStatus.dataset.kind = b.error ? 'error' : '';
  if (b.at === 0) {
    el.batchBody.replaceChildren();
    return;
  }
  const rows = batchRows(b.list, b.at);
  el.batchBody.replaceChildren(rows.length
    ? h('ul', { class: 'batch-list' }, rows.map(row))
    : h('p', { class: 'usage-none' }, 'No batches. Send work that can wait through the Batch API (POST /v1/batches).'),
  ...(b.more ? [h('p', { class: 'usage-note' }, `The ${BATCH_LIMIT} newest are listed.`)] : []));
}

/** Save *blob* as a file named *name* (an object URL: the key never goes into a link). @param {Blob} blob @param {string} name */
function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name, class: 'offscreen' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

/** A click in the section: a file to download, or a batch to cancel. @param {MouseEvent} ev */
export async function onBatchClick(ev) {
  const act = /** @type {HTMLElement|null} */ (targetOf(ev).closest('[data-act]'));
  const item = /** @type {HTMLElement|null} */ (act && act.closest('.batch'));
  if (!act || !item || !item.dataset.id) return;
  const id = item.dataset.id;
  if (act.dataset.act === 'download' && act.dataset.file) {
    const blob = await actions.batchFile(act.dataset.file);
    if (blob) save(blob, downloadName(id, act.dataset.kind === 'errors' ? 'errors' : 'output'));
  } else if (act.dataset.act === 'cancel') {
    const ok = await confirmDialog('Cancel batch?', `Requests of ${id} not yet sent will not run; what was answered is kept.`, 'Cancel batch');
    if (ok) await actions.cancelBatch(id);
  }
}

export function subscribeBatches() {
  store.subscribe(['batches'], render);
}
