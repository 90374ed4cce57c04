// @ts-check
// Conversations and their messages: creating, titling, importing, and the edits a
// chat goes through (a failed answer replaced, an answer regenerated, a message edited).
// No DOM: unit-tested under Node.

/** @typedef {import('./types.js').Conversation} Conversation */
/** @typedef {import('./types.js').Message} Message */

/** @param {number} bytes */
function randomHex(bytes) {
  // crypto.randomUUID needs a secure context; LAN hosts are often plain http.
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** A conversation id. */
export const uid = () => randomHex(12);
/** A message id. */
export const msgId = () => randomHex(8);

/** @param {string|null} [model] @returns {Conversation} */
export function newConversation(model) {
  const now = Date.now();
  return { id: uid(), title: 'New chat', created: now, updated: now, model: model || null, system: '', params: {}, messages: [] };
}

/** @param {Message[]} messages */
export function titleFrom(messages) {
  const first = messages.find((m) => m.role === 'user' && m.content.trim());
  if (!first) return 'New chat';
  const line = first.content.trim().split('\n')[0].replace(/\s+/g, ' ');
  return line.length > 48 ? `${line.slice(0, 47)}…` : line;
}

/** @param {Message} m */
const isEmptyFailure = (m) => m.role === 'assistant' && !m.content && (m.status === 'error' || m.status === 'stopped');

/**
 * Append the user's *text*. An answer that failed or was stopped before any output
 * is replaced by the new turn: returns the messages taken away (their views go too).
 * @param {Conversation} conv
 * @param {string} text
 * @param {string|null} model  the chat's model, when it has none yet
 */
export function addUserTurn(conv, text, model) {
  /** @type {Message[]} */
  const dropped = [];
  while (conv.messages.length && isEmptyFailure(conv.messages[conv.messages.length - 1])) {
    dropped.push(/** @type {Message} */ (conv.messages.pop()));
  }
  const m = /** @type {Message} */ ({ id: msgId(), role: 'user', content: text, created: Date.now() });
  conv.messages.push(m);
  if (!conv.model) conv.model = model;
  if (!conv.renamed && conv.messages.filter((x) => x.role === 'user').length === 1) conv.title = titleFrom(conv.messages);
  return { message: m, dropped };
}

/**
 * Take away the answers after the last user message, so it can be answered again.
 * Returns them, or null when there is no user message.
 * @param {Conversation} conv
 */
export function dropLastAnswers(conv) {
  let i = conv.messages.length - 1;
  while (i >= 0 && conv.messages[i].role === 'assistant') i--;
  if (i < 0) return null;
  return conv.messages.splice(i + 1);
}

/**
 * Replace user message *m*'s text and forget everything after it. False when *m*
 * is no longer in the chat.
 * @param {Conversation} conv
 * @param {Message} m
 * @param {string} text
 */
export function editUserMessage(conv, m, text) {
  const idx = conv.messages.indexOf(m);
  if (idx < 0) return false;
  m.content = text;
  conv.messages.length = idx + 1;
  if (!conv.renamed && conv.messages.find((x) => x.role === 'user') === m) conv.title = titleFrom(conv.messages);
  return true;
}

/** Fields of a message an import keeps as they are. */
const KEPT = /** @type {const} */ (['model', 'status', 'stats', 'error', 'truncated', 'reasoning', 'requestId', 'finish']);

/**
 * A conversation from an imported file (ours, or another client's with
 * {role, content} messages), or null when it is not one.
 * @param {any} raw
 * @returns {Conversation|null}
 */
export function normalize(raw) {
  if (!raw || typeof raw !== 'object' || !Array.isArray(raw.messages)) return null;
  /** @type {Message[]} */
  const messages = [];
  for (const m of raw.messages) {
    if (!m || typeof m !== 'object') continue;
    if (!['user', 'assistant', 'system'].includes(m.role)) continue;
    const content = typeof m.content === 'string' ? m.content : Array.isArray(m.content)
      ? m.content.map((/** @type {any} */ p) => (p && typeof p.text === 'string' ? p.text : '')).join('') : '';
    if (m.role === 'system') continue; // system prompt lives on the conversation
    /** @type {Record<string, unknown>} */
    const out = { id: typeof m.id === 'string' ? m.id : uid(), role: m.role, content, created: Number(m.created) || Date.now() };
    for (const k of KEPT) {
      if (m[k] != null) out[k] = m[k];
    }
    if (out.status === 'streaming') out.status = 'stopped';
    messages.push(/** @type {Message} */ (out));
  }
  const sysMsg = raw.messages.find((/** @type {any} */ m) => m && m.role === 'system' && typeof m.content === 'string');
  const now = Date.now();
  const title = typeof raw.title === 'string' && raw.title.trim() ? raw.title.slice(0, 200) : titleFrom(messages);
  return {
    renamed: Boolean(raw.renamed) || title !== titleFrom(messages),
    id: typeof raw.id === 'string' && /^[\w-]{1,64}$/.test(raw.id) ? raw.id : uid(),
    title,
    created: Number(raw.created) || now,
    updated: Number(raw.updated) || now,
    model: typeof raw.model === 'string' ? raw.model : null,
    system: typeof raw.system === 'string' ? raw.system : sysMsg ? sysMsg.content : '',
    params: raw.params && typeof raw.params === 'object' ? raw.params : {},
    messages,
  };
}
