// @ts-check
// The thread: one view per message, the empty state, scrolling, the buttons under
// each message (copy, edit, regenerate, the error box's), and the answer being
// streamed, painted at most once per frame.
import { h, copyText, targetOf, autosize } from '../dom.js';
import { icon } from '../icons.js';
import { fmtStats } from '../core/format.js';
import { loadsOnUse } from '../core/models.js';
import { renderMarkdown, StreamRenderer } from '../markdown.js';
import { store, currentModelId, stateOf } from '../state.js';
import { askForKey, editAndResend, regenerate } from '../actions.js';
import { el } from './elements.js';

/** @typedef {import('../core/types.js').Message} Message */
/** @typedef {import('../state.js').LiveAnswer} LiveAnswer */
/** @typedef {import('../state.js').AppState} AppState */

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
function truncNotice(n) {
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
function messageView(m) {
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

/**
 * The painting of an answer being streamed: its view while its chat is on screen,
 * the renderer of its markdown, the pending frame.
 * @typedef {object} Painting
 * @property {MessageView} view
 * @property {StreamRenderer} renderer
 * @property {number} raf  the pending paint's animation frame, or 0
 */

/** @type {Map<LiveAnswer, Painting>} */
const paintings = new Map();

/** Keep the thread scrolled to the bottom as answers grow (until the user scrolls up). */
let stick = true;

/** A fresh view for an answer being streamed, to paint from now on. @param {LiveAnswer} live */
function paintingView(live) {
  const view = messageView(live.msg);
  const renderer = new StreamRenderer(view.body);
  const painting = paintings.get(live);
  if (painting) Object.assign(painting, { view, renderer });
  else paintings.set(live, { view, renderer, raf: 0 });
  return { view, renderer };
}

function renderThread() {
  const conv = store.state.conv;
  if (!conv) return;
  const frag = document.createDocumentFragment();
  const live = store.state.live.get(conv.id);
  for (const m of conv.messages) {
    if (live && live.msg === m) {
      const { view, renderer } = paintingView(live);
      renderer.update(m.content);
      frag.append(view.art);
    } else frag.append(viewOf(m).art);
  }
  el.thread.replaceChildren(frag);
  updateEmpty();
  stick = true;
  scrollToBottom(true);
}

/** Messages added to or taken from the end of the chat on screen. @param {NonNullable<AppState['turn']>} turn */
function applyTurn({ added, removed }) {
  for (const m of removed) {
    const node = el.thread.querySelector(`article[data-id="${m.id}"]`);
    if (node) node.remove();
  }
  if (!added) return;
  el.thread.append(viewOf(added).art);
  updateEmpty();
  stick = true;
  scrollToBottom(true);
}

/** @param {NonNullable<AppState['answer']>} change */
function applyAnswer({ answer, change }) {
  if (change === 'start') {
    if (store.state.conv !== answer.conv) return;
    el.thread.append(paintingView(answer).view.art);
    updateEmpty();
    scrollToBottom();
    return;
  }
  const painting = paintings.get(answer);
  if (!painting) return; // its chat has not been on screen while it streamed
  if (change === 'text') schedulePaint(answer, painting);
  else if (change === 'wait') setWait(painting.view, answer.wait);
  else if (change === 'truncated') painting.view.body.before(truncNotice(answer.msg.truncated || 0));
  else if (change === 'end') {
    paintings.delete(answer);
    if (painting.raf) cancelAnimationFrame(painting.raf);
    if (store.state.conv === answer.conv && painting.view.art.isConnected) {
      painting.view.art.replaceWith(messageView(answer.msg).art);
      scrollToBottom();
    }
  }
}

/** A retry's countdown in the answer (null: not waiting). @param {MessageView} v @param {string|null} text */
function setWait(v, text) {
  v.wait.hidden = !text;
  v.wait.textContent = text || '';
  v.art.classList.toggle('waiting', !!text);
}

/** Paint the answer's new text at the next frame (once per frame). @param {LiveAnswer} answer @param {Painting} p */
function schedulePaint(answer, p) {
  if (p.raf) return;
  p.raf = requestAnimationFrame(() => {
    p.raf = 0;
    const v = p.view;
    if (!v.art.isConnected) return;
    p.renderer.update(answer.msg.content);
    if (answer.msg.reasoning) {
      v.reasoning.hidden = false;
      if (!answer.msg.content) v.reasoning.open = true;
      /** @type {ChildNode} */ (v.reasoning.lastChild).textContent = answer.msg.reasoning;
    }
    if (answer.msg.content) v.art.classList.add('has-text');
    scrollToBottom();
  });
}

/** @param {boolean} [force] */
function scrollToBottom(force = false) {
  if (force || stick) el.scroller.scrollTop = el.scroller.scrollHeight;
}

export function onScroll() {
  const d = el.scroller.scrollHeight - el.scroller.scrollTop - el.scroller.clientHeight;
  stick = d < 80;
  el.jump.hidden = d < 240;
}

/** The jump button: back to the newest message, and stay there. */
export function jumpToBottom() {
  stick = true;
  el.scroller.scrollTo({ top: el.scroller.scrollHeight, behavior: 'smooth' });
}

/** The empty state's hint and the system prompt pill. */
function updateEmpty() {
  const { conv, auth } = store.state;
  const empty = !conv || conv.messages.length === 0;
  el.empty.hidden = !empty;
  const id = currentModelId();
  if (empty) {
    if (auth === 'bad' || auth === 'missing') el.emptySub.textContent = 'Enter your API key to start chatting.';
    else if (id) {
      const { state: st, reason } = stateOf(id);
      el.emptySub.textContent = st === 'ready' ? `Chatting with ${id}.`
        : st === 'loading' ? `${id} is still loading. You can type already; the answer starts once it is ready.`
          : st === 'failed' ? `${id} is unavailable${reason ? `: ${reason}` : ''}. Pick another model or try again later.`
              : loadsOnUse(st) ? `${id} is ${st}: it loads when you send a message, which can take a while.`
                : `Chatting with ${id}.`;
    } else el.emptySub.textContent = 'Pick a model above and start typing.';
  }
  const sys = conv && conv.system && conv.system.trim();
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
  const conv = store.state.conv;
  const m = art && conv ? conv.messages.find((x) => x.id === art.dataset.id) : undefined;
  if (!art || !m) return;
  const act = btn.dataset.act;
  if (act === 'copy') {
    const ok = await copyText(m.content);
    btn.innerHTML = icon(ok ? 'check' : 'warn');
    setTimeout(() => { btn.innerHTML = icon('copy'); }, 1500);
  } else if (act === 'edit') startEdit(art, m);
  else if (act === 'regen') regenerate();
  else if (act === 'key') askForKey();
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
  const bubble = art.querySelector('.bubble');
  if (art.classList.contains('editing') || !bubble) return;
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
    if (!editAndResend(m, text)) close();
  };
  cancel.addEventListener('click', close);
  save.addEventListener('click', submit);
  ta.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
    else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); close(); }
  });
}

export function subscribeThread() {
  store.subscribe(['conv'], renderThread);
  store.subscribe(['turn'], (s) => { if (s.turn) applyTurn(s.turn); });
  store.subscribe(['answer'], (s) => { if (s.answer) applyAnswer(s.answer); });
  store.subscribe(['convRevision', 'auth', 'models', 'health', 'conn'], updateEmpty);
}
