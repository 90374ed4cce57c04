// @ts-check
// The message box, the send/stop buttons and the context meter under them.
import { h, autosize } from '../dom.js';
import { icon } from '../icons.js';
import { fmtInt } from '../core/format.js';
import { estimateTokens } from '../core/chat.js';
import { store, answering, currentModelId, contextLimitOf } from '../state.js';
import { askForKeyAsAuthSays, send } from '../actions.js';
import { el } from './elements.js';

const WARN_AT = 0.6;
const HIGH_AT = 0.9;

export function updateComposer() {
  const live = answering();
  el.send.hidden = live;
  el.stop.hidden = !live;
  el.send.disabled = !el.input.value.trim();
}

/** @param {KeyboardEvent} ev */
export function onInputKey(ev) {
  if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing || ev.keyCode === 229) return;
  // On touch devices Enter inserts a new line; the send button sends (as in other chat apps).
  if (window.matchMedia('(pointer: coarse)').matches && !ev.ctrlKey && !ev.metaKey) return;
  ev.preventDefault();
  submitComposer();
}

export function submitComposer() {
  const text = el.input.value;
  if (!text.trim()) return;
  if (answering()) return;
  const { auth } = store.state;
  if (auth === 'bad' || auth === 'missing') {
    askForKeyAsAuthSays();
    return;
  }
  el.input.value = '';
  autosize(el.input);
  send(text);
}

let meterQueued = false;
/** The context meter and its warning, at the next frame. */
export function updateMeter() {
  if (meterQueued) return;
  meterQueued = true;
  requestAnimationFrame(() => {
    meterQueued = false;
    const conv = store.state.conv;
    const id = currentModelId();
    const limit = contextLimitOf(id);
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

export function subscribeComposer() {
  store.subscribe(['conv', 'live'], updateComposer);
  store.subscribe(['conv', 'convRevision', 'models'], updateMeter);
  store.subscribe(['answer'], (s) => { if (s.answer && s.answer.change === 'end' && s.answer.answer.conv === s.conv) updateMeter(); });
  store.subscribe(['navigated'], (s) => { if (s.navigated === 'new') el.input.focus(); });
}
