// @ts-check
// The connection indicator and the offline banner, fed by polling /health and /ready.
import { authHeaders, withTimeout } from '../core/http.js';
import { isAvailable } from '../core/models.js';
import { state, wakeRetries, apiKey } from '../state.js';
import { el } from './elements.js';
import { toast } from './toast.js';
import { loadModels, renderPicker } from './models.js';
import { updateEmpty } from './thread.js';

const POLL_OK_MS = 5000;
const POLL_HIDDEN_MS = 30000;

export async function poll() {
  clearTimeout(state.pollTimer);
  let next = document.hidden ? POLL_HIDDEN_MS : POLL_OK_MS;
  const wasDown = state.conn === 'down';
  try {
    const t = withTimeout(5000);
    let hr;
    let rr;
    try {
      [hr, rr] = await Promise.all([
        // With the key, /health also says why a model is down.
        fetch('health', { headers: authHeaders(apiKey()), cache: 'no-store', signal: t.signal }),
        fetch('ready', { cache: 'no-store', signal: t.signal }),
      ]);
    } finally {
      t.done();
    }
    if (hr.status >= 500 && hr.status !== 503) throw new Error(`HTTP ${hr.status}`);
    let health = null;
    try { health = await hr.json(); } catch { health = null; }
    state.health = health && typeof health === 'object' ? health : null;
    state.failCount = 0;
    const hm = (state.health && state.health.models) || {};
    const states = Object.values(hm).map((m) => (m && m.state) || 'unknown');
    const ready = rr.status === 200;
    const prev = state.prevStates;
    const nowReady = Object.entries(hm).some(([k, m]) => m && m.state === 'ready' && prev[k] && prev[k] !== 'ready');
    state.prevStates = Object.fromEntries(Object.entries(hm).map(([k, m]) => [k, m && m.state]));
    if (wasDown || nowReady) wakeRetries();
    if (!ready) setConn('noready', states.includes('loading') ? 'Models loading…' : 'No model ready');
    else if (states.some((s) => !isAvailable(s))) {
      const n = states.filter((s) => !isAvailable(s)).length;
      setConn('degraded', `Connected · ${n} not ready`);
    } else setConn('ok', 'Connected');
    // Reload the model list when the gateway's set of models changed.
    const known = state.models.map((m) => m.id).sort().join(',');
    const now = Object.keys(hm).sort().join(',');
    if (wasDown || (state.auth !== 'bad' && state.auth !== 'missing' && now && now !== known)) await loadModels();
    if (wasDown) toast('Reconnected to the gateway.', 'ok');
  } catch {
    state.failCount++;
    next = Math.min(8000, 1000 * 2 ** Math.min(state.failCount - 1, 3));
    state.nextPollAt = Date.now() + next;
    setConn('down');
  }
  renderPicker();
  updateEmpty();
  state.pollTimer = setTimeout(poll, next);
}

/**
 * @param {import('../state.js').AppState['conn']} s
 * @param {string} [label]
 */
function setConn(s, label = '') {
  state.conn = s;
  el.conn.dataset.state = s;
  el.app.dataset.conn = s;
  if (s === 'down') {
    const secs = Math.max(0, Math.ceil((state.nextPollAt - Date.now()) / 1000));
    el.connLabel.textContent = 'Offline';
    el.conn.title = 'The gateway is not reachable';
    el.banner.hidden = false;
    el.bannerText.textContent = secs > 0
      ? `Can't reach the gateway — it may be restarting. Retrying in ${secs} s…`
      : "Can't reach the gateway — it may be restarting. Retrying…";
  } else {
    el.connLabel.textContent = label;
    el.conn.title = label;
    el.banner.hidden = true;
  }
}

/** The offline banner counts down to the next try. */
export function startBannerClock() {
  setInterval(() => {
    if (state.conn === 'down') setConn('down');
  }, 1000);
}
