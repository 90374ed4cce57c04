// LocalAI WebUI: a small, dependency-light chat client for the gateway.
import './styles.css';
import { $, h, fmtInt, fmtK, copyText } from './dom.js';
import { icon, hydrateIcons } from './icons.js';
import { StreamRenderer, renderMarkdown } from './markdown.js';
import { Store, settings, newConversation, titleFrom } from './store.js';
import { ApiError, apiKey, authHeaders, readError, getJSON, sseChunks, abortableSleep, withTimeout } from './api.js';

const POLL_OK_MS = 5000;
const POLL_HIDDEN_MS = 30000;
const WARN_AT = 0.6;
const HIGH_AT = 0.9;

const el = {};
for (const id of [
  'app', 'sidebar', 'sb-close', 'sb-open', 'new-chat', 'new-chat-top', 'search', 'conv-list', 'import-btn', 'export-btn',
  'settings-btn', 'import-file', 'backdrop', 'model-picker', 'model-btn', 'model-dot', 'model-name', 'model-state',
  'model-menu', 'conn', 'conn-label', 'chat-settings-btn', 'theme-btn', 'help-btn', 'banner', 'banner-text',
  'banner-retry', 'scroller', 'system-pill', 'thread', 'empty', 'empty-sub', 'jump', 'ctx-warn', 'composer', 'input',
  'send', 'stop', 'meter', 'meter-fill', 'meter-text', 'key-dialog', 'key-form', 'key-error', 'key-input', 'key-clear',
  'key-cancel', 'chat-dialog', 'chat-form', 'sys-input', 'temp-input', 'maxtok-input', 'chat-cancel',
  'confirm-dialog', 'confirm-text', 'confirm-title', 'help-dialog', 'toasts',
]) el[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = $(id);

const state = {
  models: [],
  modelsLoaded: false,
  auth: 'unknown', // unknown | ok | missing | bad
  health: null,
  conn: 'unknown', // unknown | ok | degraded | noready | down
  failCount: 0,
  nextPollAt: 0,
  pollTimer: 0,
  conv: null,
  stick: true,
};
const streams = new Map(); // conversation id -> active generation
const wakers = new Set(); // retry waits that end early when a model turns ready / the gateway is back

function wakeRetries() {
  for (const w of [...wakers]) w();
}
const store = new Store((e) => toast(storageMessage(e), 'error', 6000));

function storageMessage(e) {
  return e && e.name === 'QuotaExceededError'
    ? 'Browser storage is full: export and delete old chats to keep saving.'
    : 'Could not save to browser storage.';
}

/* ------------------------------------------------------------------ toasts */

function toast(text, kind = 'info', ms = 3500) {
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  el.toasts.append(t);
  setTimeout(() => {
    t.classList.add('out');
    setTimeout(() => t.remove(), 300);
  }, ms);
}

/* ------------------------------------------------------------------- theme */

const THEMES = ['system', 'light', 'dark'];
function applyTheme() {
  const t = settings.get('theme', 'system');
  if (t === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  el.themeBtn.innerHTML = icon(t === 'light' ? 'sun' : t === 'dark' ? 'moon' : 'monitor');
  el.themeBtn.title = `Theme: ${t} (click to change)`;
}
function cycleTheme() {
  const t = settings.get('theme', 'system');
  const next = THEMES[(THEMES.indexOf(t) + 1) % THEMES.length];
  settings.set('theme', next);
  applyTheme();
  toast(`Theme: ${next === 'system' ? 'follow system' : next}`);
}

/* ------------------------------------------------------------------ models */

function findModel(id) {
  if (!id) return null;
  return state.models.find((m) => m.id === id) || state.models.find((m) => (m.aliases || []).includes(id)) || null;
}

// Chat-capable models (the gateway may also list embedding models: task "embed").
const isChatModel = (m) => !m.task || m.task === 'generate' || m.task === 'chat';
const chatModels = () => state.models.filter(isChatModel);

function modelState(id) {
  const m = findModel(id);
  const key = m ? m.preset_of || m.id : id; // a preset runs on its base model's server
  const hm = state.health && state.health.models && state.health.models[key];
  if (hm && hm.state) return { state: hm.state, reason: hm.reason || null };
  if (m) return { state: m.state || 'ready', reason: m.state_reason || null };
  return { state: 'unknown', reason: null };
}

function currentModelId() {
  const c = state.conv;
  if (c && c.model && (findModel(c.model) || !state.modelsLoaded)) return c.model;
  const last = settings.get('model');
  if (last && findModel(last) && isChatModel(findModel(last))) return findModel(last).id;
  const chat = chatModels();
  const d = chat.find((m) => m.default) || chat.find((m) => modelState(m.id).state === 'ready') || chat[0];
  if (d) return d.id;
  return (c && c.model) || null;
}

function contextLimit(id) {
  const m = findModel(id);
  if (!m) return null;
  return m.context_limit || m.max_model_len || null;
}

const STATE_LABEL = { ready: 'Ready', loading: 'Loading…', failed: 'Failed', unknown: 'Unknown', stopped: 'Stopped' };

async function loadModels() {
  try {
    const { data } = await getJSON('v1/models', { auth: true });
    state.models = Array.isArray(data.data) ? data.data : [];
    state.modelsLoaded = true;
    if (state.auth !== 'ok') {
      state.auth = 'ok';
      if (el.keyDialog.open && !el.keyDialog.dataset.manual) el.keyDialog.close();
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      state.auth = apiKey() ? 'bad' : 'missing';
      openKeyDialog(
        state.auth === 'bad'
          ? 'The gateway did not accept the saved API key. Enter a valid key.'
          : 'This gateway needs an API key.',
      );
    } else if (e instanceof ApiError) {
      toast(`Could not load the model list: ${e.message}`, 'error');
    }
    // Network errors are reported by the connection indicator.
  }
  renderPicker();
  updateMeter();
  updateEmpty();
}

function renderPicker() {
  const id = currentModelId();
  const st = id ? modelState(id) : { state: 'unknown' };
  el.modelName.textContent = id || (state.auth === 'bad' || state.auth === 'missing' ? 'API key needed' : 'No model');
  el.modelDot.dataset.state = st.state;
  el.modelState.textContent = id && st.state !== 'ready' ? STATE_LABEL[st.state] || st.state : '';
  el.modelBtn.dataset.state = st.state;
  if (!el.modelMenu.hidden) renderMenu();
}

function renderMenu() {
  const cur = currentModelId();
  const items = chatModels().map((m) => {
    const st = modelState(m.id);
    const lim = contextLimit(m.id);
    const meta = [STATE_LABEL[st.state] || st.state, lim ? `${fmtK(lim)} ctx` : null].filter(Boolean).join(' · ');
    const about = [];
    if (m.preset_of) about.push(`preset of ${m.preset_of}`);
    if (m.defaults && typeof m.defaults === 'object') {
      for (const [k, v] of Object.entries(m.defaults)) about.push(`${k.replace('temperature', 'temp')} ${v}`);
    }
    if (m.aliases && m.aliases.length) about.push(`aka ${m.aliases.join(', ')}`);
    return h(
      'button',
      {
        type: 'button',
        class: `model-opt${m.id === cur ? ' selected' : ''}`,
        role: 'option',
        'aria-selected': m.id === cur ? 'true' : 'false',
        dataset: { model: m.id, state: st.state },
        title: st.reason || '',
      },
      h('span', { class: 'dot', dataset: { state: st.state } }),
      h(
        'span',
        { class: 'opt-main' },
        h('span', { class: 'opt-name' }, m.id, m.default ? h('span', { class: 'badge' }, 'default') : null),
        about.length ? h('span', { class: 'opt-alias', title: about.join(' · ') }, about.join(' · ')) : null,
        st.state === 'failed' && st.reason ? h('span', { class: 'opt-reason' }, st.reason) : null,
      ),
      h('span', { class: 'opt-meta' }, meta),
      m.id === cur ? h('span', { class: 'opt-check', html: icon('check') }) : null,
    );
  });
  if (!items.length) {
    items.push(
      h('div', { class: 'model-empty' }, state.auth === 'ok' || state.auth === 'unknown' ? 'No models available.' : 'Enter an API key to list models.'),
    );
  }
  const focused = el.modelMenu.contains(document.activeElement) ? document.activeElement.dataset.model : null;
  el.modelMenu.replaceChildren(...items);
  if (focused) {
    const again = el.modelMenu.querySelector(`.model-opt[data-model="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function toggleMenu(open = el.modelMenu.hidden) {
  if (open) {
    renderMenu();
    el.modelMenu.hidden = false;
    el.modelBtn.setAttribute('aria-expanded', 'true');
    const sel = el.modelMenu.querySelector('.selected') || el.modelMenu.querySelector('.model-opt');
    if (sel) sel.focus();
    poll(); // fresh model states while the menu is open
  } else {
    el.modelMenu.hidden = true;
    el.modelBtn.setAttribute('aria-expanded', 'false');
  }
}

function pickModel(id) {
  toggleMenu(false);
  el.modelBtn.focus();
  if (!id) return;
  state.conv.model = id;
  settings.set('model', id);
  if (store.has(state.conv.id)) store.save(state.conv, { touch: false });
  renderPicker();
  updateMeter();
  updateEmpty();
}

/* -------------------------------------------------------------- connection */

async function poll() {
  clearTimeout(state.pollTimer);
  let next = document.hidden ? POLL_HIDDEN_MS : POLL_OK_MS;
  const wasDown = state.conn === 'down';
  try {
    const t = withTimeout(5000);
    let hr;
    let rr;
    try {
      [hr, rr] = await Promise.all([
        // With the key, /health also says why a model is down.
        fetch('health', { headers: authHeaders(), cache: 'no-store', signal: t.signal }),
        fetch('ready', { cache: 'no-store', signal: t.signal }),
      ]);
    } finally {
      t.done();
    }
    if (hr.status >= 500 && hr.status !== 503) throw new Error(`HTTP ${hr.status}`);
    let health = null;
    try { health = await hr.json(); } catch { health = null; }
    state.health = health && typeof health === 'object' ? health : null;
    state.failCount = 0;
    const hm = (state.health && state.health.models) || {};
    const states = Object.values(hm).map((m) => (m && m.state) || 'unknown');
    const ready = rr.status === 200;
    const prev = state.prevStates || {};
    const nowReady = Object.entries(hm).some(([k, m]) => m && m.state === 'ready' && prev[k] && prev[k] !== 'ready');
    state.prevStates = Object.fromEntries(Object.entries(hm).map(([k, m]) => [k, m && m.state]));
    if (wasDown || nowReady) wakeRetries();
    if (!ready) setConn('noready', states.includes('loading') ? 'Models loading…' : 'No model ready');
    else if (states.some((s) => s !== 'ready')) {
      const n = states.filter((s) => s !== 'ready').length;
      setConn('degraded', `Connected · ${n} not ready`);
    } else setConn('ok', 'Connected');
    // Reload the model list when the gateway's set of models changed.
    const known = state.models.map((m) => m.id).sort().join(',');
    const now = Object.keys(hm).sort().join(',');
    if (wasDown || (state.auth !== 'bad' && state.auth !== 'missing' && now && now !== known)) await loadModels();
    if (wasDown) toast('Reconnected to the gateway.', 'ok');
  } catch {
    state.failCount++;
    next = Math.min(8000, 1000 * 2 ** Math.min(state.failCount - 1, 3));
    state.nextPollAt = Date.now() + next;
    setConn('down');
  }
  renderPicker();
  updateEmpty();
  state.pollTimer = setTimeout(poll, next);
}

function setConn(s, label) {
  state.conn = s;
  el.conn.dataset.state = s;
  el.app.dataset.conn = s;
  if (s === 'down') {
    const secs = Math.max(0, Math.ceil((state.nextPollAt - Date.now()) / 1000));
    el.connLabel.textContent = 'Offline';
    el.conn.title = 'The gateway is not reachable';
    el.banner.hidden = false;
    el.bannerText.textContent = secs > 0
      ? `Can't reach the gateway — it may be restarting. Retrying in ${secs} s…`
      : "Can't reach the gateway — it may be restarting. Retrying…";
  } else {
    el.connLabel.textContent = label;
    el.conn.title = label;
    el.banner.hidden = true;
  }
}

setInterval(() => {
  if (state.conn === 'down') setConn('down');
}, 1000);

/* ---------------------------------------------------------------- sidebar */

function dayGroup(ts) {
  const d = new Date(ts);
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const diff = (today - new Date(d.getFullYear(), d.getMonth(), d.getDate())) / 86400000;
  if (diff <= 0) return 'Today';
  if (diff <= 1) return 'Yesterday';
  if (diff <= 7) return 'Previous 7 days';
  if (diff <= 30) return 'Previous 30 days';
  return d.toLocaleDateString(undefined, { year: 'numeric', month: 'long' });
}

function renderSidebar() {
  const q = el.search.value.trim().toLowerCase();
  let items = store.list();
  if (q) {
    const jq = JSON.stringify(q).slice(1, -1);
    items = items.filter((e) => e.title.toLowerCase().includes(q) || store.raw(e.id).toLowerCase().includes(jq));
  }
  const frag = document.createDocumentFragment();
  let group = null;
  for (const e of items) {
    const g = dayGroup(e.updated);
    if (g !== group) {
      group = g;
      frag.append(h('div', { class: 'conv-group' }, g));
    }
    const active = state.conv && state.conv.id === e.id;
    frag.append(
      h(
        'div',
        { class: `conv-item${active ? ' active' : ''}${streams.has(e.id) ? ' live' : ''}`, dataset: { id: e.id } },
        h('a', { class: 'conv-link', href: `#/c/${e.id}`, title: e.title, 'aria-current': active ? 'page' : null }, e.title),
        h(
          'span',
          { class: 'conv-acts' },
          h('button', { type: 'button', class: 'mini-btn', dataset: { act: 'rename' }, title: 'Rename', 'aria-label': 'Rename chat', html: icon('rename') }),
          h('button', { type: 'button', class: 'mini-btn', dataset: { act: 'delete' }, title: 'Delete', 'aria-label': 'Delete chat', html: icon('trash') }),
        ),
      ),
    );
  }
  if (!items.length) frag.append(h('div', { class: 'conv-none' }, q ? 'No chats match your search.' : 'No chats yet.'));
  el.convList.replaceChildren(frag);
}

function startRename(item) {
  const id = item.dataset.id;
  const entry = store.list().find((e) => e.id === id);
  if (!entry) return;
  const input = h('input', { class: 'rename-input', value: entry.title, 'aria-label': 'Chat title', maxlength: '200' });
  const link = item.querySelector('.conv-link');
  link.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (commit) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (commit && title && title !== entry.title) {
      const conv = state.conv && state.conv.id === id ? state.conv : store.load(id);
      if (conv) {
        conv.title = title;
        conv.renamed = true;
        store.save(conv, { touch: false });
        if (state.conv && state.conv.id === id) document.title = `${title} · LocalAI`;
      }
    }
    renderSidebar();
  };
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') { ev.preventDefault(); finish(true); }
    else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
}

async function deleteConversation(id) {
  const entry = store.list().find((e) => e.id === id);
  if (!entry) return;
  const ok = await confirmDialog('Delete chat?', `“${entry.title}” will be removed from this browser.`, 'Delete');
  if (!ok) return;
  const s = streams.get(id);
  if (s) {
    s.conv.deleted = true; // the ending stream must not save it back
    s.ctrl.abort();
  }
  store.remove(id);
  if (state.conv && state.conv.id === id) newChat();
  else renderSidebar();
  toast('Chat deleted.');
}

function openSidebar(open) {
  const mobile = window.matchMedia('(max-width: 768px)').matches;
  if (mobile) {
    el.app.classList.toggle('sb-mobile-open', open);
    el.backdrop.hidden = !open;
  } else {
    el.app.classList.toggle('sb-collapsed', !open);
    settings.set('sidebar', open);
  }
}
function sidebarIsOpen() {
  const mobile = window.matchMedia('(max-width: 768px)').matches;
  return mobile ? el.app.classList.contains('sb-mobile-open') : !el.app.classList.contains('sb-collapsed');
}
function closeMobileSidebar() {
  if (el.app.classList.contains('sb-mobile-open')) openSidebar(false);
}

/* ---------------------------------------------------------- conversations */

function setHash(id) {
  const want = id ? `#/c/${id}` : '#/';
  if (location.hash !== want) history.replaceState(null, '', want);
}

function newChat() {
  const model = currentModelId();
  state.conv = newConversation(model);
  setHash(null);
  document.title = 'LocalAI';
  renderAll();
  closeMobileSidebar();
  el.input.focus();
}

function openConversation(id) {
  if (state.conv && state.conv.id === id) {
    closeMobileSidebar();
    return;
  }
  const live = streams.get(id);
  const conv = live ? live.conv : store.load(id);
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

function routeFromHash() {
  const m = /^#\/c\/([\w-]+)$/.exec(location.hash);
  if (m && store.has(m[1])) openConversation(m[1]);
  else if (!state.conv || (m && !store.has(m[1]))) newChat();
}

function renderAll() {
  renderSidebar();
  renderPicker();
  renderThread();
  updateComposer();
  updateMeter();
}

function updateEmpty() {
  const empty = !state.conv || state.conv.messages.length === 0;
  el.empty.hidden = !empty;
  const id = currentModelId();
  if (empty) {
    if (state.auth === 'bad' || state.auth === 'missing') el.emptySub.textContent = 'Enter your API key to start chatting.';
    else if (id) {
      const { state: st, reason } = modelState(id);
      el.emptySub.textContent = st === 'ready' ? `Chatting with ${id}.`
        : st === 'loading' ? `${id} is still loading. You can type already; the answer starts once it is ready.`
          : st === 'failed' ? `${id} is unavailable${reason ? `: ${reason}` : ''}. Pick another model or try again later.`
            : `Chatting with ${id}.`;
    } else el.emptySub.textContent = 'Pick a model above and start typing.';
  }
  const sys = state.conv && state.conv.system && state.conv.system.trim();
  el.systemPill.hidden = !sys;
  if (sys) {
    el.systemPill.replaceChildren(h('span', { class: 'pill-label' }, 'System prompt'), h('span', { class: 'pill-text' }, sys));
  }
}

/* ----------------------------------------------------------------- thread */

function actBtn(act, label, ic) {
  return h('button', { type: 'button', class: `act-btn act-${act}`, dataset: { act }, title: label, 'aria-label': label, html: icon(ic) });
}

function fmtStats(s) {
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

function truncNotice(n) {
  return h(
    'div',
    { class: 'notice trunc', role: 'note' },
    h('span', { html: icon('info') }),
    `To fit the context window, the gateway left out the ${n === 1 ? 'oldest message' : `${n} oldest messages`} of this chat.`,
  );
}

function errorBox(m) {
  const e = m.error || {};
  const actions = [];
  if (e.status === 401) actions.push(h('button', { type: 'button', class: 'btn small', dataset: { act: 'key' } }, 'Enter API key'));
  actions.push(h('button', { type: 'button', class: 'btn small', dataset: { act: 'regen' } }, 'Try again'));
  return h(
    'div',
    { class: 'error-box', role: 'alert' },
    h('div', { class: 'error-title' }, h('span', { html: icon('warn') }), e.title || 'Something went wrong'),
    e.detail ? h('div', { class: 'error-detail' }, e.detail) : null,
    h('div', { class: 'error-actions' }, actions),
  );
}

function messageView(m) {
  if (m.role === 'user') {
    const art = h(
      'article',
      { class: 'msg user', dataset: { id: m.id } },
      h('div', { class: 'bubble' }, m.content),
      h('div', { class: 'actions' }, actBtn('copy', 'Copy', 'copy'), actBtn('edit', 'Edit', 'edit')),
    );
    return { art };
  }
  const status = m.status || 'done';
  const body = h('div', { class: 'md body' });
  const reasoning = h('details', { class: 'reasoning', hidden: !m.reasoning },
    h('summary', {}, h('span', { html: icon('brain') }), status === 'streaming' && !m.content ? 'Thinking…' : 'Reasoning'),
    h('div', { class: 'reasoning-body' }, m.reasoning || ''));
  const wait = h('div', { class: 'wait', role: 'status', hidden: true });
  const stats = h('span', { class: 'stats' }, fmtStats(m.stats));
  const flag = h('span', { class: 'flag' }, status === 'stopped' ? 'Stopped' : m.finish === 'length' ? 'Cut off (max tokens)' : '');
  const art = h(
    'article',
    { class: `msg assistant ${status}`, dataset: { id: m.id, status, finish: m.finish || '' } },
    h('div', { class: 'msg-head' }, h('span', { class: 'avatar', html: icon('spark') }), h('span', { class: 'msg-model' }, m.model || 'assistant')),
    m.truncated ? truncNotice(m.truncated) : null,
    reasoning,
    body,
    wait,
    m.error ? errorBox(m) : null,
    h('div', { class: 'actions' }, actBtn('copy', 'Copy', 'copy'), actBtn('regen', 'Regenerate', 'regen'), flag, stats),
  );
  if (status !== 'streaming' && m.content) body.innerHTML = renderMarkdown(m.content);
  return { art, body, wait, stats, reasoning, flag };
}

function renderThread() {
  const conv = state.conv;
  const frag = document.createDocumentFragment();
  for (const m of conv.messages) {
    const live = streams.get(conv.id);
    const v = messageView(m);
    if (live && live.msg === m) {
      live.view = v;
      live.renderer = new StreamRenderer(v.body);
      live.renderer.update(m.content);
    }
    frag.append(v.art);
  }
  el.thread.replaceChildren(frag);
  updateEmpty();
  state.stick = true;
  scrollToBottom(true);
}

function appendMessage(m) {
  const v = messageView(m);
  el.thread.append(v.art);
  updateEmpty();
  return v;
}

function scrollToBottom(force = false) {
  if (force || state.stick) el.scroller.scrollTop = el.scroller.scrollHeight;
}

function onScroll() {
  const d = el.scroller.scrollHeight - el.scroller.scrollTop - el.scroller.clientHeight;
  state.stick = d < 80;
  el.jump.hidden = d < 240;
}

function msgFromEvent(target) {
  const art = target.closest('article.msg');
  if (!art || !state.conv) return {};
  const m = state.conv.messages.find((x) => x.id === art.dataset.id);
  return { art, m };
}

async function onThreadClick(ev) {
  const btn = ev.target.closest('[data-act]');
  if (!btn) return;
  const act = btn.dataset.act;
  if (act === 'copy-code') {
    const code = btn.closest('.code-block').querySelector('code');
    const ok = await copyText(code ? code.textContent : '');
    flash(btn, ok ? 'Copied!' : 'Copy failed');
    return;
  }
  const { art, m } = msgFromEvent(btn);
  if (!m) return;
  if (act === 'copy') {
    const ok = await copyText(m.content);
    btn.innerHTML = icon(ok ? 'check' : 'warn');
    setTimeout(() => { btn.innerHTML = icon('copy'); }, 1500);
  } else if (act === 'edit') startEdit(art, m);
  else if (act === 'regen') regenerate();
  else if (act === 'key') openKeyDialog();
}

function flash(btn, text) {
  const old = btn.textContent;
  btn.textContent = text;
  btn.classList.add('done');
  setTimeout(() => {
    btn.textContent = old;
    btn.classList.remove('done');
  }, 1500);
}

function startEdit(art, m) {
  if (art.classList.contains('editing')) return;
  const conv = state.conv;
  const ta = h('textarea', { class: 'edit-input', 'aria-label': 'Edit message', rows: '3' });
  ta.value = m.content;
  const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
  const save = h('button', { type: 'button', class: 'btn primary' }, 'Send');
  const box = h('div', { class: 'edit-box' }, ta, h('div', { class: 'edit-actions' }, cancel, save));
  const bubble = art.querySelector('.bubble');
  bubble.replaceWith(box);
  art.classList.add('editing');
  autosize(ta, 400);
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
  ta.addEventListener('input', () => autosize(ta, 400));
  const close = () => {
    box.replaceWith(bubble);
    art.classList.remove('editing');
  };
  const submit = () => {
    const text = ta.value;
    if (!text.trim()) return;
    const live = streams.get(conv.id);
    if (live) live.ctrl.abort();
    const idx = conv.messages.indexOf(m);
    if (idx < 0) return close();
    m.content = text;
    conv.messages.length = idx + 1;
    if (!conv.renamed && conv.messages.find((x) => x.role === 'user') === m) conv.title = titleFrom(conv.messages);
    store.save(conv);
    renderThread();
    renderSidebar();
    generate(conv);
  };
  cancel.addEventListener('click', close);
  save.addEventListener('click', submit);
  ta.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
    else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); close(); }
  });
}

/* --------------------------------------------------------------- composer */

function autosize(ta, max = 220) {
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight, max)}px`;
}

function updateComposer() {
  const live = state.conv && streams.has(state.conv.id);
  el.send.hidden = !!live;
  el.stop.hidden = !live;
  el.send.disabled = !el.input.value.trim();
}

function onInputKey(ev) {
  if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing || ev.keyCode === 229) return;
  // On touch devices Enter inserts a new line; the send button sends (as in other chat apps).
  if (window.matchMedia('(pointer: coarse)').matches && !ev.ctrlKey && !ev.metaKey) return;
  ev.preventDefault();
  submitComposer();
}

function submitComposer() {
  const text = el.input.value;
  if (!text.trim()) return;
  if (state.conv && streams.has(state.conv.id)) return;
  if (state.auth === 'bad' || state.auth === 'missing') {
    openKeyDialog(state.auth === 'bad' ? 'The gateway did not accept the saved API key. Enter a valid key.' : 'This gateway needs an API key.');
    return;
  }
  el.input.value = '';
  autosize(el.input);
  send(text);
}

function send(text) {
  const conv = state.conv;
  // An answer that failed or was stopped before any output is replaced by the new turn.
  while (conv.messages.length) {
    const last = conv.messages[conv.messages.length - 1];
    if (last.role === 'assistant' && !last.content && (last.status === 'error' || last.status === 'stopped')) {
      conv.messages.pop();
      const node = el.thread.querySelector(`article[data-id="${last.id}"]`);
      if (node) node.remove();
    } else break;
  }
  const m = { id: uidMsg(), role: 'user', content: text, created: Date.now() };
  conv.messages.push(m);
  if (!conv.model) conv.model = currentModelId();
  if (!conv.renamed && conv.messages.filter((x) => x.role === 'user').length === 1) conv.title = titleFrom(conv.messages);
  store.save(conv);
  setHash(conv.id);
  document.title = `${conv.title} · LocalAI`;
  appendMessage(m);
  state.stick = true;
  scrollToBottom(true);
  renderSidebar();
  generate(conv);
}

function uidMsg() {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function regenerate() {
  const conv = state.conv;
  if (streams.has(conv.id)) return;
  let i = conv.messages.length - 1;
  while (i >= 0 && conv.messages[i].role === 'assistant') i--;
  if (i < 0) return;
  for (const m of conv.messages.slice(i + 1)) {
    const node = el.thread.querySelector(`article[data-id="${m.id}"]`);
    if (node) node.remove();
  }
  conv.messages.length = i + 1;
  store.save(conv);
  generate(conv);
}

function apiMessages(conv, upto) {
  const out = [];
  if (conv.system && conv.system.trim()) out.push({ role: 'system', content: conv.system });
  for (const m of conv.messages.slice(0, upto)) {
    if (m.role === 'assistant' && !m.content) continue;
    out.push({ role: m.role, content: m.content });
  }
  return out;
}

/* -------------------------------------------------------------- streaming */

function retryPolicy(e) {
  if (e.network) return { max: 5, cap: 8, text: (s) => `Can't reach the gateway. Retrying in ${s} s…` };
  if (e.status === 429) return { max: 6, cap: 30, text: (s, a, max) => `The gateway is busy (queue full). Retrying in ${s} s… (retry ${a} of ${max})` };
  if (e.status === 503 && e.code === 'model_loading') return { max: 60, cap: 10, text: (s) => `The model is loading. Retrying in ${s} s…` };
  if (e.status === 502 || e.status === 503 || e.status === 504) return { max: 4, cap: 10, text: (s, a, max) => `The model server is unavailable (HTTP ${e.status}). Retrying in ${s} s… (retry ${a} of ${max})` };
  return null;
}

function describeError(e, model) {
  if (e.network) return { title: "Can't reach the gateway.", detail: 'It may be restarting. The status indicator at the top shows when it is back; then try again.' };
  const detail = [e.message, e.code ? `(${e.code})` : null, e.requestId ? `request ${e.requestId}` : null].filter(Boolean).join(' ');
  if (e.status === 401) return { title: 'The gateway did not accept your API key.', detail: 'Enter a valid key to continue.', status: 401 };
  if (e.status === 404 || e.code === 'model_not_found') return { title: `The model “${model}” is not available on this gateway.`, detail };
  if (e.code === 'context_length_exceeded') return { title: 'This chat is too long for the model’s context window.', detail: `Start a new chat, or edit an earlier message to shorten it. ${detail}` };
  if (e.status === 429) return { title: 'The gateway is still busy; gave up after several retries.', detail };
  if (e.status === 503) return { title: e.code === 'model_loading' ? 'The model is still loading.' : 'The model server is unavailable.', detail };
  return { title: `Request failed${e.status ? ` (HTTP ${e.status})` : ''}.`, detail };
}

async function generate(conv) {
  const model = currentModelId();
  if (!model) {
    toast(state.auth === 'ok' ? 'No model is available.' : 'Enter an API key first.', 'error');
    if (state.auth !== 'ok') openKeyDialog();
    return;
  }
  const upto = conv.messages.length;
  const msg = { id: uidMsg(), role: 'assistant', content: '', model, created: Date.now(), status: 'streaming' };
  conv.messages.push(msg);
  const s = { conv, msg, ctrl: new AbortController(), view: null, renderer: null, raf: 0 };
  streams.set(conv.id, s);
  if (state.conv === conv) {
    s.view = appendMessage(msg);
    s.renderer = new StreamRenderer(s.view.body);
    scrollToBottom();
  }
  updateComposer();
  renderSidebar();

  const body = { model, messages: apiMessages(conv, upto), stream: true, stream_options: { include_usage: true } };
  const p = conv.params || {};
  if (p.temperature != null && p.temperature !== '') body.temperature = Number(p.temperature);
  if (p.max_tokens != null && p.max_tokens !== '') body.max_tokens = Number(p.max_tokens);

  let usage = null;
  let chunks = 0;
  let tStart = 0;
  let tFirst = 0;
  let lastSave = Date.now();
  let lastYield = performance.now();
  let attempt = 0;
  try {
    let resp;
    for (;;) {
      let err = null;
      tStart = performance.now();
      try {
        resp = await fetch('v1/chat/completions', {
          method: 'POST',
          headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
          body: JSON.stringify(body),
          signal: s.ctrl.signal,
          cache: 'no-store',
        });
        if (!resp.ok) err = await readError(resp);
      } catch (e) {
        if (e.name === 'AbortError') throw e;
        err = Object.assign(new Error('network'), { network: true });
        poll();
      }
      if (!err) break;
      const pol = retryPolicy(err);
      if (!pol || attempt >= pol.max) throw err;
      attempt++;
      const secs = Math.min(pol.cap, Math.max(err.retryAfter || 0, 2 ** (attempt - 1)));
      setWait(s, pol.text(secs, attempt, pol.max));
      const early = new AbortController();
      const wake = () => early.abort();
      wakers.add(wake);
      try {
        await abortableSleep(secs * 1000, anySignal(s.ctrl.signal, early.signal), (left) => setWait(s, pol.text(left, attempt, pol.max)));
      } catch (e) {
        if (s.ctrl.signal.aborted) throw e; // stopped by the user; else woken early: retry now
      } finally {
        wakers.delete(wake);
      }
      setWait(s, null);
    }
    setWait(s, null);
    msg.requestId = resp.headers.get('X-Request-ID') || undefined;
    const trunc = Number(resp.headers.get('X-LocalAI-Truncated-Messages') || 0);
    if (trunc > 0) {
      msg.truncated = trunc;
      if (s.view) s.view.body.before(truncNotice(trunc));
    }
    for await (const chunk of sseChunks(resp)) {
      if (chunk.usage) usage = chunk.usage;
      const ch = chunk.choices && chunk.choices[0];
      if (!ch) continue;
      const d = ch.delta || {};
      const piece = d.content || '';
      const think = d.reasoning_content || d.reasoning || '';
      if (piece || think) {
        if (!tFirst) tFirst = performance.now();
        chunks++;
        if (piece) msg.content += piece;
        if (think) msg.reasoning = (msg.reasoning || '') + think;
        schedulePaint(s);
        if (Date.now() - lastSave > 3000 && !conv.deleted) {
          lastSave = Date.now();
          store.save(conv);
        }
      }
      if (ch.finish_reason) msg.finish = ch.finish_reason;
      // Reads of data already received resolve as microtasks: a fast model would keep
      // this loop running with no frame painted and no key or click (Stop!) handled.
      if (performance.now() - lastYield > 10) {
        await yieldToBrowser();
        lastYield = performance.now();
      }
    }
    msg.status = 'done';
  } catch (e) {
    if ((e && e.name === 'AbortError') || state.unloading) msg.status = 'stopped';
    else {
      msg.status = 'error';
      const err = e instanceof ApiError || (e && e.network) ? e : Object.assign(new Error(String((e && e.message) || e)), { network: true });
      msg.error = describeError(err, model);
      if (err.status === 401) {
        state.auth = 'bad';
        renderPicker();
      }
      if (err.status === 404) loadModels();
    }
  }
  const tEnd = performance.now();
  setWait(s, null);
  const completion = usage && usage.completion_tokens != null ? usage.completion_tokens : chunks || null;
  if (tFirst || usage) {
    const gen = (tEnd - tFirst) / 1000;
    msg.stats = {
      ttft_ms: tFirst ? Math.round(tFirst - tStart) : null,
      tps: tFirst && completion >= 4 && gen > 0.05 ? (completion - 1) / gen : null,
      prompt_tokens: usage ? usage.prompt_tokens : null,
      completion_tokens: completion,
      estimated: !usage,
    };
  }
  // An edit may already have started the next answer for this chat.
  if (streams.get(conv.id) === s) streams.delete(conv.id);
  if (s.raf) cancelAnimationFrame(s.raf);
  if (!conv.deleted && conv.messages.includes(msg)) store.save(conv);
  if (state.conv === conv && s.view && s.view.art.isConnected) {
    const v = messageView(msg);
    s.view.art.replaceWith(v.art);
    scrollToBottom();
  }
  if (state.conv === conv) {
    updateComposer();
    updateMeter();
  }
  renderSidebar();
}

function anySignal(...signals) {
  const c = new AbortController();
  for (const sig of signals) {
    if (sig.aborted) c.abort();
    else sig.addEventListener('abort', () => c.abort(), { once: true });
  }
  return c.signal;
}

function setWait(s, text) {
  if (!s.view) return;
  s.view.wait.hidden = !text;
  s.view.wait.textContent = text || '';
  s.view.art.classList.toggle('waiting', !!text);
}

const yieldToBrowser = () => (globalThis.scheduler && scheduler.yield ? scheduler.yield() : new Promise((r) => setTimeout(r, 0)));

function schedulePaint(s) {
  if (s.raf || !s.view) return;
  s.raf = requestAnimationFrame(() => {
    s.raf = 0;
    if (!s.view || !s.view.art.isConnected) return;
    s.renderer.update(s.msg.content);
    if (s.msg.reasoning) {
      s.view.reasoning.hidden = false;
      if (!s.msg.content) s.view.reasoning.open = true;
      s.view.reasoning.lastChild.textContent = s.msg.reasoning;
    }
    if (s.msg.content) s.view.art.classList.add('has-text');
    scrollToBottom();
  });
}

function stopCurrent() {
  const s = state.conv && streams.get(state.conv.id);
  if (!s) return false;
  s.ctrl.abort();
  return true;
}

/* ------------------------------------------------------------------ meter */

const est = (t) => Math.ceil((t || '').length / 4);

function estimateTokens(conv, draft) {
  let total = 0;
  let from = 0;
  for (let i = conv.messages.length - 1; i >= 0; i--) {
    const m = conv.messages[i];
    if (m.role === 'assistant' && m.stats && m.stats.prompt_tokens != null && !m.stats.estimated) {
      total = m.stats.prompt_tokens + (m.stats.completion_tokens || 0);
      from = i + 1;
      break;
    }
  }
  if (from === 0 && conv.system) total += est(conv.system) + 4;
  for (const m of conv.messages.slice(from)) total += est(m.content) + 4;
  if (draft && draft.trim()) total += est(draft) + 4;
  return total;
}

let meterQueued = false;
function updateMeter() {
  if (meterQueued) return;
  meterQueued = true;
  requestAnimationFrame(() => {
    meterQueued = false;
    const conv = state.conv;
    const id = currentModelId();
    const limit = contextLimit(id);
    const used = conv ? estimateTokens(conv, el.input.value) : 0;
    if (!limit) {
      el.meter.hidden = !used;
      el.meterText.textContent = used ? `≈${fmtInt(used)} tokens` : '';
      el.meterFill.style.width = '0%';
      el.ctxWarn.hidden = true;
      return;
    }
    el.meter.hidden = false;
    const frac = used / limit;
    const lastAnswer = conv ? [...conv.messages].reverse().find((m) => m.role === 'assistant') : null;
    const dropped = lastAnswer && lastAnswer.truncated ? lastAnswer.truncated : 0;
    let level = frac >= HIGH_AT ? 'high' : frac >= WARN_AT ? 'warn' : 'ok';
    if (dropped && level === 'ok') level = 'warn';
    el.meter.dataset.level = level;
    el.meterFill.style.width = `${Math.min(100, frac * 100).toFixed(1)}%`;
    el.meterText.textContent = `${fmtInt(used)} / ${fmtInt(limit)} tokens`;
    el.meter.title = `About ${fmtInt(used)} of ${fmtInt(limit)} tokens of ${id}'s context are in use (${Math.round(frac * 100)}%).`;
    el.ctxWarn.hidden = level === 'ok';
    el.ctxWarn.dataset.level = level;
    if (level !== 'ok') {
      el.ctxWarn.replaceChildren(
        h('span', { html: icon('warn') }),
        h('span', {}, dropped && frac < 1
          ? `The gateway left out the ${dropped === 1 ? 'oldest message' : `${dropped} oldest messages`} to fit ${id}’s context.`
          : frac >= 1
            ? `Longer than ${id}’s context: the oldest messages are left out of each request.`
            : `${Math.round(frac * 100)}% of ${id}’s context used. Older messages will be left out once it is full.`),
        h('button', { type: 'button', class: 'link-btn', dataset: { act: 'newchat' } }, 'New chat'),
      );
    }
  });
}

/* ---------------------------------------------------------------- dialogs */

function openKeyDialog(message) {
  el.keyError.hidden = !message;
  el.keyError.textContent = message || '';
  el.keyInput.value = apiKey();
  if (!el.keyDialog.open) el.keyDialog.showModal();
  el.keyInput.focus();
  el.keyInput.select();
}

async function saveKey(ev) {
  ev.preventDefault();
  const key = el.keyInput.value.trim();
  settings.set('apiKey', key || null);
  el.keyError.hidden = true;
  try {
    await getJSON('v1/models', { auth: true });
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
  state.auth = 'unknown';
  await loadModels();
  if (state.auth === 'ok') toast('API key saved.', 'ok');
  el.input.focus();
}

function openChatDialog() {
  const c = state.conv;
  el.sysInput.value = c.system || '';
  el.tempInput.value = c.params && c.params.temperature != null ? c.params.temperature : '';
  el.maxtokInput.value = c.params && c.params.max_tokens != null ? c.params.max_tokens : '';
  el.chatDialog.showModal();
  el.sysInput.focus();
}

function saveChatDialog(ev) {
  ev.preventDefault();
  const c = state.conv;
  c.system = el.sysInput.value;
  const t = el.tempInput.value.trim();
  const mt = el.maxtokInput.value.trim();
  c.params = {};
  if (t !== '' && !Number.isNaN(Number(t))) c.params.temperature = Math.max(0, Math.min(2, Number(t)));
  if (mt !== '' && Number(mt) > 0) c.params.max_tokens = Math.floor(Number(mt));
  if (c.messages.length || store.has(c.id)) store.save(c, { touch: false });
  el.chatDialog.close();
  updateEmpty();
  updateMeter();
}

function confirmDialog(title, text, okLabel = 'OK') {
  el.confirmTitle.textContent = title;
  el.confirmText.textContent = text;
  $('confirm-ok').textContent = okLabel;
  el.confirmDialog.returnValue = '';
  el.confirmDialog.showModal();
  return new Promise((resolve) => {
    el.confirmDialog.addEventListener('close', () => resolve(el.confirmDialog.returnValue === 'ok'), { once: true });
  });
}

/* -------------------------------------------------------- import / export */

function exportAll() {
  const data = store.exportAll();
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

async function importFile(file) {
  try {
    const data = JSON.parse(await file.text());
    const { added, skipped } = store.importData(data);
    renderSidebar();
    toast(`Imported ${added} chat${added === 1 ? '' : 's'}${skipped ? ` (${skipped} already present or invalid)` : ''}.`, 'ok', 5000);
  } catch (e) {
    toast(`Import failed: ${e instanceof SyntaxError ? 'the file is not valid JSON.' : e.message}`, 'error', 6000);
  }
}

/* ---------------------------------------------------------------- wiring */

function isMac() {
  return /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
}

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

function onMenuKey(ev) {
  const opts = [...el.modelMenu.querySelectorAll('.model-opt')];
  const i = opts.indexOf(document.activeElement);
  if (ev.key === 'ArrowDown') { ev.preventDefault(); (opts[i + 1] || opts[0]).focus(); }
  else if (ev.key === 'ArrowUp') { ev.preventDefault(); (opts[i - 1] || opts[opts.length - 1]).focus(); }
  else if (ev.key === 'Tab') toggleMenu(false);
}

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
    clearTimeout(el.search.timer);
    el.search.timer = setTimeout(renderSidebar, 120);
  });
  el.search.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && el.search.value) { ev.stopPropagation(); el.search.value = ''; renderSidebar(); }
  });
  el.convList.addEventListener('click', (ev) => {
    const item = ev.target.closest('.conv-item');
    if (!item) return;
    const act = ev.target.closest('[data-act]');
    ev.preventDefault();
    if (act && act.dataset.act === 'rename') startRename(item);
    else if (act && act.dataset.act === 'delete') deleteConversation(item.dataset.id);
    else if (ev.target.closest('.conv-link')) openConversation(item.dataset.id);
  });
  el.convList.addEventListener('dblclick', (ev) => {
    const item = ev.target.closest('.conv-item');
    if (item && ev.target.closest('.conv-link')) startRename(item);
  });
  el.thread.addEventListener('click', onThreadClick);
  el.scroller.addEventListener('scroll', onScroll, { passive: true });
  el.jump.addEventListener('click', () => { state.stick = true; el.scroller.scrollTo({ top: el.scroller.scrollHeight, behavior: 'smooth' }); });
  el.ctxWarn.addEventListener('click', (ev) => { if (ev.target.closest('[data-act="newchat"]')) newChat(); });
  el.modelBtn.addEventListener('click', () => toggleMenu());
  el.modelMenu.addEventListener('click', (ev) => {
    const opt = ev.target.closest('.model-opt');
    if (opt) pickModel(opt.dataset.model);
  });
  el.modelMenu.addEventListener('keydown', onMenuKey);
  document.addEventListener('click', (ev) => {
    if (!el.modelMenu.hidden && !el.modelPicker.contains(ev.target)) toggleMenu(false);
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
  el.keyClear.addEventListener('click', () => {
    settings.set('apiKey', null);
    el.keyInput.value = '';
    el.keyInput.focus();
    toast('API key removed from this browser.');
  });
  el.exportBtn.addEventListener('click', exportAll);
  el.importBtn.addEventListener('click', () => el.importFile.click());
  el.importFile.addEventListener('change', () => {
    const f = el.importFile.files && el.importFile.files[0];
    if (f) importFile(f);
    el.importFile.value = '';
  });
  el.bannerRetry.addEventListener('click', () => poll());
  document.addEventListener('keydown', onGlobalKey);
  window.addEventListener('hashchange', routeFromHash);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
  window.addEventListener('online', () => poll());
  window.addEventListener('storage', (ev) => {
    if (!ev.key || !ev.key.startsWith('localai.')) return;
    store.reload();
    if (state.conv && ev.key === `localai.conv.${state.conv.id}` && !streams.has(state.conv.id)) {
      const fresh = store.load(state.conv.id);
      if (fresh) { state.conv = fresh; renderThread(); updateMeter(); }
    }
    renderSidebar();
  });
  window.addEventListener('pagehide', () => {
    state.unloading = true; // streams cut by leaving the page end as "stopped", not as errors
    for (const s of streams.values()) {
      s.msg.status = 'stopped';
      store.save(s.conv);
    }
  });
  window.matchMedia('(max-width: 768px)').addEventListener('change', () => {
    el.app.classList.remove('sb-mobile-open');
    el.backdrop.hidden = true;
  });
}

function boot() {
  hydrateIcons();
  applyTheme();
  if (settings.get('sidebar', true) === false) el.app.classList.add('sb-collapsed');
  wire();
  routeFromHash();
  if (!state.conv) newChat();
  el.app.classList.add('ready');
  loadModels();
  poll();
  if (!window.matchMedia('(pointer: coarse)').matches) el.input.focus();
}

boot();
