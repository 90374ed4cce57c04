// @ts-check
// Settings and dialogs: the theme, the API key, a chat's system prompt and
// parameters, the confirm box, and importing/exporting chats.
import { h } from '../dom.js';
import { icon } from '../icons.js';
import { ApiError, getJSON } from '../core/http.js';
import { state, settings, chats, apiKey } from '../state.js';
import { el } from './elements.js';
import { toast } from './toast.js';
import { loadModels, renderPicker } from './models.js';
import { renderSidebar } from './sidebar.js';
import { updateEmpty } from './thread.js';
import { updateMeter } from './composer.js';

const THEMES = ['system', 'light', 'dark'];

export function applyTheme() {
  const t = settings.get('theme', 'system');
  if (t === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  el.themeBtn.innerHTML = icon(t === 'light' ? 'sun' : t === 'dark' ? 'moon' : 'monitor');
  el.themeBtn.title = `Theme: ${t} (click to change)`;
}

export function cycleTheme() {
  const t = settings.get('theme', 'system');
  const next = THEMES[(THEMES.indexOf(t) + 1) % THEMES.length];
  settings.set('theme', next);
  applyTheme();
  toast(`Theme: ${next === 'system' ? 'follow system' : next}`);
}

/** @param {string} [message]  why the key is asked for */
export function openKeyDialog(message) {
  el.keyError.hidden = !message;
  el.keyError.textContent = message || '';
  el.keyInput.value = apiKey();
  if (!el.keyDialog.open) el.keyDialog.showModal();
  el.keyInput.focus();
  el.keyInput.select();
}

/** @param {SubmitEvent} ev */
export async function saveKey(ev) {
  ev.preventDefault();
  const key = el.keyInput.value.trim();
  settings.set('apiKey', key || null);
  el.keyError.hidden = true;
  try {
    await getJSON('v1/models', { key: apiKey() });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      state.auth = key ? 'bad' : 'missing';
      el.keyError.hidden = false;
      el.keyError.textContent = key ? 'That key was not accepted by the gateway. Check it and try again.' : 'This gateway needs an API key.';
      el.keyInput.focus();
      el.keyInput.select();
      renderPicker();
      updateEmpty();
      return;
    }
  }
  el.keyDialog.close();
  state.auth = /** @type {import('../state.js').AppState['auth']} */ ('unknown'); // loadModels() sets it
  await loadModels();
  if (state.auth === 'ok') toast('API key saved.', 'ok');
  el.input.focus();
}

export function forgetKey() {
  settings.set('apiKey', null);
  el.keyInput.value = '';
  el.keyInput.focus();
  toast('API key removed from this browser.');
}

export function openChatDialog() {
  const c = state.conv;
  if (!c) return;
  el.sysInput.value = c.system || '';
  el.tempInput.value = c.params && c.params.temperature != null ? String(c.params.temperature) : '';
  el.maxtokInput.value = c.params && c.params.max_tokens != null ? String(c.params.max_tokens) : '';
  el.chatDialog.showModal();
  el.sysInput.focus();
}

/** @param {SubmitEvent} ev */
export function saveChatDialog(ev) {
  ev.preventDefault();
  const c = state.conv;
  if (!c) return;
  c.system = el.sysInput.value;
  const t = el.tempInput.value.trim();
  const mt = el.maxtokInput.value.trim();
  c.params = {};
  if (t !== '' && !Number.isNaN(Number(t))) c.params.temperature = Math.max(0, Math.min(2, Number(t)));
  if (mt !== '' && Number(mt) > 0) c.params.max_tokens = Math.floor(Number(mt));
  if (c.messages.length || chats.has(c.id)) chats.save(c, { touch: false });
  el.chatDialog.close();
  updateEmpty();
  updateMeter();
}

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

export function exportAll() {
  const data = chats.exportAll();
  if (!data.conversations.length) {
    toast('There are no chats to export.');
    return;
  }
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: `localai-chats-${new Date().toISOString().slice(0, 10)}.json`, class: 'offscreen' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  toast(`Exported ${data.conversations.length} chat${data.conversations.length === 1 ? '' : 's'}.`, 'ok');
}

/** @param {File} file */
export async function importFile(file) {
  try {
    const data = JSON.parse(await file.text());
    const { added, skipped } = chats.importData(data);
    renderSidebar();
    toast(`Imported ${added} chat${added === 1 ? '' : 's'}${skipped ? ` (${skipped} already present or invalid)` : ''}.`, 'ok', 5000);
  } catch (e) {
    toast(`Import failed: ${e instanceof SyntaxError ? 'the file is not valid JSON.' : e instanceof Error ? e.message : String(e)}`, 'error', 6000);
  }
}
