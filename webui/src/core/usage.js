// @ts-check
// The usage panel without the DOM: GET /v1/usage and /v1/usage/team turned into what
// the panel shows (budget bars, table rows, the chart's geometry), worded and measured
// here so that it is unit-tested under Node. The view only builds elements from it.
import { fmtCompact, fmtDuration, fmtInt, fmtShare } from './format.js';
import { ApiError } from './http.js';

/** @typedef {import('./types.js').UsageCounts} UsageCounts */
/** @typedef {import('./types.js').Budget} Budget */
/** @typedef {import('./types.js').MyUsage} MyUsage */
/** @typedef {import('./types.js').TeamUsage} TeamUsage */
/** @typedef {import('./types.js').ModelUsage} ModelUsage */
/** @typedef {import('./types.js').KeyUsage} KeyUsage */
/** @typedef {import('./types.js').DayUsage} DayUsage */

/** @typedef {'ok'|'warn'|'high'} Level  how close to a limit: the colour of its bar */

/** The window the panel asks for (`since`), and how it says so. */
export const USAGE_SINCE = '30d';
export const USAGE_DAYS = 30;

const DAY_MS = 86400000;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** The tokens a budget counts: prompt + completion. @param {UsageCounts} c */
export const tokensOf = (c) => (c.prompt_tokens || 0) + (c.completion_tokens || 0);

/** @param {number} used @param {number} limit @returns {Level} */
function levelOf(used, limit) {
  if (used >= limit) return 'high';
  return used >= 0.8 * limit ? 'warn' : 'ok';
}

/**
 * @typedef {object} BudgetRow  One token budget as its bar shows it.
 * @property {'day'|'month'} id
 * @property {string} label
 * @property {number|null} fraction  of the budget used, 0..1; null: the key has no such budget
 * @property {Level} level
 * @property {string} text  "1,234 of 100,000 tokens"
 * @property {string} detail  what is left and when it starts again
 * @property {string} resetsAt  UTC ISO-8601 (the view shows it in local time on hover)
 */

/**
 * @param {'day'|'month'} id
 * @param {Budget} b
 * @param {number} now  Date.now()
 * @returns {BudgetRow}
 */
function budgetRow(id, b, now) {
  const label = id === 'day' ? 'Today' : 'This month';
  const resets = `resets in ${fmtDuration((Date.parse(b.resets_at) - now) / 1000)}`;
  if (b.limit == null) {
    return { id, label, fraction: null, level: 'ok', text: `${fmtInt(b.used)} tokens`, detail: 'No budget set', resetsAt: b.resets_at };
  }
  const level = levelOf(b.used, b.limit);
  const left = b.remaining != null ? b.remaining : Math.max(0, b.limit - b.used);
  return {
    id,
    label,
    fraction: b.limit > 0 ? Math.min(1, b.used / b.limit) : 1,
    level,
    text: `${fmtInt(b.used)} of ${fmtInt(b.limit)} tokens`,
    detail: `${level === 'high' ? 'Budget used up' : `${fmtInt(left)} left`} · ${resets}`,
    resetsAt: b.resets_at,
  };
}

/** The days from *a* to *b* ("YYYY-MM-DD", calendar days). @param {string} a @param {string} b */
function daysBetween(a, b) {
  return Math.round((Date.parse(`${b}T00:00:00Z`) - Date.parse(`${a}T00:00:00Z`)) / DAY_MS);
}

/** The local calendar day of *now*, "YYYY-MM-DD". @param {number} now */
export function localDay(now) {
  const d = new Date(now);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

/** "2026-12-06" -> "Dec 6". @param {string} day */
export function shortDay(day) {
  const [, m, d] = day.split('-').map(Number);
  return `${MONTHS[m - 1]} ${d}`;
}

/** *day* plus *n* calendar days. @param {string} day @param {number} n */
function addDays(day, n) {
  return new Date(Date.parse(`${day}T00:00:00Z`) + n * DAY_MS).toISOString().slice(0, 10);
}

/**
 * The key's end date, as a line under the budgets; null when it has none.
 * `expires` is the last day the key is accepted.
 * @param {string|null} expires
 * @param {number} now
 * @returns {{text: string, level: Level}|null}
 */
export function expiryOf(expires, now) {
  if (!expires) return null;
  const days = daysBetween(localDay(now), expires);
  if (days < 0) return { text: `Expired after ${expires}`, level: 'high' };
  const when = days === 0 ? 'today is its last day' : days === 1 ? 'tomorrow is its last day' : `${days} days from now`;
  return { text: `Valid through ${expires} (${when})`, level: days <= 7 ? 'warn' : 'ok' };
}

/**
 * @typedef {object} ModelRow
 * @property {string} model
 * @property {string} requests
 * @property {string} errors
 * @property {string} tokens
 * @property {string} gpu  GPU time
 * @property {string} share  of the model's busy GPU time
 */

/** Busiest first: GPU time, then tokens, then name. @param {ModelUsage|KeyUsage} a @param {ModelUsage|KeyUsage} b */
function busiestFirst(a, b) {
  const an = 'model' in a ? a.model : a.key;
  const bn = 'model' in b ? b.model : b.key;
  return (b.gpu_seconds - a.gpu_seconds) || (tokensOf(b) - tokensOf(a)) || (an < bn ? -1 : an > bn ? 1 : 0);
}

/** @param {UsageCounts & {gpu_share: number}} c */
const countCells = (c) => ({
  requests: fmtInt(c.requests),
  errors: fmtInt(c.errors),
  tokens: fmtInt(tokensOf(c)),
  gpu: fmtDuration(c.gpu_seconds),
  share: fmtShare(c.gpu_share),
});

/** @param {ModelUsage[]} byModel @returns {ModelRow[]} */
export function modelRows(byModel) {
  return [...byModel].sort(busiestFirst).map((m) => ({ model: m.model, ...countCells(m) }));
}

/**
 * @typedef {object} KeyRow
 * @property {string} key
 * @property {string} requests
 * @property {string} errors
 * @property {string} tokens  in the window
 * @property {string} today  "1,234 / 100,000" against its daily budget, or the count alone
 * @property {Level} todayLevel
 * @property {string} month
 * @property {Level} monthLevel
 * @property {string} gpu
 * @property {string} share  of all GPU time in the window
 * @property {string} expires  "—" when never
 */

/** @param {number} used @param {number|null} limit @returns {[string, Level]} */
function against(used, limit) {
  return limit == null ? [fmtInt(used), 'ok'] : [`${fmtInt(used)} / ${fmtInt(limit)}`, levelOf(used, limit)];
}

/** @param {KeyUsage[]} byKey @returns {KeyRow[]} */
export function keyRows(byKey) {
  return [...byKey].sort(busiestFirst).map((k) => {
    const [today, todayLevel] = against(k.tokens_today, k.tokens_per_day);
    const [month, monthLevel] = against(k.tokens_month, k.tokens_per_month);
    return { key: k.key, ...countCells(k), today, todayLevel, month, monthLevel, expires: k.expires || '—' };
  });
}

/** A window's totals in one line. @param {UsageCounts} t */
export function totalsLine(t) {
  const n = (/** @type {number} */ v, /** @type {string} */ one) => `${fmtInt(v)} ${one}${v === 1 ? '' : 's'}`;
  return [n(t.requests, 'request'), n(t.errors, 'error'), `${fmtInt(tokensOf(t))} tokens`, `${fmtDuration(t.gpu_seconds)} of GPU time`].join(' · ');
}

/** The smallest 1, 2 or 5 × 10^k at or above *v* (the chart's top), 1 for nothing. @param {number} v */
export function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v * (1 - 1e-9)) return m * p;
  return 10 * p;
}

/**
 * @typedef {object} Bar
 * @property {string} day
 * @property {number} value  tokens
 * @property {number} x
 * @property {number} y
 * @property {number} w
 * @property {number} h
 * @property {string} title  "Dec 6: 12,345 tokens"
 *
 * @typedef {object} Chart  A bar chart of tokens per day, in the SVG's user units.
 * @property {number} width
 * @property {number} height
 * @property {Bar[]} bars  one per day, oldest first, days without requests too
 * @property {{y: number, text: string}[]} yTicks  0, half, top
 * @property {{x: number, text: string, anchor: 'start'|'middle'|'end'}[]} xLabels  the first, middle and
 *   last day; the outer two aligned with their bar's outer edge, so that they stay inside the chart
 * @property {{left: number, right: number, top: number, bottom: number}} plot
 * @property {string} summary  what the chart shows, in words (its accessible name)
 */

const round1 = (/** @type {number} */ v) => Math.round(v * 10) / 10;

/**
 * The geometry of the team's tokens-per-day chart: *days* bars ending on the later of
 * *today* and the last day in *byDay* (the gateway's calendar may be a day ahead of
 * the browser's).
 * @param {DayUsage[]} byDay
 * @param {{today: string, days?: number, width?: number, height?: number}} opts
 * @returns {Chart}
 */
export function dayChart(byDay, { today, days = USAGE_DAYS, width = 640, height = 170 }) {
  const byName = new Map(byDay.map((d) => [d.day, tokensOf(d)]));
  const last = byDay.reduce((m, d) => (d.day > m ? d.day : m), today);
  const first = addDays(last, 1 - days);
  const plot = { left: 48, right: width - 4, top: 8, bottom: height - 22 };
  const values = Array.from({ length: days }, (_, i) => {
    const day = addDays(first, i);
    return { day, value: byName.get(day) || 0 };
  });
  const top = niceCeil(Math.max(0, ...values.map((v) => v.value)));
  const slot = (plot.right - plot.left) / days;
  const plotH = plot.bottom - plot.top;
  const bars = values.map(({ day, value }, i) => {
    const h = round1((value / top) * plotH);
    return {
      day, value,
      x: round1(plot.left + i * slot + slot * 0.1),
      y: round1(plot.bottom - h),
      w: round1(slot * 0.8),
      h,
      title: `${shortDay(day)}: ${fmtInt(value)} tokens`,
    };
  });
  const yTicks = [0, top / 2, top].map((v) => ({ y: round1(plot.bottom - (v / top) * plotH), text: fmtCompact(v) }));
  const mid = Math.floor((days - 1) / 2);
  /** @type {Chart['xLabels']} */
  const xLabels = [{ x: bars[0].x, text: shortDay(first), anchor: 'start' }];
  if (days > 2) xLabels.push({ x: round1(plot.left + (mid + 0.5) * slot), text: shortDay(values[mid].day), anchor: 'middle' });
  if (days > 1) xLabels.push({ x: round1(bars[days - 1].x + bars[days - 1].w), text: shortDay(last), anchor: 'end' });
  const total = values.reduce((s, v) => s + v.value, 0);
  const peak = values.reduce((p, v) => (v.value > p.value ? v : p), values[0]);
  const summary = `Team tokens per day, ${shortDay(first)} to ${shortDay(last)}: ${fmtInt(total)} in all` +
    (peak.value > 0 ? `, most on ${shortDay(peak.day)} (${fmtInt(peak.value)})` : '');
  return { width, height, bars, yTicks, xLabels, plot, summary };
}

/**
 * @typedef {object} UsagePanel  Everything the usage panel shows.
 * @property {string} key
 * @property {boolean} admin
 * @property {BudgetRow[]} budgets  today, this month
 * @property {{text: string, level: Level}|null} expiry
 * @property {string} allowed  the models the key may use
 * @property {string} totals  the key's own totals in the window
 * @property {ModelRow[]} models  the key's own usage by model
 * @property {{totals: string, keys: KeyRow[], chart: Chart}|null} team  admin keys only
 */

/**
 * @param {MyUsage} mine  GET /v1/usage
 * @param {TeamUsage|null} team  GET /v1/usage/team; null for a key that is not an admin
 * @param {number} now  Date.now()
 * @returns {UsagePanel}
 */
export function usagePanel(mine, team, now) {
  return {
    key: mine.key,
    admin: mine.admin,
    budgets: [budgetRow('day', mine.quota.tokens_per_day, now), budgetRow('month', mine.quota.tokens_per_month, now)],
    expiry: expiryOf(mine.expires, now),
    allowed: mine.models ? `Models: ${mine.models.join(', ')}` : 'Models: all',
    totals: totalsLine(mine.totals),
    models: modelRows(mine.by_model),
    team: team && {
      totals: totalsLine(team.totals),
      keys: keyRows(team.by_key),
      chart: dayChart(team.by_day, { today: localDay(now) }),
    },
  };
}

/** Why the panel has nothing to show, in words. @param {unknown} e  what GET /v1/usage threw */
export function usageError(e) {
  if (!(e instanceof ApiError)) return "Can't reach the gateway. Try again when it is back.";
  if (e.status === 401) return 'The gateway did not accept your API key.';
  if (e.status === 404) return 'This gateway does not report usage (it has no /v1/usage).';
  return `Could not load the usage (HTTP ${e.status}): ${e.message}`;
}
