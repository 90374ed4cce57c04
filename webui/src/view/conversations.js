// @ts-check
// Which chat is on screen: a new one, one from the sidebar or the URL (#/c/<id>).
import { newConversation } from '../core/conversation.js';
import { state, streams, chats } from '../state.js';
import { el } from './elements.js';
import { toast } from './toast.js';
import { currentModelId, renderPicker } from './models.js';
import { renderSidebar, closeMobileSidebar } from './sidebar.js';
import { renderThread } from './thread.js';
import { updateComposer, updateMeter } from './composer.js';

/** @param {string|null} id */
export function setHash(id) {
  const want = id ? `#/c/${id}` : '#/';
  if (location.hash !== want) history.replaceState(null, '', want);
}

export function newChat() {
  const model = currentModelId();
  state.conv = newConversation(model);
  setHash(null);
  document.title = 'LocalAI';
  renderAll();
  closeMobileSidebar();
  el.input.focus();
}

/** @param {string} id */
export function openConversation(id) {
  if (state.conv && state.conv.id === id) {
    closeMobileSidebar();
    return;
  }
  const live = streams.get(id);
  const conv = live ? live.conv : chats.load(id);
  if (!conv) {
    toast('That chat no longer exists.', 'error');
    newChat();
    return;
  }
  for (const m of conv.messages) if (m.status === 'streaming' && !live) m.status = 'stopped';
  state.conv = conv;
  setHash(id);
  document.title = `${conv.title} · LocalAI`;
  renderAll();
  closeMobileSidebar();
}

export function routeFromHash() {
  const m = /^#\/c\/([\w-]+)$/.exec(location.hash);
  if (m && chats.has(m[1])) openConversation(m[1]);
  else if (!state.conv || (m && !chats.has(m[1]))) newChat();
}

function renderAll() {
  renderSidebar();
  renderPicker();
  renderThread();
  updateComposer();
  updateMeter();
}
