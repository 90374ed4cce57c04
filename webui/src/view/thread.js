// @ts-check
// The thread: one view per message, the empty state, scrolling, and the buttons
// under each message (copy, edit, regenerate, the error box's).
import { h, copyText, targetOf } from '../dom.js';
import { icon } from '../icons.js';
import { fmtStats } from '../core/format.js';
import { loadsOnUse } from '../core/models.js';
import { editUserMessage } from '../core/conversation.js';
import { renderMarkdown, StreamRenderer } from '../markdown.js';
import { state, streams, chats } from '../state.js';
import { el } from './elements.js';
import { openKeyDialog } from './dialogs.js';
import { currentModelId, stateOf } from './models.js';
import { renderSidebar } from './sidebar.js';
import { autosize } from './composer.js';
import { generate, regenerate } from './answer.js';

/** @typedef {import('../core/types.js').Message} Message */

/**
 * The parts of a message's view an answer in progress updates.
 * @typedef {object} MessageView
 * @property {HTMLElement} art
 * @property {HTMLElement} body
 * @property {HTMLElement} wait
 * @property {HTMLElement} stats
 * @property {HTMLDetailsElement} reasoning
 * @property {HTMLElement} flag
 */

/** @param {string} act @param {string} label @param {string} ic */
function actBtn(act, label, ic) {
  return h('button', { type: 'button', class: `act-btn act-${act}`, dataset: { act }, title: label, 'aria-label': label, html: icon(ic) });
}

/** @param {number} n */
export function truncNotice(n) {
  return h(
    'div',
    { class: 'notice trunc', role: 'note' },
    h('span', { html: icon('info') }),
    `To fit the context window, the gateway left out the ${n === 1 ? 'oldest message' : `${n} oldest messages`} of this chat.`,
  );
}

/** @param {Message} m */
function errorBox(m) {
  const e = m.error || { title: '' };
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

/** A user message's view. @param {Message} m */
function userView(m) {
  return h(
    'article',
    { class: 'msg user', dataset: { id: m.id } },
    h('div', { class: 'bubble' }, m.content),
    h('div', { class: 'actions' }, actBtn('copy', 'Copy', 'copy'), actBtn('edit', 'Edit', 'edit')),
  );
}

/** @param {Message} m @returns {MessageView} */
export function messageView(m) {
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
  if (status !== 'streaming' && m.content) renderMarkdown(body, m.content);
  return { art, body, wait, stats, reasoning, flag };
}

/** @param {Message} m */
const viewOf = (m) => (m.role === 'user' ? { art: userView(m) } : messageView(m));

export function renderThread() {
  const conv = state.conv;
  if (!conv) return;
  const frag = document.createDocumentFragment();
  for (const m of conv.messages) {
    const live = streams.get(conv.id);
    if (live && live.msg === m) {
      const v = messageView(m);
      live.view = v;
      live.renderer = new StreamRenderer(v.body);
      live.renderer.update(m.content);
      frag.append(v.art);
    } else frag.append(viewOf(m).art);
  }
  el.thread.replaceChildren(frag);
  updateEmpty();
  state.stick = true;
  scrollToBottom(true);
}

/** @param {Message} m */
export function appendMessage(m) {
  el.thread.append(viewOf(m).art);
  updateEmpty();
}

/** @param {Message} m */
export function appendAnswer(m) {
  const v = messageView(m);
  el.thread.append(v.art);
  updateEmpty();
  return v;
}

/** @param {Message[]} messages */
export function removeViews(messages) {
  for (const m of messages) {
    const node = el.thread.querySelector(`article[data-id="${m.id}"]`);
    if (node) node.remove();
  }
}

export function scrollToBottom(force = false) {
  if (force || state.stick) el.scroller.scrollTop = el.scroller.scrollHeight;
}

export function onScroll() {
  const d = el.scroller.scrollHeight - el.scroller.scrollTop - el.scroller.clientHeight;
  state.stick = d < 80;
  el.jump.hidden = d < 240;
}

/** The empty state's hint and the system prompt pill. */
export function updateEmpty() {
  const empty = !state.conv || state.conv.messages.length === 0;
  el.empty.hidden = !empty;
  const id = currentModelId();
  if (empty) {
    if (state.auth === 'bad' || state.auth === 'missing') el.emptySub.textContent = 'Enter your API key to start chatting.';
    else if (id) {
      const { state: st, reason } = stateOf(id);
      el.emptySub.textContent = st === 'ready' ? `Chatting with ${id}.`
        : st === 'loading' ? `${id} is still loading. You can type already; the answer starts once it is ready.`
          : st === 'failed' ? `${id} is unavailable${reason ? `: ${reason}` : ''}. Pick another model or try again later.`
              : loadsOnUse(st) ? `${id} is ${st}: it loads when you send a message, which can take a while.`
                : `Chatting with ${id}.`;
    } else el.emptySub.textContent = 'Pick a model above and start typing.';
  }
  const sys = state.conv && state.conv.system && state.conv.system.trim();
  el.systemPill.hidden = !sys;
  if (sys) {
    el.systemPill.replaceChildren(h('span', { class: 'pill-label' }, 'System prompt'), h('span', { class: 'pill-text' }, sys));
  }
}

/**
 * Clicks on the thread's own buttons. An answer's markdown is the model's: the only
 * app control in it is a code block's Copy button, whatever else carries data-act.
 * @param {MouseEvent} ev
 */
export async function onThreadClick(ev) {
  const btn = /** @type {HTMLButtonElement|null} */ (targetOf(ev).closest('button[data-act]'));
  if (!btn) return;
  if (btn.closest('.md')) {
    if (btn.matches('.code-head > .code-copy')) await copyCode(btn);
    return;
  }
  const art = /** @type {HTMLElement|null} */ (btn.closest('article.msg'));
  const m = art && state.conv ? state.conv.messages.find((x) => x.id === art.dataset.id) : undefined;
  if (!art || !m) return;
  const act = btn.dataset.act;
  if (act === 'copy') {
    const ok = await copyText(m.content);
    btn.innerHTML = icon(ok ? 'check' : 'warn');
    setTimeout(() => { btn.innerHTML = icon('copy'); }, 1500);
  } else if (act === 'edit') startEdit(art, m);
  else if (act === 'regen') regenerate();
  else if (act === 'key') openKeyDialog();
}

/** @param {HTMLButtonElement} btn */
async function copyCode(btn) {
  const block = btn.closest('.code-block');
  const code = block && block.querySelector('code');
  const ok = await copyText(code ? code.textContent || '' : '');
  flash(btn, ok ? 'Copied!' : 'Copy failed');
}

/** @param {HTMLElement} btn @param {string} text */
function flash(btn, text) {
  const old = btn.textContent;
  btn.textContent = text;
  btn.classList.add('done');
  setTimeout(() => {
    btn.textContent = old;
    btn.classList.remove('done');
  }, 1500);
}

/** Edit a user message in place; sending it drops what came after and answers again. @param {HTMLElement} art @param {Message} m */
function startEdit(art, m) {
  const conv = state.conv;
  const bubble = art.querySelector('.bubble');
  if (art.classList.contains('editing') || !conv || !bubble) return;
  const ta = h('textarea', { class: 'edit-input', 'aria-label': 'Edit message', rows: '3' });
  ta.value = m.content;
  const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
  const save = h('button', { type: 'button', class: 'btn primary' }, 'Send');
  const box = h('div', { class: 'edit-box' }, ta, h('div', { class: 'edit-actions' }, cancel, save));
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
    if (!editUserMessage(conv, m, text)) return close();
    chats.save(conv);
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
