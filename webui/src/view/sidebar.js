// @ts-check
// The sidebar: the saved chats grouped by day, search, rename, delete, open/close.
import { h } from '../dom.js';
import { icon } from '../icons.js';
import { dayGroup } from '../core/format.js';
import { store, chats } from '../state.js';
import { deleteChat, rememberSidebar, renameChat } from '../actions.js';
import { el } from './elements.js';
import { toast } from './toast.js';
import { confirmDialog } from './confirm.js';

export function renderSidebar() {
  const q = el.search.value.trim().toLowerCase();
  const { conv, live } = store.state;
  let items = store.state.chats;
  if (q) {
    const jq = JSON.stringify(q).slice(1, -1);
    items = items.filter((e) => e.title.toLowerCase().includes(q) || chats.raw(e.id).toLowerCase().includes(jq));
  }
  const frag = document.createDocumentFragment();
  let group = null;
  for (const e of items) {
    const g = dayGroup(e.updated);
    if (g !== group) {
      group = g;
      frag.append(h('div', { class: 'conv-group' }, g));
    }
    const active = conv && conv.id === e.id;
    frag.append(
      h(
        'div',
        { class: `conv-item${active ? ' active' : ''}${live.has(e.id) ? ' live' : ''}`, dataset: { id: e.id } },
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

/** Turn a chat's title into a text field; Enter or leaving it saves. @param {HTMLElement} item */
export function startRename(item) {
  const id = item.dataset.id;
  const entry = store.state.chats.find((e) => e.id === id);
  const link = item.querySelector('.conv-link');
  if (!id || !entry || !link) return;
  const input = h('input', { class: 'rename-input', value: entry.title, 'aria-label': 'Chat title', maxlength: '200' });
  link.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  /** @param {boolean} commit */
  const finish = (commit) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (commit && title && title !== entry.title) renameChat(id, title);
    else renderSidebar();
  };
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') { ev.preventDefault(); finish(true); }
    else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
}

/** @param {string} id */
export async function deleteConversation(id) {
  const entry = store.state.chats.find((e) => e.id === id);
  if (!entry) return;
  const ok = await confirmDialog('Delete chat?', `“${entry.title}” will be removed from this browser.`, 'Delete');
  if (!ok) return;
  deleteChat(id);
  toast('Chat deleted.');
}

const isMobile = () => window.matchMedia('(max-width: 768px)').matches;

/** @param {boolean} open */
export function openSidebar(open) {
  if (isMobile()) {
    el.app.classList.toggle('sb-mobile-open', open);
    el.backdrop.hidden = !open;
  } else {
    el.app.classList.toggle('sb-collapsed', !open);
    rememberSidebar(open);
  }
}

export function sidebarIsOpen() {
  return isMobile() ? el.app.classList.contains('sb-mobile-open') : !el.app.classList.contains('sb-collapsed');
}

function closeMobileSidebar() {
  if (el.app.classList.contains('sb-mobile-open')) openSidebar(false);
}

export function subscribeSidebar() {
  store.subscribe(['chats', 'conv', 'live'], renderSidebar);
  store.subscribe(['navigated'], closeMobileSidebar);
}
