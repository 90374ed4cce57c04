// @ts-check
// Asking for an answer and showing it as it streams: the chat core sends, retries and
// reads; this module paints, saves, and reports the outcome.
import { authHeaders } from '../core/http.js';
import { addUserTurn, dropLastAnswers, msgId } from '../core/conversation.js';
import {
  chatRequest, sendWithRetries, readAnswer, AnswerClock, noteResponseHeaders, asRequestError, describeError,
  everySecond, loadingText,
} from '../core/chat.js';
import { StreamRenderer } from '../markdown.js';
import { state, streams, wakers, chats, apiKey } from '../state.js';
import { toast } from './toast.js';
import { openKeyDialog } from './dialogs.js';
import { poll } from './connection.js';
import { currentModelId, loadModels, renderPicker } from './models.js';
import { renderSidebar } from './sidebar.js';
import { setHash } from './conversations.js';
import { appendAnswer, appendMessage, messageView, removeViews, scrollToBottom, truncNotice } from './thread.js';
import { updateComposer, updateMeter } from './composer.js';

/** @typedef {import('../core/types.js').Conversation} Conversation */
/** @typedef {import('../core/types.js').Message} Message */
/** @typedef {import('../state.js').LiveAnswer} LiveAnswer */

const SAVE_EVERY_MS = 3000;

/** Send the user's *text* in the chat on screen and answer it. @param {string} text */
export function send(text) {
  const conv = state.conv;
  if (!conv) return;
  const { message, dropped } = addUserTurn(conv, text, currentModelId());
  removeViews(dropped);
  chats.save(conv);
  setHash(conv.id);
  document.title = `${conv.title} · LocalAI`;
  appendMessage(message);
  state.stick = true;
  scrollToBottom(true);
  renderSidebar();
  generate(conv);
}

/** Answer the last user message of the chat on screen again. */
export function regenerate() {
  const conv = state.conv;
  if (!conv || streams.has(conv.id)) return;
  const dropped = dropLastAnswers(conv);
  if (!dropped) return;
  removeViews(dropped);
  chats.save(conv);
  generate(conv);
}

/** Stop the answer of the chat on screen; false when none is streaming. */
export function stopCurrent() {
  const s = state.conv && streams.get(state.conv.id);
  if (!s) return false;
  s.ctrl.abort();
  return true;
}

/** Answer the last message of *conv*, streaming into its view while it is on screen. @param {Conversation} conv */
export async function generate(conv) {
  const model = currentModelId();
  if (!model) {
    toast(state.auth === 'ok' ? 'No model is available.' : 'Enter an API key first.', 'error');
    if (state.auth !== 'ok') openKeyDialog();
    return;
  }
  const upto = conv.messages.length;
  /** @type {Message} */
  const msg = { id: msgId(), role: 'assistant', content: '', model, created: Date.now(), status: 'streaming' };
  conv.messages.push(msg);
  /** @type {LiveAnswer} */
  const s = { conv, msg, ctrl: new AbortController(), view: null, renderer: null, raf: 0, loading: null };
  streams.set(conv.id, s);
  if (state.conv === conv) {
    s.view = appendAnswer(msg);
    s.renderer = new StreamRenderer(s.view.body);
    scrollToBottom();
  }
  updateComposer();
  renderSidebar();

  let clock = new AnswerClock();
  let lastSave = Date.now();
  try {
    const { resp, sentAt } = await sendWithRetries({
      url: 'v1/chat/completions',
      body: chatRequest(conv, model, upto),
      headers: authHeaders(apiKey(), { 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
      signal: s.ctrl.signal,
      wakers,
      onWait: (text) => setWait(s, text),
      onNetworkError: () => { poll(); },
    });
    clock = new AnswerClock(sentAt);
    setWait(s, null);
    const trunc = noteResponseHeaders(resp, msg);
    if (trunc > 0 && s.view) s.view.body.before(truncNotice(trunc));
    await readAnswer(resp, msg, clock, () => {
      schedulePaint(s);
      if (Date.now() - lastSave > SAVE_EVERY_MS && !conv.deleted) {
        lastSave = Date.now();
        chats.save(conv);
      }
    }, (loading) => showLoading(s, loading, sentAt));
    msg.status = 'done';
  } catch (e) {
    if ((e instanceof Error && e.name === 'AbortError') || state.unloading) msg.status = 'stopped';
    else {
      msg.status = 'error';
      const err = asRequestError(e);
      msg.error = describeError(err, model);
      if ('status' in err && err.status === 401) {
        state.auth = 'bad';
        renderPicker();
      }
      if ('status' in err && err.status === 404) loadModels();
    }
  }
  showLoading(s, null, 0);
  setWait(s, null);
  const stats = clock.stats();
  if (stats) msg.stats = stats;
  // An edit may already have started the next answer for this chat.
  if (streams.get(conv.id) === s) streams.delete(conv.id);
  if (s.raf) cancelAnimationFrame(s.raf);
  if (!conv.deleted && conv.messages.includes(msg)) chats.save(conv);
  if (state.conv === conv && s.view && s.view.art.isConnected) {
    s.view.art.replaceWith(messageView(msg).art);
    scrollToBottom();
  }
  if (state.conv === conv) {
    updateComposer();
    updateMeter();
  }
  renderSidebar();
}

/** A retry's countdown in the answer (null: not waiting). @param {LiveAnswer} s @param {string|null} text */
function setWait(s, text) {
  if (!s.view) return;
  s.view.wait.hidden = !text;
  s.view.wait.textContent = text || '';
  s.view.art.classList.toggle('waiting', !!text);
}

/**
 * While the gateway brings the answer's model in (a sleeping or stopped one), the answer
 * says so with the seconds since it was asked: "loading coder… 4 s".
 * @param {LiveAnswer} s
 * @param {string|null} model  null: it answers now
 * @param {number} since  performance.now() when the request went out
 */
function showLoading(s, model, since) {
  if (model && !s.loading) {
    s.loading = everySecond(since, (ms) => setWait(s, loadingText(model, ms)));
    poll(); // the picker shows it loading, not still asleep
  } else if (!model && s.loading) {
    s.loading();
    s.loading = null;
    setWait(s, null);
    poll(); // it came in (or failed to): the picker shows its new state now
  }
}

/** Paint the answer's new text at the next frame (once per frame). @param {LiveAnswer} s */
function schedulePaint(s) {
  if (s.raf || !s.view) return;
  s.raf = requestAnimationFrame(() => {
    s.raf = 0;
    const v = s.view;
    if (!v || !v.art.isConnected || !s.renderer) return;
    s.renderer.update(s.msg.content);
    if (s.msg.reasoning) {
      v.reasoning.hidden = false;
      if (!s.msg.content) v.reasoning.open = true;
      /** @type {ChildNode} */ (v.reasoning.lastChild).textContent = s.msg.reasoning;
    }
    if (s.msg.content) v.art.classList.add('has-text');
    scrollToBottom();
  });
}
