// @ts-check
// One answer, without the DOM: the request body, sending it with retries and
// backoff, reading its stream into the message, and the timing/token statistics.
// The views pass in what to do on each step (show a wait, paint, save).
import { ApiError, NetworkError, readError, sseChunks, abortableSleep, anySignal } from './http.js';

/** @typedef {import('./types.js').Conversation} Conversation */
/** @typedef {import('./types.js').Message} Message */
/** @typedef {import('./types.js').Stats} Stats */
/** @typedef {import('./types.js').Usage} Usage */
/** @typedef {import('./types.js').ErrorView} ErrorView */
/** @typedef {ApiError | NetworkError} RequestError */

/**
 * The messages sent for an answer to the first *upto* messages: the system prompt,
 * then the turns (answers that never produced text are left out).
 * @param {Conversation} conv
 * @param {number} upto
 */
export function apiMessages(conv, upto) {
  const out = [];
  if (conv.system && conv.system.trim()) out.push({ role: 'system', content: conv.system });
  for (const m of conv.messages.slice(0, upto)) {
    if (m.role === 'assistant' && !m.content) continue;
    out.push({ role: m.role, content: m.content });
  }
  return out;
}

/**
 * The body of POST /v1/chat/completions for an answer to the first *upto* messages.
 * @param {Conversation} conv
 * @param {string} model
 * @param {number} upto
 */
export function chatRequest(conv, model, upto) {
  /** @type {Record<string, unknown>} */
  const body = { model, messages: apiMessages(conv, upto), stream: true, stream_options: { include_usage: true } };
  const p = conv.params || {};
  // (an imported chat's params may hold strings: '' means "the model's default")
  if (p.temperature != null && /** @type {unknown} */ (p.temperature) !== '') body.temperature = Number(p.temperature);
  if (p.max_tokens != null && /** @type {unknown} */ (p.max_tokens) !== '') body.max_tokens = Number(p.max_tokens);
  return body;
}

/**
 * @typedef {object} RetryPolicy
 * @property {number} max  retries at most
 * @property {number} cap  seconds a wait lasts at most
 * @property {(secs: number, attempt: number, max: number) => string} text  what the answer shows while waiting
 */

/** How a failed request is retried, or null when it is not. @param {RequestError} e @returns {RetryPolicy|null} */
export function retryPolicy(e) {
  if (e instanceof NetworkError) return { max: 5, cap: 8, text: (s) => `Can't reach the gateway. Retrying in ${s} s…` };
  if (e.status === 429) return { max: 6, cap: 30, text: (s, a, max) => `The gateway is busy (queue full). Retrying in ${s} s… (retry ${a} of ${max})` };
  if (e.status === 503 && e.code === 'model_loading') return { max: 60, cap: 10, text: (s) => `The model is loading. Retrying in ${s} s…` };
  if (e.status === 502 || e.status === 503 || e.status === 504) return { max: 4, cap: 10, text: (s, a, max) => `The model server is unavailable (HTTP ${e.status}). Retrying in ${s} s… (retry ${a} of ${max})` };
  return null;
}

/**
 * Seconds before retry number *attempt* (1, 2, ...): doubling, at least what the
 * gateway's Retry-After asks, at most the policy's cap.
 * @param {RetryPolicy} pol @param {RequestError} err @param {number} attempt
 */
export function backoffSeconds(pol, err, attempt) {
  const asked = err instanceof ApiError ? err.retryAfter || 0 : 0;
  return Math.min(pol.cap, Math.max(asked, 2 ** (attempt - 1)));
}

/** What the error box says about a failed answer. @param {RequestError} e @param {string} model @returns {ErrorView} */
export function describeError(e, model) {
  if (e instanceof NetworkError) return { title: "Can't reach the gateway.", detail: 'It may be restarting. The status indicator at the top shows when it is back; then try again.' };
  const detail = [e.message, e.code ? `(${e.code})` : null, e.requestId ? `request ${e.requestId}` : null].filter(Boolean).join(' ');
  if (e.status === 401) return { title: 'The gateway did not accept your API key.', detail: 'Enter a valid key to continue.', status: 401 };
  if (e.status === 404 || e.code === 'model_not_found') return { title: `The model “${model}” is not available on this gateway.`, detail };
  if (e.code === 'context_length_exceeded') return { title: 'This chat is too long for the model’s context window.', detail: `Start a new chat, or edit an earlier message to shorten it. ${detail}` };
  if (e.status === 429) return { title: 'The gateway is still busy; gave up after several retries.', detail };
  // (also when it came as a stream's error event, which carries the code but no status)
  if (e.code === 'model_unavailable') return { title: `The model “${model}” is unavailable.`, detail };
  if (e.code === 'queue_timeout') return { title: `The model “${model}” could not be served in time.`, detail };
  if (e.status === 503) return { title: e.code === 'model_loading' ? 'The model is still loading.' : 'The model server is unavailable.', detail };
  return { title: `Request failed${e.status ? ` (HTTP ${e.status})` : ''}.`, detail };
}

/**
 * @typedef {object} SendOptions
 * @property {string} url
 * @property {Record<string, unknown>} body
 * @property {Record<string, string>} headers
 * @property {AbortSignal} signal  the user's Stop
 * @property {Set<() => void>} wakers  a waiting retry adds itself here; calling it retries at once
 * @property {(text: string|null) => void} onWait  a retry's countdown (null: not waiting)
 * @property {() => void} [onNetworkError]
 */

/**
 * POST the chat request, retrying what retryPolicy() allows. Resolves with the
 * accepted response and when it was sent; throws an ApiError, a NetworkError, or an
 * AbortError when stopped.
 * @param {SendOptions} o
 * @returns {Promise<{resp: Response, sentAt: number}>}
 */
export async function sendWithRetries(o) {
  let attempt = 0;
  for (;;) {
    /** @type {RequestError|null} */
    let err = null;
    const sentAt = performance.now();
    /** @type {Response|undefined} */
    let resp;
    try {
      resp = await fetch(o.url, { method: 'POST', headers: o.headers, body: JSON.stringify(o.body), signal: o.signal, cache: 'no-store' });
      if (!resp.ok) err = await readError(resp);
    } catch (e) {
      if (e instanceof Error && e.name === 'AbortError') throw e;
      err = new NetworkError();
      if (o.onNetworkError) o.onNetworkError();
    }
    if (!err && resp) return { resp, sentAt };
    const failure = /** @type {RequestError} */ (err);
    const pol = retryPolicy(failure);
    if (!pol || attempt >= pol.max) throw failure;
    attempt++;
    const secs = backoffSeconds(pol, failure, attempt);
    const n = attempt;
    o.onWait(pol.text(secs, n, pol.max));
    const early = new AbortController();
    const wake = () => early.abort();
    o.wakers.add(wake);
    try {
      await abortableSleep(secs * 1000, anySignal(o.signal, early.signal), (left) => o.onWait(pol.text(left, n, pol.max)));
    } catch (e) {
      if (o.signal.aborted) throw e; // stopped by the user; else woken early: retry now
    } finally {
      o.wakers.delete(wake);
    }
    o.onWait(null);
  }
}

/** Token timing of one answer: first token, pieces counted, the usage reported. */
export class AnswerClock {
  /** @param {number} sentAt  performance.now() when the request went out */
  constructor(sentAt = performance.now()) {
    this.sentAt = sentAt;
    this.firstAt = 0;
    this.pieces = 0;
    /** @type {Usage|null} */
    this.usage = null;
  }

  /** A chunk with text arrived. */
  piece(now = performance.now()) {
    if (!this.firstAt) this.firstAt = now;
    this.pieces++;
  }

  /** The statistics at the end, or undefined when nothing arrived. @returns {Stats|undefined} */
  stats(endAt = performance.now()) {
    const usage = this.usage;
    if (!this.firstAt && !usage) return undefined;
    const completion = usage && usage.completion_tokens != null ? usage.completion_tokens : this.pieces || null;
    const gen = (endAt - this.firstAt) / 1000;
    return {
      ttft_ms: this.firstAt ? Math.round(this.firstAt - this.sentAt) : null,
      tps: this.firstAt && completion != null && completion >= 4 && gen > 0.05 ? (completion - 1) / gen : null,
      prompt_tokens: usage && usage.prompt_tokens != null ? usage.prompt_tokens : null,
      completion_tokens: completion,
      estimated: !usage,
    };
  }
}

// Reads of data already received resolve as microtasks: a fast model would keep the
// read loop running with no frame painted and no key or click (Stop!) handled.
const YIELD_EVERY_MS = 10;
/** @type {() => Promise<void>} */
const yieldToEventLoop = () => {
  const s = /** @type {any} */ (globalThis).scheduler;
  return s && s.yield ? s.yield() : new Promise((r) => setTimeout(r, 0));
};

/**
 * The model a gateway heartbeat says it is bringing in (`: waiting for coder to load`,
 * sent while a sleeping or stopped model is woken or started), else null.
 * @param {string} comment  an SSE comment, without its colon
 */
export function loadingModel(comment) {
  const m = /^waiting for (.+) to load$/.exec(comment);
  return m ? m[1] : null;
}

/** What the answer shows while its model loads. @param {string} model @param {number} elapsedMs */
export const loadingText = (model, elapsedMs) => `loading ${model}… ${Math.max(0, Math.floor(elapsedMs / 1000))} s`;

/**
 * Call *onTick* with the milliseconds since *since* (a performance.now() time) at once
 * and then at each whole second after it, until the returned function is called.
 * @param {number} since
 * @param {(elapsedMs: number) => void} onTick
 * @param {() => number} [now]  the clock (tests pass their own)
 * @returns {() => void}  stops the ticks
 */
export function everySecond(since, onTick, now = () => performance.now()) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const tick = () => {
    const elapsed = now() - since;
    onTick(elapsed);
    timer = setTimeout(tick, 1000 - (elapsed % 1000));
  };
  tick();
  return () => clearTimeout(timer);
}

/**
 * Read an accepted streaming response into *msg* (content, reasoning, finish),
 * counting on *clock*; *onText* runs after each chunk that added text. While the
 * gateway sends load heartbeats and no event yet, *onLoading* gets the model's name
 * at each; it gets null once the model answers.
 * @param {Response} resp
 * @param {Message} msg
 * @param {AnswerClock} clock
 * @param {() => void} onText
 * @param {(model: string|null) => void} [onLoading]
 */
export async function readAnswer(resp, msg, clock, onText, onLoading) {
  let lastYield = performance.now();
  let loading = false;
  /** @param {string} comment */
  const heard = (comment) => {
    const model = loadingModel(comment);
    if (model && onLoading) {
      loading = true;
      onLoading(model);
    }
  };
  for await (const chunk of sseChunks(resp, heard)) {
    if (loading && onLoading) {
      loading = false;
      onLoading(null);
    }
    if (chunk.usage) clock.usage = chunk.usage;
    const ch = chunk.choices && chunk.choices[0];
    if (!ch) continue;
    const d = ch.delta || {};
    const piece = d.content || '';
    const think = d.reasoning_content || d.reasoning || '';
    if (piece || think) {
      clock.piece();
      if (piece) msg.content += piece;
      if (think) msg.reasoning = (msg.reasoning || '') + think;
      onText();
    }
    if (ch.finish_reason) msg.finish = ch.finish_reason;
    if (performance.now() - lastYield > YIELD_EVERY_MS) {
      await yieldToEventLoop();
      lastYield = performance.now();
    }
  }
}

/** What the response's headers say about the answer. @param {Response} resp @param {Message} msg */
export function noteResponseHeaders(resp, msg) {
  msg.requestId = resp.headers.get('X-Request-ID') || undefined;
  const trunc = Number(resp.headers.get('X-LocalAI-Truncated-Messages') || 0);
  if (trunc > 0) msg.truncated = trunc;
  return trunc;
}

/** Anything thrown that is not the gateway's answer counts as not reaching it. @param {unknown} e @returns {RequestError} */
export function asRequestError(e) {
  if (e instanceof ApiError || e instanceof NetworkError) return e;
  return new NetworkError(String((e instanceof Error && e.message) || e));
}

const est = (/** @type {string|undefined} */ t) => Math.ceil((t || '').length / 4);

/**
 * Tokens the next request would take: the last answer's reported usage plus what
 * came after it, else ≈4 characters a token.
 * @param {Conversation} conv
 * @param {string} [draft]  the text being typed
 */
export function estimateTokens(conv, draft) {
  let total = 0;
  let from = 0;
  for (let i = conv.messages.length - 1; i >= 0; i--) {
    const m = conv.messages[i];
    if (m.role === 'assistant' && m.stats && m.stats.prompt_tokens != null && !m.stats.estimated) {
      total = m.stats.prompt_tokens + (m.stats.completion_tokens || 0);
      from = i + 1;
      break;
    }
  }
  if (from === 0 && conv.system) total += est(conv.system) + 4;
  for (const m of conv.messages.slice(from)) total += est(m.content) + 4;
  if (draft && draft.trim()) total += est(draft) + 4;
  return total;
}
