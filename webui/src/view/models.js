// @ts-check
// The model picker: the model list from the gateway, the chat's model, the menu.
import { h } from '../dom.js';
import { icon } from '../icons.js';
import { fmtK } from '../core/format.js';
import { ApiError, getJSON } from '../core/http.js';
import { chooseModel, contextLimit, isChatModel, loadsOnUse, modelState, pickerLabel, STATE_LABEL } from '../core/models.js';
import { state, settings, chats, apiKey } from '../state.js';
import { el } from './elements.js';
import { toast } from './toast.js';
import { openKeyDialog } from './dialogs.js';
import { poll } from './connection.js';
import { updateMeter } from './composer.js';
import { updateEmpty } from './thread.js';

/** The model the chat on screen talks to. */
export function currentModelId() {
  return chooseModel(state, state.conv && state.conv.model, settings.get('model'));
}

/** @param {string} id */
export const stateOf = (id) => modelState(state.models, state.health, id);

/** @param {string|null} id */
export const contextLimitOf = (id) => contextLimit(state.models, id);

export async function loadModels() {
  try {
    const { data } = await getJSON('v1/models', { key: apiKey() });
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

export function renderPicker() {
  const id = currentModelId();
  const st = id ? stateOf(id) : { state: 'unknown' };
  el.modelName.textContent = id || (state.auth === 'bad' || state.auth === 'missing' ? 'API key needed' : 'No model');
  el.modelDot.dataset.state = st.state;
  el.modelState.textContent = id && st.state !== 'ready' ? STATE_LABEL[st.state] || st.state : '';
  el.modelBtn.dataset.state = st.state;
  if (!el.modelMenu.hidden) renderMenu();
}

function renderMenu() {
  const cur = currentModelId();
  /** @type {HTMLElement[]} */
  const items = state.models.filter(isChatModel).map((m) => {
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
      h('div', { class: 'model-empty' }, state.auth === 'ok' || state.auth === 'unknown' ? 'No models available.' : 'Enter an API key to list models.'),
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
  if (!id || !state.conv) return;
  state.conv.model = id;
  settings.set('model', id);
  if (chats.has(state.conv.id)) chats.save(state.conv, { touch: false });
  renderPicker();
  updateMeter();
  updateEmpty();
}

/** Arrow keys move through the menu; Tab leaves it. @param {KeyboardEvent} ev */
export function onMenuKey(ev) {
  const opts = /** @type {HTMLElement[]} */ ([...el.modelMenu.querySelectorAll('.model-opt')]);
  const i = opts.indexOf(/** @type {HTMLElement} */ (document.activeElement));
  if (ev.key === 'ArrowDown') { ev.preventDefault(); (opts[i + 1] || opts[0]).focus(); }
  else if (ev.key === 'ArrowUp') { ev.preventDefault(); (opts[i - 1] || opts[opts.length - 1]).focus(); }
  else if (ev.key === 'Tab') toggleMenu(false);
}
