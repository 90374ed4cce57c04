// Talking to the gateway: same origin, paths relative to the page so the UI also
// works behind a reverse proxy under a path prefix.
import { settings } from './store.js';

export class ApiError extends Error {
  constructor(status, info = {}, headers = null) {
    super(info.message || `HTTP ${status}`);
    this.status = status;
    this.code = info.code || null;
    this.type = info.type || null;
    const ra = headers && headers.get('Retry-After');
    this.retryAfter = ra != null && ra !== '' && !Number.isNaN(Number(ra)) ? Number(ra) : null;
    this.requestId = headers ? headers.get('X-Request-ID') : null;
  }
}

export function apiKey() {
  return settings.get('apiKey', '') || '';
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export async function readError(resp) {
  let info = {};
  try {
    const text = await resp.text();
    try {
      const j = JSON.parse(text);
      info = j && j.error ? (typeof j.error === 'string' ? { message: j.error } : j.error) : { message: j.message || j.detail || text };
    } catch {
      info = { message: text.slice(0, 300) || resp.statusText };
    }
  } catch { /* body unreadable */ }
  return new ApiError(resp.status, info, resp.headers);
}

export function withTimeout(ms, outer) {
  const ctrl = new AbortController();
  const t = setTimeout(() => ctrl.abort(new DOMException('timeout', 'TimeoutError')), ms);
  if (outer) outer.addEventListener('abort', () => ctrl.abort(outer.reason), { once: true });
  return { signal: ctrl.signal, done: () => clearTimeout(t) };
}

export async function getJSON(path, { auth = false, timeout = 8000 } = {}) {
  const t = withTimeout(timeout);
  try {
    const resp = await fetch(path, { headers: auth ? authHeaders() : {}, cache: 'no-store', signal: t.signal });
    if (!resp.ok) throw await readError(resp);
    return { data: await resp.json(), resp };
  } finally {
    t.done();
  }
}

// Server-sent events of an OpenAI streaming response: yields parsed JSON chunks.
export async function* sseChunks(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // One split per read: a read can hold thousands of events when the page fell behind.
      const events = (buf + decoder.decode(value, { stream: true })).split(/\r?\n\r?\n/);
      buf = events.pop();
      for (const event of events) {
        const data = event
          .split(/\r?\n/)
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(l[5] === ' ' ? 6 : 5))
          .join('\n');
        if (!data) continue;
        if (data.trim() === '[DONE]') return;
        let obj;
        try { obj = JSON.parse(data); } catch { continue; }
        if (obj && obj.error) {
          const e = typeof obj.error === 'string' ? { message: obj.error } : obj.error;
          throw new ApiError(Number(e.code) || 500, e);
        }
        yield obj;
      }
    }
  } finally {
    try { reader.releaseLock(); } catch { /* already released */ }
  }
}

export function abortableSleep(ms, signal, onTick) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) { reject(new DOMException('aborted', 'AbortError')); return; }
    const end = Date.now() + ms;
    let timer;
    const tick = () => {
      const left = end - Date.now();
      if (left <= 0) { cleanup(); resolve(); return; }
      if (onTick) onTick(Math.ceil(left / 1000));
      timer = setTimeout(tick, Math.min(left, left % 1000 || 1000));
    };
    const onAbort = () => { cleanup(); reject(new DOMException('aborted', 'AbortError')); };
    const cleanup = () => { clearTimeout(timer); if (signal) signal.removeEventListener('abort', onAbort); };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    tick();
  });
}
