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

