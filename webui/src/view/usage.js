// @ts-check
// The usage panel: the key's token budgets (today, this month), its usage by model,
// and for an admin key the team's usage by key with a chart of tokens per day. What it
// shows is worked out in core/usage.js; this draws it from the `usage` state.
import { h } from '../dom.js';
import { store } from '../state.js';
import * as actions from '../actions.js';
import { usagePanel, USAGE_DAYS } from '../core/usage.js';
import { el } from './elements.js';

/** @typedef {import('../core/usage.js').BudgetRow} BudgetRow */
/** @typedef {import('../core/usage.js').Chart} Chart */

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * An SVG element with its attributes and children.
 * @param {string} tag
 * @param {Record<string, string|number>} attrs
 * @param {...(Node|string)} children
 */
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  e.append(...children);
  return e;
}

/** @param {BudgetRow} b */
function budget(b) {
  const labelId = `usage-budget-${b.id}`;
  let bar = null;
  if (b.fraction != null) {
    const fill = h('span', { class: 'budget-fill' });
    fill.style.width = `${(b.fraction * 100).toFixed(1)}%`;
    bar = h('div', {
      class: 'budget-bar', role: 'progressbar', 'aria-labelledby': labelId,
      'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(b.fraction * 100), 'aria-valuetext': b.text,
    }, fill);
  }
  return h('div', { class: 'budget', dataset: { budget: b.id, level: b.level } },
    h('div', { class: 'budget-head' },
      h('span', { class: 'budget-label', id: labelId }, `Tokens ${b.label.toLowerCase()}`),
      h('span', { class: 'budget-text' }, b.text)),
    bar,
    h('div', { class: 'budget-detail', title: `Resets ${new Date(b.resetsAt).toLocaleString()}` }, b.detail));
}

/**
 * A table in a scrolling region that the keyboard can reach.
 * @param {string} id
 * @param {string} caption
 * @param {string[]} head  the first column names the row; the others are numbers (right-aligned)
 * @param {(string|{text: string, level: string})[][]} rows
 */
function table(id, caption, head, rows) {
  return h('div', { class: 'table-wrap', id, tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', { class: 'usage-table' },
      h('caption', { class: 'offscreen' }, caption),
      h('thead', null, h('tr', null, head.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null, rows.map((r) => h('tr', null, r.map((c, i) => {
        const cell = typeof c === 'string' ? { text: c, level: '' } : c;
        return i === 0
          ? h('th', { scope: 'row' }, cell.text)
          : h('td', { dataset: cell.level ? { level: cell.level } : undefined }, cell.text);
      }))))));
}

/** @param {Chart} c */
function chart(c) {
  const { plot } = c;
  return svg('svg', { class: 'usage-chart', viewBox: `0 0 ${c.width} ${c.height}`, role: 'img', 'aria-label': c.summary },
    svg('title', {}, c.summary),
    ...c.yTicks.map((t) => svg('g', { class: 'tick' },
      svg('line', { x1: plot.left, x2: plot.right, y1: t.y, y2: t.y }),
      svg('text', { x: plot.left - 6, y: t.y, 'text-anchor': 'end', 'dominant-baseline': 'middle' }, t.text))),
    ...c.bars.map((b) => svg('rect', { class: 'bar', x: b.x, y: b.y, width: b.w, height: b.h, rx: 1.5, 'data-day': b.day },
      svg('title', {}, b.title))),
    ...c.xLabels.map((l) => svg('text', { class: 'day', x: l.x, y: c.height - 6, 'text-anchor': l.anchor }, l.text)));
}

function render() {
  const u = store.state.usage;
  el.usageStatus.textContent = u.status === 'loading' ? 'Loading…' : u.error || '';
  el.usageStatus.dataset.kind = u.error ? 'error' : '';
  el.usageDialog.setAttribute('aria-busy', String(u.status === 'loading'));
  if (!u.mine) {
    el.usageBody.replaceChildren();
    el.usageWho.textContent = '';
    return;
  }
  const p = usagePanel(u.mine, u.team, u.at || Date.now());
  el.usageWho.textContent = p.admin ? `key ${p.key} · admin` : `key ${p.key}`;
  const since = `last ${USAGE_DAYS} days`;
  const mine = h('section', { class: 'usage-sec', 'aria-labelledby': 'usage-mine-h' },
    h('h3', { id: 'usage-mine-h' }, 'My budget'),
    p.budgets.map(budget),
    h('p', { class: 'usage-meta' },
      p.expiry && h('span', { class: 'expiry', dataset: { level: p.expiry.level } }, p.expiry.text),
      h('span', null, p.allowed)),
    h('h3', { id: 'usage-models-h' }, `My usage by model `, h('span', { class: 'usage-since' }, `(${since})`)),
    h('p', { class: 'usage-totals' }, p.totals),
    p.models.length
      ? table('usage-models', `My usage by model, ${since}`, ['Model', 'Requests', 'Errors', 'Tokens', 'GPU time', 'GPU share'],
        p.models.map((m) => [m.model, m.requests, m.errors, m.tokens, m.gpu, m.share]))
      : h('p', { class: 'usage-none' }, `No requests in the ${since}.`),
    p.models.length > 0 && h('p', { class: 'usage-note' }, "GPU share: your part of the time each model's slots were busy."));
  const team = p.team && h('section', { class: 'usage-sec', id: 'usage-team', 'aria-labelledby': 'usage-team-h' },
    h('h3', { id: 'usage-team-h' }, 'Team ', h('span', { class: 'usage-since' }, `(${since})`)),
    h('p', { class: 'usage-totals' }, p.team.totals),
    h('figure', { class: 'usage-figure', id: 'usage-chart' }, chart(p.team.chart),
      h('figcaption', null, 'Tokens per day (prompt + completion), all keys')),
    table('usage-keys', `Team usage by key, ${since}`, ['Key', 'Requests', 'Errors', 'Tokens', 'Today', 'This month', 'GPU time', 'GPU share', 'Expires'],
      p.team.keys.map((k) => [k.key, k.requests, k.errors, k.tokens, { text: k.today, level: k.todayLevel },
        { text: k.month, level: k.monthLevel }, k.gpu, k.share, k.expires])),
    h('p', { class: 'usage-note' }, 'GPU share: the part of all busy model-slot time. Today and this month: tokens against the key’s budget.'));
  el.usageBody.replaceChildren(mine, ...(team ? [team] : []));
}

export function openUsage() {
  if (!el.usageDialog.open) el.usageDialog.showModal();
  actions.loadUsage();
  actions.watchBatches(true); // until the panel closes (main.js)
}

export function subscribeUsage() {
  store.subscribe(['usage'], render);
}
