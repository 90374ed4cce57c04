// @ts-check
// The connection indicator and the offline banner, drawn from what the last probe of
// the gateway found (actions.poll()).
import { store } from '../state.js';
import { el } from './elements.js';

function renderConnection() {
  const { conn, connLabel, nextPollAt } = store.state;
  el.conn.dataset.state = conn;
  el.app.dataset.conn = conn;
  if (conn === 'down') {
    const secs = Math.max(0, Math.ceil((nextPollAt - Date.now()) / 1000));
    el.connLabel.textContent = 'Offline';
    el.conn.title = 'The gateway is not reachable';
    el.banner.hidden = false;
    el.bannerText.textContent = secs > 0
      ? `Can't reach the gateway — it may be restarting. Retrying in ${secs} s…`
      : "Can't reach the gateway — it may be restarting. Retrying…";
  } else {
    el.connLabel.textContent = connLabel;
    el.conn.title = connLabel;
    el.banner.hidden = true;
  }
}

export function subscribeConnection() {
  store.subscribe(['conn', 'connLabel', 'nextPollAt'], renderConnection);
  // The offline banner counts down to the next try.
  setInterval(() => {
    if (store.state.conn === 'down') renderConnection();
  }, 1000);
}
