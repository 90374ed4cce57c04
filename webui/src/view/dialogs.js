// @ts-check
// Settings and dialogs: the theme, the API key, a chat's system prompt and
// parameters, and importing/exporting chats.
import { h } from '../dom.js';
import { icon } from '../icons.js';
import { store, settings, chats, apiKey } from '../state.js';
import * as actions from '../actions.js';
import { el } from './elements.js';
import { toast } from './toast.js';

export function applyTheme() {
  const t = settings.get('theme', 'system');
  if (t === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  el.themeBtn.innerHTML = icon(t === 'light' ? 'sun' : t === 'dark' ? 'moon' : 'monitor');
  el.themeBtn.title = `Theme: ${t} (click to change)`;
}

export function cycleTheme() {
  const next = actions.cycleTheme();
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
  el.keyError.hidden = true;
  if (!(await actions.saveKey(key))) {
    el.keyError.hidden = false;
    el.keyError.textContent = key ? 'That key was not accepted by the gateway. Check it and try again.' : 'This gateway needs an API key.';
    el.keyInput.focus();
    el.keyInput.select();
    return;
  }
  el.keyDialog.close();
  await actions.reloadWithKey();
  if (store.state.auth === 'ok') toast('API key saved.', 'ok');
  el.input.focus();
}

export function forgetKey() {
  actions.forgetKey();
  el.keyInput.value = '';
  el.keyInput.focus();
  toast('API key removed from this browser.');
}

export function openChatDialog() {
  const c = store.state.conv;
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
  if (!store.state.conv) return;
  actions.saveChatSettings({ system: el.sysInput.value, temperature: el.tempInput.value, maxTokens: el.maxtokInput.value });
  el.chatDialog.close();
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
    const { added, skipped } = actions.importChats(data);
    toast(`Imported ${added} chat${added === 1 ? '' : 's'}${skipped ? ` (${skipped} already present or invalid)` : ''}.`, 'ok', 5000);
  } catch (e) {
    toast(`Import failed: ${e instanceof SyntaxError ? 'the file is not valid JSON.' : e instanceof Error ? e.message : String(e)}`, 'error', 6000);
  }
}

export function subscribeDialogs() {
  store.subscribe(['keyPrompt'], (s) => { if (s.keyPrompt) openKeyDialog(s.keyPrompt.message); });
  // The models listed with the key: a dialog that asked for it is done (one the user opened stays).
  store.subscribe(['auth'], (s) => {
    if (s.auth === 'ok' && el.keyDialog.open && !el.keyDialog.dataset.manual) el.keyDialog.close();
  });
}
