// @ts-check
// Talking to the gateway over fetch: errors in its OpenAI shape, timeouts, and the
// server-sent events of a streaming answer. No DOM: unit-tested under Node.

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {{message?: string, code?: string|number|null, type?: string|null}} [info]
   * @param {Headers|null} [headers]
   */
  constructor(status, info = {}, headers = null) {
    super(info.message || `HTTP ${status}`);
    this.status = status;
    /** @type {string|number|null} */
    this.code = info.code || null;
    this.type = info.type || null;
    const ra = headers && headers.get('Retry-After');
    /** seconds the gateway asked us to wait, or null */
    this.retryAfter = ra != null && ra !== '' && !Number.isNaN(Number(ra)) ? Number(ra) : null;
    this.requestId = headers ? headers.get('X-Request-ID') : null;
  }
}

/** The gateway could not be reached at all (no HTTP status). */
export class NetworkError extends Error {
  constructor(message = 'network') {
    super(message);
    this.network = true;
  }
}

/**
 * Request headers with the API key, when there is one.
 * @param {string} key
 * @param {Record<string, string>} [extra]
 * @returns {Record<string, string>}
 */
export function authHeaders(key, extra = {}) {
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** @param {Response} resp */
export async function readError(resp) {
  /** @type {{message?: string, code?: string, type?: string}} */
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

/**
 * An AbortSignal that fires after *ms*, or when *outer* does.
 * @param {number} ms
 * @param {AbortSignal} [outer]
 */
export function withTimeout(ms, outer) {
  const ctrl = new AbortController();
  const t = setTimeout(() => ctrl.abort(new DOMException('timeout', 'TimeoutError')), ms);
  if (outer) outer.addEventListener('abort', () => ctrl.abort(outer.reason), { once: true });
  return { signal: ctrl.signal, done: () => clearTimeout(t) };
}

/**
 * GET a JSON document; non-2xx answers throw an ApiError.
 * @param {string} url
 * @param {{key?: string|null, timeout?: number}} [opts]  key: send it (null: an unauthenticated request)
 */
export async function getJSON(url, { key = null, timeout = 8000 } = {}) {
  const t = withTimeout(timeout);
  try {
    const resp = await fetch(url, { headers: key != null ? authHeaders(key) : {}, cache: 'no-store', signal: t.signal });
    if (!resp.ok) throw await readError(resp);
    return { data: await resp.json(), resp };
  } finally {
    t.done();
  }
}

/**
 * Server-sent events of an OpenAI streaming response: yields parsed JSON chunks,
 * ends at `[DONE]`, throws an ApiError for an error event. Comment lines (`: ...`,
 * the gateway's heartbeats while a model loads) go to *onComment*, without the colon.
 * @param {Response} resp
 * @param {(comment: string) => void} [onComment]
 * @returns {AsyncGenerator<any, void, void>}
 */
export async function* sseChunks(resp, onComment) {
  if (!resp.body) return;
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // One split per read: a read can hold thousands of events when the page fell behind.
      const events = (buf + decoder.decode(value, { stream: true })).split(/\r?\n\r?\n/);
      buf = events.pop() || '';
      for (const event of events) {
        const lines = event.split(/\r?\n/);
        if (onComment) for (const l of lines) if (l.startsWith(':')) onComment(l.slice(1).trim());
        const data = lines
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

/**
 * Sleep *ms*, rejecting with an AbortError when *signal* fires; *onTick* gets the
 * whole seconds left, once a second (for a countdown).
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @param {(secondsLeft: number) => void} [onTick]
 * @returns {Promise<void>}
 */
export function abortableSleep(ms, signal, onTick) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) { reject(new DOMException('aborted', 'AbortError')); return; }
    const end = Date.now() + ms;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
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

/** A signal that fires when any of *signals* does. @param {...AbortSignal} signals */
export function anySignal(...signals) {
  const c = new AbortController();
  for (const sig of signals) {
    if (sig.aborted) c.abort();
    else sig.addEventListener('abort', () => c.abort(), { once: true });
  }
  return c.signal;
}
