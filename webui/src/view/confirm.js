// @ts-check
// The confirm box (a shared helper: any view may ask).
import { el } from './elements.js';

/**
 * Ask; resolves true when the user confirms.
 * @param {string} title @param {string} text @param {string} [okLabel]
 * @returns {Promise<boolean>}
 */
export function confirmDialog(title, text, okLabel = 'OK') {
  el.confirmTitle.textContent = title;
  el.confirmText.textContent = text;
  el.confirmOk.textContent = okLabel;
  el.confirmDialog.returnValue = '';
  el.confirmDialog.showModal();
  return new Promise((resolve) => {
    el.confirmDialog.addEventListener('close', () => resolve(el.confirmDialog.returnValue === 'ok'), { once: true });
  });
}
