// @ts-check
// Numbers and dates as the UI words them (no DOM: unit-tested under Node).

/** @typedef {import('./types.js').Stats} Stats */

// One formatter: toLocaleString('en-US') builds a new one on every call.
const INT = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** @param {number} n */
export function fmtInt(n) {
  return INT.format(Math.round(n));
}

/** @param {number} n */
export function fmtK(n) {
  if (n >= 10000) return `${Math.round(n / 1000)}k`;
  if (n >= 1000) return `${(n / 1000).toFixed(1).replace(/\.0$/, '')}k`;
  return String(n);
}

/** The footer line of an answer. @param {Stats | undefined} s */
export function fmtStats(s) {
  if (!s) return '';
  const parts = [];
  if (s.ttft_ms != null) parts.push(`${(s.ttft_ms / 1000).toFixed(2)} s to first token`);
  if (s.tps != null) parts.push(`${s.tps.toFixed(1)} tok/s`);
  if (s.prompt_tokens != null && s.completion_tokens != null) {
    parts.push(`${fmtInt(s.prompt_tokens)} prompt + ${fmtInt(s.completion_tokens)} completion tokens`);
  } else if (s.completion_tokens != null) {
    parts.push(`${s.estimated ? '≈' : ''}${fmtInt(s.completion_tokens)} tokens`);
  }
  return parts.join(' · ');
}

/**
 * The sidebar's group heading for a chat last updated at *ts*.
 * @param {number} ts
 * @param {Date} [now]
 */
export function dayGroup(ts, now = new Date()) {
  const d = new Date(ts);
  const today = new Date(now);
  today.setHours(0, 0, 0, 0);
  const diff = (today.getTime() - new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime()) / 86400000;
  if (diff <= 0) return 'Today';
  if (diff <= 1) return 'Yesterday';
  if (diff <= 7) return 'Previous 7 days';
  if (diff <= 30) return 'Previous 30 days';
  return d.toLocaleDateString(undefined, { year: 'numeric', month: 'long' });
}

/** A count in a few characters, for a chart's axis: 950, 1.2k, 12k, 3.4M. @param {number} n */
export function fmtCompact(n) {
  if (n >= 999500) {
    const m = n / 1e6;
    return `${m >= 9.95 ? Math.round(m) : +m.toFixed(1)}M`;
  }
  return fmtK(Math.round(n));
}

/**
 * A span of seconds, as precise as it is worth: "<0.1 s", "0.4 s", "42 s", "3 min 5 s", "8 h 12 min", "3 d 4 h".
 * @param {number} seconds
 */
export function fmtDuration(seconds) {
  const s = Math.max(0, seconds);
  if (s > 0 && s < 0.05) return '<0.1 s';
  if (s < 9.95) return `${+s.toFixed(1)} s`;
  if (s < 59.5) return `${Math.round(s)} s`;
  const parts = (/** @type {[number, string][]} */ pairs) => pairs.filter(([v], i) => i === 0 || v).map(([v, u]) => `${v} ${u}`).join(' ');
  if (s < 3599.5) {
    const t = Math.round(s);
    return parts([[Math.floor(t / 60), 'min'], [t % 60, 's']]);
  }
  if (s < 86370) {
    const t = Math.round(s / 60);
    return parts([[Math.floor(t / 60), 'h'], [t % 60, 'min']]);
  }
  const t = Math.round(s / 3600);
  return parts([[Math.floor(t / 24), 'd'], [t % 24, 'h']]);
}

/** A share (0..1) as a whole percentage; a share too small to round up to 1% is "<1%", not "0%". @param {number} frac */
export function fmtShare(frac) {
  if (!(frac > 0)) return '0%';
  if (frac < 0.005) return '<1%';
  return `${Math.round(Math.min(frac, 1) * 100)}%`;
}
