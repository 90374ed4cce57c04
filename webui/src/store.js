// Conversations live in localStorage: one key per conversation plus a small index,
// so saving the chat that is streaming never re-serialises the others.
import { uid } from './dom.js';

const PFX = 'localai.';
const INDEX = `${PFX}index`;
const CONV = `${PFX}conv.`;

export const settings = {
  get(name, dflt = null) {
    try {
      const v = localStorage.getItem(PFX + name);
      return v == null ? dflt : JSON.parse(v);
    } catch {
      return dflt;
    }
  },
  set(name, value) {
    try {
      if (value == null) localStorage.removeItem(PFX + name);
      else localStorage.setItem(PFX + name, JSON.stringify(value));
    } catch { /* storage full or disabled */ }
  },
};

export function newConversation(model) {
  const now = Date.now();
  return { id: uid(), title: 'New chat', created: now, updated: now, model: model || null, system: '', params: {}, messages: [] };
}

function summary(c) {
  return { id: c.id, title: c.title, created: c.created, updated: c.updated, model: c.model, n: c.messages.length };
}

export class Store {
  constructor(onError) {
    this.onError = onError || (() => {});
    this.index = this.readIndex();
  }

  readIndex() {
    let idx = null;
    try { idx = JSON.parse(localStorage.getItem(INDEX) || 'null'); } catch { idx = null; }
    if (!Array.isArray(idx)) {
      // Rebuild from the conversation keys (index lost or never written).
      idx = [];
      for (let i = 0; i < localStorage.length; i++) {
        const k = localStorage.key(i);
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

  has(id) {
    return this.index.some((e) => e.id === id);
  }

  load(id) {
    try {
      const c = JSON.parse(localStorage.getItem(CONV + id) || 'null');
      if (c && Array.isArray(c.messages)) return c;
    } catch { /* corrupt entry */ }
    return null;
  }

  raw(id) {
    return localStorage.getItem(CONV + id) || '';
  }

  save(conv, { touch = true } = {}) {
    if (touch) conv.updated = Date.now();
    try {
      localStorage.setItem(CONV + conv.id, JSON.stringify(conv));
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
      localStorage.setItem(INDEX, JSON.stringify(this.index));
    } catch (e) {
      this.onError(e);
    }
  }

  remove(id) {
    localStorage.removeItem(CONV + id);
    this.index = this.index.filter((e) => e.id !== id);
    this.writeIndex();
  }

  exportAll() {
    const conversations = this.index.map((e) => this.load(e.id)).filter(Boolean);
    return { format: 'localai-chats', version: 1, exported_at: new Date().toISOString(), conversations };
  }

  // Accepts our export format, a bare array of conversations, or one conversation.
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

function normalize(raw) {
  if (!raw || typeof raw !== 'object' || !Array.isArray(raw.messages)) return null;
  const messages = [];
  for (const m of raw.messages) {
    if (!m || typeof m !== 'object') continue;
    if (!['user', 'assistant', 'system'].includes(m.role)) continue;
    const content = typeof m.content === 'string' ? m.content : Array.isArray(m.content)
      ? m.content.map((p) => (p && typeof p.text === 'string' ? p.text : '')).join('') : '';
    if (m.role === 'system') continue; // system prompt lives on the conversation
    const out = { id: typeof m.id === 'string' ? m.id : uid(), role: m.role, content, created: Number(m.created) || Date.now() };
    for (const k of ['model', 'status', 'stats', 'error', 'truncated', 'reasoning', 'requestId', 'finish']) {
      if (m[k] != null) out[k] = m[k];
    }
    if (out.status === 'streaming') out.status = 'stopped';
    messages.push(out);
  }
  const sysMsg = raw.messages.find((m) => m && m.role === 'system' && typeof m.content === 'string');
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

export function titleFrom(messages) {
  const first = messages.find((m) => m.role === 'user' && m.content.trim());
  if (!first) return 'New chat';
  const line = first.content.trim().split('\n')[0].replace(/\s+/g, ' ');
  return line.length > 48 ? `${line.slice(0, 47)}…` : line;
}
