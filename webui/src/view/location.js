// @ts-check
// The URL (#/c/<id>) and the tab's title follow the chat on screen.
import { store, chats } from '../state.js';

/** @param {string|null} id */
function setHash(id) {
  const want = id ? `#/c/${id}` : '#/';
  if (location.hash !== want) history.replaceState(null, '', want);
}

function renderLocation() {
  const conv = store.state.conv;
  if (!conv) return;
  // A new chat has no address until its first message saves it.
  if (conv.messages.length || chats.has(conv.id)) {
    setHash(conv.id);
    document.title = `${conv.title} · LocalAI`;
  } else {
    setHash(null);
    document.title = 'LocalAI';
  }
}

export function subscribeLocation() {
  store.subscribe(['conv', 'convRevision'], renderLocation);
}
