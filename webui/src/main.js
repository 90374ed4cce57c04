// @ts-check
// LocalAI WebUI: a small, dependency-light chat client for the gateway.
// This entry module subscribes the views to the store, wires the page's events to
// the views and the actions, and starts the app.
//   core/       the chat without the DOM: requests to the gateway, SSE, retries, stats,
//               conversations, storage, the store
//   state.js    the page's state, declared in one place, and the store holding it
//   actions.js  the only code that changes the state
//   view/       the page: thread, sidebar, model picker, composer, dialogs, connection, usage, batches;
//               each draws from the state and calls actions, none imports another
import './styles.css';
import { targetOf, autosize } from './dom.js';
import { hydrateIcons } from './icons.js';
import { store, settings } from './state.js';
import { newChat, openChat, routeTo, stopCurrent, poll, loadModels, loadUsage, loadBatches, watchBatches, chatsChangedElsewhere, pageUnloading } from './actions.js';
import { el } from './view/elements.js';
import { toast } from './view/toast.js';
import { applyTheme, cycleTheme, openKeyDialog, saveKey, forgetKey, openChatDialog, saveChatDialog, exportAll, importFile, subscribeDialogs } from './view/dialogs.js';
import { toggleMenu, pickModel, onMenuKey, subscribePicker } from './view/models.js';
import { subscribeConnection } from './view/connection.js';
import { renderSidebar, startRename, deleteConversation, openSidebar, sidebarIsOpen, subscribeSidebar } from './view/sidebar.js';
import { subscribeLocation } from './view/location.js';
import { openUsage, subscribeUsage } from './view/usage.js';
import { onBatchClick, subscribeBatches } from './view/batches.js';
import { onThreadClick, onScroll, jumpToBottom, subscribeThread } from './view/thread.js';
import { updateComposer, onInputKey, submitComposer, updateMeter, subscribeComposer } from './view/composer.js';

function isMac() {
  return /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
}

/** @param {KeyboardEvent} ev */
function onGlobalKey(ev) {
  const mod = isMac() ? ev.metaKey : ev.ctrlKey;
  const k = ev.key.toLowerCase();
  if (mod && ev.shiftKey && k === 'o') { ev.preventDefault(); newChat(); return; }
  if (mod && ev.shiftKey && k === 's') { ev.preventDefault(); openSidebar(!sidebarIsOpen()); return; }
  if (mod && !ev.shiftKey && k === 'k') {
    ev.preventDefault();
    if (!sidebarIsOpen()) openSidebar(true);
    el.search.focus();
    el.search.select();
    return;
  }
  if (mod && (k === '/' || k === '?')) { ev.preventDefault(); el.helpDialog.showModal(); return; }
  if (ev.key === 'Escape') {
    if (document.querySelector('dialog[open]')) return; // the dialog closes itself
    if (!el.modelMenu.hidden) { toggleMenu(false); el.modelBtn.focus(); return; }
    if (ev.shiftKey) { ev.preventDefault(); el.input.focus(); return; }
    if (el.app.classList.contains('sb-mobile-open')) { openSidebar(false); return; }
    if (stopCurrent()) ev.preventDefault();
  }
}

/** @type {ReturnType<typeof setTimeout>|undefined} */
let searchTimer;

function wire() {
  el.composer.addEventListener('submit', (ev) => { ev.preventDefault(); submitComposer(); });
  el.input.addEventListener('keydown', onInputKey);
  el.input.addEventListener('input', () => { autosize(el.input); updateComposer(); updateMeter(); });
  el.stop.addEventListener('click', () => { stopCurrent(); el.input.focus(); });
  el.newChat.addEventListener('click', newChat);
  el.newChatTop.addEventListener('click', newChat);
  el.sbClose.addEventListener('click', () => openSidebar(false));
  el.sbOpen.addEventListener('click', () => openSidebar(!sidebarIsOpen()));
  el.backdrop.addEventListener('click', () => openSidebar(false));
  el.search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(renderSidebar, 120);
  });
  el.search.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && el.search.value) { ev.stopPropagation(); el.search.value = ''; renderSidebar(); }
  });
  el.convList.addEventListener('click', (ev) => {
    const target = targetOf(ev);
    const item = /** @type {HTMLElement|null} */ (target.closest('.conv-item'));
    if (!item || !item.dataset.id) return;
    const act = /** @type {HTMLElement|null} */ (target.closest('[data-act]'));
    ev.preventDefault();
    if (act && act.dataset.act === 'rename') startRename(item);
    else if (act && act.dataset.act === 'delete') deleteConversation(item.dataset.id);
    else if (target.closest('.conv-link')) openChat(item.dataset.id);
  });
  el.convList.addEventListener('dblclick', (ev) => {
    const item = /** @type {HTMLElement|null} */ (targetOf(ev).closest('.conv-item'));
    if (item && targetOf(ev).closest('.conv-link')) startRename(item);
  });
  el.thread.addEventListener('click', onThreadClick);
  el.scroller.addEventListener('scroll', onScroll, { passive: true });
  el.jump.addEventListener('click', jumpToBottom);
  el.ctxWarn.addEventListener('click', (ev) => { if (targetOf(ev).closest('[data-act="newchat"]')) newChat(); });
  el.modelBtn.addEventListener('click', () => toggleMenu());
  el.modelMenu.addEventListener('click', (ev) => {
    const opt = /** @type {HTMLElement|null} */ (targetOf(ev).closest('.model-opt'));
    if (opt) pickModel(opt.dataset.model);
  });
  el.modelMenu.addEventListener('keydown', onMenuKey);
  document.addEventListener('click', (ev) => {
    if (!el.modelMenu.hidden && !el.modelPicker.contains(targetOf(ev))) toggleMenu(false);
  });
  el.themeBtn.addEventListener('click', cycleTheme);
  el.helpBtn.addEventListener('click', () => el.helpDialog.showModal());
  el.chatSettingsBtn.addEventListener('click', openChatDialog);
  el.chatForm.addEventListener('submit', saveChatDialog);
  el.chatCancel.addEventListener('click', () => el.chatDialog.close());
  el.settingsBtn.addEventListener('click', () => { el.keyDialog.dataset.manual = '1'; openKeyDialog(); });
  el.keyDialog.addEventListener('close', () => { delete el.keyDialog.dataset.manual; });
  el.keyForm.addEventListener('submit', saveKey);
  el.keyCancel.addEventListener('click', () => el.keyDialog.close());
  el.keyClear.addEventListener('click', forgetKey);
  el.usageBtn.addEventListener('click', openUsage);
  el.usageRefresh.addEventListener('click', () => { loadUsage(); loadBatches(); });
  el.usageDialog.addEventListener('close', () => { watchBatches(false); });
  el.batchBody.addEventListener('click', onBatchClick);
  el.exportBtn.addEventListener('click', exportAll);
  el.importBtn.addEventListener('click', () => el.importFile.click());
  el.importFile.addEventListener('change', () => {
    const f = el.importFile.files && el.importFile.files[0];
    if (f) importFile(f);
    el.importFile.value = '';
  });
  el.bannerRetry.addEventListener('click', () => poll());
  document.addEventListener('keydown', onGlobalKey);
  window.addEventListener('hashchange', () => routeTo(location.hash));
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
  window.addEventListener('online', () => poll());
  window.addEventListener('storage', (ev) => {
    if (ev.key && ev.key.startsWith('localai.')) chatsChangedElsewhere(ev.key);
  });
  window.addEventListener('pagehide', pageUnloading);
  window.matchMedia('(max-width: 768px)').addEventListener('change', () => {
    el.app.classList.remove('sb-mobile-open');
    el.backdrop.hidden = true;
  });
}

/** The views draw from the store; the order here is the order they draw in. */
function subscribeViews() {
  subscribeSidebar();
  subscribePicker();
  subscribeThread();
  subscribeComposer();
  subscribeConnection();
  subscribeDialogs();
  subscribeLocation();
  subscribeUsage();
  subscribeBatches();
  store.subscribe(['notice'], (s) => { if (s.notice) toast(s.notice.text, s.notice.kind, s.notice.ms); });
}

function boot() {
  hydrateIcons();
  applyTheme();
  if (settings.get('sidebar', true) === false) el.app.classList.add('sb-collapsed');
  subscribeViews();
  wire();
  routeTo(location.hash);
  el.app.classList.add('ready');
  loadModels();
  poll();
  if (!window.matchMedia('(pointer: coarse)').matches) el.input.focus();
}

boot();
