// @ts-check
// Short notices in the corner.
import { h } from '../dom.js';
import { el } from './elements.js';

/**
 * @param {string} text
 * @param {'info'|'ok'|'error'} [kind]
 * @param {number} [ms]  how long it stays
 */
export function toast(text, kind = 'info', ms = 3500) {
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  el.toasts.append(t);
  setTimeout(() => {
    t.classList.add('out');
    setTimeout(() => t.remove(), 300);
  }, ms);
}
