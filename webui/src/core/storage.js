// @ts-check
// Conversations live in localStorage: one key per conversation plus a small index,
// so saving the chat that is streaming never re-serialises the others.
// The storage is passed in (the page's localStorage), so this runs under Node's tests too.
import { uid, normalize } from './conversation.js';

/** @typedef {import('./types.js').Conversation} Conversation */
/** @typedef {import('./types.js').ConversationSummary} ConversationSummary */

export const PFX = 'localai.';
const INDEX = `${PFX}index`;
export const CONV = `${PFX}conv.`;

/** Small JSON settings (API key, theme, last model...), each under its own key. */
export class Settings {
  /** @param {Storage} storage */
  constructor(storage) {
    this.storage = storage;
  }

  /** @param {string} name @param {any} [dflt] @returns {any} */
  get(name, dflt = null) {
    try {
      const v = this.storage.getItem(PFX + name);
      return v == null ? dflt : JSON.parse(v);
    } catch {
      return dflt;
    }
  }

  /** @param {string} name @param {unknown} value  null removes the setting */
  set(name, value) {
    try {
      if (value == null) this.storage.removeItem(PFX + name);
      else this.storage.setItem(PFX + name, JSON.stringify(value));
    } catch { /* storage full or disabled */ }
  }
}

/** @param {Conversation} c @returns {ConversationSummary} */
function summary(c) {
  return { id: c.id, title: c.title, created: c.created, updated: c.updated, model: c.model, n: c.messages.length };
}

export class ChatStorage {
  /**
   * @param {Storage} storage
   * @param {(e: unknown) => void} [onError]  a save failed (storage full)
   */
  constructor(storage, onError) {
    this.storage = storage;
    this.onError = onError || (() => {});
    /** @type {ConversationSummary[]} newest first */
    this.index = this.readIndex();
  }

  /** @returns {ConversationSummary[]} */
  readIndex() {
    let idx = null;
    try { idx = JSON.parse(this.storage.getItem(INDEX) || 'null'); } catch { idx = null; }
    if (!Array.isArray(idx)) {
      // Rebuild from the conversation keys (index lost or never written).
      idx = [];
      for (let i = 0; i < this.storage.length; i++) {
        const k = this.storage.key(i);
        if (k && k.startsWith(CONV)) {
          const c = this.load(k.slice(CONV.length));
          if (c) idx.push(summary(c));
        }
      }
    }
    return idx.sort((a, b) => b.updated - a.updated);
  }

  reload() {
    this.index = this.readIndex();
  }

  list() {
    return this.index;
  }

  /** @param {string} id */
  has(id) {
    return this.index.some((e) => e.id === id);
  }

  /** @param {string} id @returns {Conversation|null} */
  load(id) {
    try {
      const c = JSON.parse(this.storage.getItem(CONV + id) || 'null');
      if (c && Array.isArray(c.messages)) return c;
    } catch { /* corrupt entry */ }
    return null;
  }

  /** The stored JSON text (what the sidebar's search looks through). @param {string} id */
  raw(id) {
    return this.storage.getItem(CONV + id) || '';
  }

  /** @param {Conversation} conv @param {{touch?: boolean}} [opts]  touch: mark it updated now */
  save(conv, { touch = true } = {}) {
    if (touch) conv.updated = Date.now();
    try {
      this.storage.setItem(CONV + conv.id, JSON.stringify(conv));
    } catch (e) {
      this.onError(e);
      return false;
    }
    const i = this.index.findIndex((e) => e.id === conv.id);
    if (i >= 0) this.index.splice(i, 1);
    this.index.unshift(summary(conv));
    this.index.sort((a, b) => b.updated - a.updated);
    this.writeIndex();
    return true;
  }

  writeIndex() {
    try {
      this.storage.setItem(INDEX, JSON.stringify(this.index));
    } catch (e) {
      this.onError(e);
    }
  }

  /** @param {string} id */
  remove(id) {
    this.storage.removeItem(CONV + id);
    this.index = this.index.filter((e) => e.id !== id);
    this.writeIndex();
  }

  exportAll() {
    const conversations = this.index.map((e) => this.load(e.id)).filter(Boolean);
    return { format: 'localai-chats', version: 1, exported_at: new Date().toISOString(), conversations };
  }

  /**
   * Accepts our export format, a bare array of conversations, or one conversation.
   * @param {any} data
   */
  importData(data) {
    let list;
    if (Array.isArray(data)) list = data;
    else if (data && Array.isArray(data.conversations)) list = data.conversations;
    else if (data && Array.isArray(data.messages)) list = [data];
    else throw new Error('This file does not look like a LocalAI chat export.');
    let added = 0;
    let skipped = 0;
    for (const raw of list) {
      const c = normalize(raw);
      if (!c) { skipped++; continue; }
      const existing = this.load(c.id);
      if (existing) {
        if (JSON.stringify(existing.messages) === JSON.stringify(c.messages)) { skipped++; continue; }
        c.id = uid();
      }
      if (!this.save(c, { touch: false })) break;
      added++;
    }
    return { added, skipped };
  }
}
