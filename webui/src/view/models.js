// @ts-check
// The model picker: the chat's model, and the menu of the gateway's models.
import { h } from '../dom.js';
import { icon } from '../icons.js';
import { fmtK } from '../core/format.js';
import { isChatModel, loadsOnUse, pickerLabel, STATE_LABEL } from '../core/models.js';
import { store, currentModelId, stateOf, contextLimitOf } from '../state.js';
import { pickModel as chooseModelForChat, poll } from '../actions.js';
import { el } from './elements.js';

function renderPicker() {
  const id = currentModelId();
  const st = id ? stateOf(id) : { state: 'unknown' };
  const { auth } = store.state;
  el.modelName.textContent = id || (auth === 'bad' || auth === 'missing' ? 'API key needed' : 'No model');
  el.modelDot.dataset.state = st.state;
  el.modelState.textContent = id && st.state !== 'ready' ? STATE_LABEL[st.state] || st.state : '';
  el.modelBtn.dataset.state = st.state;
  if (!el.modelMenu.hidden) renderMenu();
}

function renderMenu() {
  const cur = currentModelId();
  const { models, auth } = store.state;
  /** @type {HTMLElement[]} */
  const items = models.filter(isChatModel).map((m) => {
    const st = stateOf(m.id);
    const lim = contextLimitOf(m.id);
    const said = loadsOnUse(st.state) ? 'loads when used' : STATE_LABEL[st.state] || st.state;
    const meta = [said, lim ? `${fmtK(lim)} ctx` : null].filter(Boolean).join(' · ');
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
        h('span', { class: 'opt-name' }, pickerLabel(m.id, st.state), m.default ? h('span', { class: 'badge' }, 'default') : null),
        about.length ? h('span', { class: 'opt-alias', title: about.join(' · ') }, about.join(' · ')) : null,
        st.state === 'failed' && st.reason ? h('span', { class: 'opt-reason' }, st.reason) : null,
      ),
      h('span', { class: 'opt-meta' }, meta),
      m.id === cur ? h('span', { class: 'opt-check', html: icon('check') }) : null,
    );
  });
  if (!items.length) {
    items.push(
      h('div', { class: 'model-empty' }, auth === 'ok' || auth === 'unknown' ? 'No models available.' : 'Enter an API key to list models.'),
    );
  }
  const active = /** @type {HTMLElement|null} */ (document.activeElement);
  const focused = active && el.modelMenu.contains(active) ? active.dataset.model : null;
  el.modelMenu.replaceChildren(...items);
  if (focused) {
    const again = /** @type {HTMLElement|null} */ (el.modelMenu.querySelector(`.model-opt[data-model="${CSS.escape(focused)}"]`));
    if (again) again.focus();
  }
}

export function toggleMenu(open = el.modelMenu.hidden) {
  if (open) {
    renderMenu();
    el.modelMenu.hidden = false;
    el.modelBtn.setAttribute('aria-expanded', 'true');
    const sel = /** @type {HTMLElement|null} */ (el.modelMenu.querySelector('.selected') || el.modelMenu.querySelector('.model-opt'));
    if (sel) sel.focus();
    poll(); // fresh model states while the menu is open
  } else {
    el.modelMenu.hidden = true;
    el.modelBtn.setAttribute('aria-expanded', 'false');
  }
}

/** @param {string|undefined} id */
export function pickModel(id) {
  toggleMenu(false);
  el.modelBtn.focus();
  if (id) chooseModelForChat(id);
}

/** Arrow keys move through the menu; Tab leaves it. @param {KeyboardEvent} ev */
export function onMenuKey(ev) {
  const opts = /** @type {HTMLElement[]} */ ([...el.modelMenu.querySelectorAll('.model-opt')]);
  const i = opts.indexOf(/** @type {HTMLElement} */ (document.activeElement));
  if (ev.key === 'ArrowDown') { ev.preventDefault(); (opts[i + 1] || opts[0]).focus(); }
  else if (ev.key === 'ArrowUp') { ev.preventDefault(); (opts[i - 1] || opts[opts.length - 1]).focus(); }
  else if (ev.key === 'Tab') toggleMenu(false);
}

export function subscribePicker() {
  store.subscribe(['models', 'health', 'auth', 'conn', 'conv', 'convRevision'], renderPicker);
}
