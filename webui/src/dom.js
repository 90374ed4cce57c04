// @ts-check
// Small DOM helpers.

/**
 * @typedef {Record<string, string|number|boolean|null|undefined|Record<string, string>|((ev: any) => void)>} Props
 * @typedef {Node|string|number|null|undefined|false} Child
 */

/**
 * Tiny element builder. Never pass untrusted strings through `html`.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Props|null} [props]
 * @param {...(Child|Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = String(v);
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'html') el.innerHTML = String(v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** The element an event happened on (events here always come from elements). @param {Event} ev */
export const targetOf = (ev) => /** @type {Element} */ (ev.target);

/** @param {string} text */
export async function copyText(text) {
  // navigator.clipboard only exists in secure contexts (https / localhost).
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { /* fall through */ }
  }
  const ta = document.createElement('textarea');
  ta.value = text;
  ta.setAttribute('readonly', '');
  ta.className = 'offscreen';
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  ta.remove();
  return ok;
}

/** Grow a text box with its text, up to *max* pixels. @param {HTMLTextAreaElement} ta @param {number} [max] */
export function autosize(ta, max = 220) {
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight, max)}px`;
}
