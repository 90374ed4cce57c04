// The usage panel without the DOM: GET /v1/usage and /v1/usage/team (the contract's
// shapes) turned into budget bars, table rows and the chart's geometry; the requests
// (a 403 from /v1/usage/team is "not an admin"); the numbers as the panel words them.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { dayChart, expiryOf, keyRows, localDay, modelRows, niceCeil, usageError, usagePanel } from '../src/core/usage.js';
import { fmtCompact, fmtDuration, fmtShare } from '../src/core/format.js';
import { getTeamUsage, getUsage } from '../src/core/gateway.js';
import { ApiError } from '../src/core/http.js';

const realFetch = globalThis.fetch;
afterEach(() => { globalThis.fetch = realFetch; });

// 2026-12-06 15:47:48 local time, 8 h 12 min 12 s before the daily reset below.
const NOW = new Date(2026, 11, 6, 15, 47, 48).getTime();
const round1 = (v) => Math.round(v * 10) / 10;
const at = (ms) => new Date(NOW + ms).toISOString();
const counts = (requests, errors, prompt, completion, gpu) => ({
  requests, errors, prompt_tokens: prompt, completion_tokens: completion, cached_tokens: 0, gpu_seconds: gpu,
});

/** GET /v1/usage for key alice, as the contract has it. */
function mine(overrides = {}) {
  return {
    key: 'alice', admin: false, since: '2026-11-06T00:00:00Z', expires: null, models: ['coder', 'gen*'],
    quota: {
      tokens_per_day: { limit: 100000, used: 1234, remaining: 98766, resets_at: at((8 * 3600 + 12 * 60 + 12) * 1000) },
      tokens_per_month: { limit: null, used: 5678, remaining: null, resets_at: at(25 * 86400 * 1000) },
    },
    totals: counts(10, 1, 900, 300, 12.5),
    by_model: [
      { model: 'chat', ...counts(2, 1, 100, 50, 2.5), gpu_share: 0.004 },
      { model: 'coder', ...counts(8, 0, 800, 250, 10), gpu_share: 0.41 },
    ],
    by_day: [{ day: '2026-12-06', ...counts(10, 1, 900, 300, 12.5) }],
    ...overrides,
  };
}

function team() {
  return {
    since: '2026-11-06T00:00:00Z',
    totals: counts(40, 2, 30000, 9000, 200),
    by_key: [
      { key: 'alice', ...counts(10, 1, 900, 300, 12.5), gpu_share: 0.0625, tokens_today: 1234, tokens_month: 5678,
        tokens_per_day: 100000, tokens_per_month: null, expires: null },
      { key: 'intern', ...counts(30, 1, 29100, 8700, 187.5), gpu_share: 0.9375, tokens_today: 95000, tokens_month: 120000,
        tokens_per_day: 100000, tokens_per_month: 120000, expires: '2026-12-31' },
    ],
    by_model: [{ model: 'coder', ...counts(40, 2, 30000, 9000, 200), gpu_share: 1 }],
    by_day: [
      { day: '2026-11-20', ...counts(5, 0, 4000, 1000, 20) },
      { day: '2026-12-06', ...counts(35, 2, 26000, 8000, 180) },
    ],
  };
}

test('the numbers as the panel words them', () => {
  assert.deepEqual([0, 950, 1234, 12345, 999999, 1.24e6, 12.6e6].map(fmtCompact), ['0', '950', '1.2k', '12k', '1M', '1.2M', '13M']);
  assert.deepEqual([0, 0.02, 0.44, 42, 185, 3600, 29532, 273600].map(fmtDuration),
    ['0 s', '<0.1 s', '0.4 s', '42 s', '3 min 5 s', '1 h', '8 h 12 min', '3 d 4 h']);
  assert.deepEqual([0, 0.001, 0.41, 1, 1.2].map(fmtShare), ['0%', '<1%', '41%', '100%', '100%']);
  assert.deepEqual([0, 0.3, 7, 10, 11, 180, 34000].map(niceCeil), [1, 0.5, 10, 10, 20, 200, 50000]);
});

test("a key's budgets: used of the limit, what is left, when it resets; no limit says so", () => {
  const [day, month] = usagePanel(mine(), null, NOW).budgets;
  assert.deepEqual(day, {
    id: 'day', label: 'Today', fraction: 0.01234, level: 'ok', text: '1,234 of 100,000 tokens',
    detail: '98,766 left · resets in 8 h 12 min', resetsAt: mine().quota.tokens_per_day.resets_at,
  });
  assert.equal(month.fraction, null);
  assert.equal(month.text, '5,678 tokens');
  assert.equal(month.detail, 'No budget set');
});

test('a budget near its end turns warn; one used up (or overrun) is full and says so', () => {
  const quota = (used) => ({ ...mine().quota, tokens_per_day: { limit: 1000, used, remaining: Math.max(0, 1000 - used), resets_at: at(60_000) } });
  assert.equal(usagePanel(mine({ quota: quota(799) }), null, NOW).budgets[0].level, 'ok');
  assert.equal(usagePanel(mine({ quota: quota(800) }), null, NOW).budgets[0].level, 'warn');
  const over = usagePanel(mine({ quota: quota(1010) }), null, NOW).budgets[0];
  assert.equal(over.level, 'high');
  assert.equal(over.fraction, 1);
  assert.equal(over.detail, 'Budget used up · resets in 1 min');
});

test("the key's end date: days left, a warning in its last week", () => {
  const today = localDay(NOW);
  assert.equal(today, '2026-12-06');
  assert.equal(expiryOf(null, NOW), null);
  assert.deepEqual(expiryOf('2027-01-31', NOW), { text: 'Valid through 2027-01-31 (56 days from now)', level: 'ok' });
  assert.deepEqual(expiryOf('2026-12-07', NOW), { text: 'Valid through 2026-12-07 (tomorrow is its last day)', level: 'warn' });
  assert.deepEqual(expiryOf('2026-12-06', NOW), { text: 'Valid through 2026-12-06 (today is its last day)', level: 'warn' });
  assert.equal(expiryOf('2026-12-05', NOW).level, 'high');
});

test('usage by model: busiest GPU first, tokens are prompt + completion, shares in percent', () => {
  assert.deepEqual(modelRows(mine().by_model), [
    { model: 'coder', requests: '8', errors: '0', tokens: '1,050', gpu: '10 s', share: '41%' },
    { model: 'chat', requests: '2', errors: '1', tokens: '150', gpu: '2.5 s', share: '<1%' },
  ]);
  const p = usagePanel(mine(), null, NOW);
  assert.equal(p.totals, '10 requests · 1 error · 1,200 tokens · 13 s of GPU time');
  assert.equal(p.allowed, 'Models: coder, gen*');
  assert.equal(usagePanel(mine({ models: null }), null, NOW).allowed, 'Models: all');
  assert.equal(p.team, null, 'no team section without GET /v1/usage/team');
});

test("the team's table by key: today and this month against each key's budget", () => {
  const [intern, alice] = keyRows(team().by_key);
  assert.deepEqual(intern, {
    key: 'intern', requests: '30', errors: '1', tokens: '37,800', gpu: '3 min 8 s', share: '94%',
    today: '95,000 / 100,000', todayLevel: 'warn', month: '120,000 / 120,000', monthLevel: 'high', expires: '2026-12-31',
  });
  assert.equal(alice.today, '1,234 / 100,000');
  assert.equal(alice.month, '5,678');
  assert.equal(alice.monthLevel, 'ok');
  assert.equal(alice.expires, '—');
});

test('the chart: 30 bars ending today, days without requests at zero, a round top', () => {
  const c = dayChart(team().by_day, { today: '2026-12-06' });
  assert.equal(c.bars.length, 30);
  assert.equal(c.bars[0].day, '2026-11-07');
  assert.equal(c.bars[29].day, '2026-12-06');
  assert.equal(c.bars[13].day, '2026-11-20');
  assert.equal(c.bars[13].value, 5000);
  assert.equal(c.bars[29].value, 34000);
  assert.ok(c.bars.filter((b) => b.value === 0).every((b) => b.h === 0 && b.y === c.plot.bottom));
  // top 50,000: 34,000 is 68 % of the plot's height, 5,000 10 %
  const plotH = c.plot.bottom - c.plot.top;
  assert.ok(Math.abs(c.bars[29].h - 0.68 * plotH) <= 0.1);
  assert.ok(Math.abs(c.bars[13].h - 0.1 * plotH) <= 0.1);
  assert.deepEqual(c.yTicks.map((t) => t.text), ['0', '25k', '50k']);
  assert.deepEqual(c.yTicks.map((t) => t.y), [c.plot.bottom, c.plot.top + plotH / 2, c.plot.top]);
  assert.deepEqual(c.xLabels.map((l) => [l.text, l.anchor]), [['Nov 7', 'start'], ['Nov 21', 'middle'], ['Dec 6', 'end']]);
  assert.equal(c.xLabels[0].x, c.bars[0].x);
  assert.equal(c.xLabels[2].x, round1(c.bars[29].x + c.bars[29].w));
  assert.ok(c.xLabels[2].x <= c.width);
  // bars stay inside the plot and do not overlap
  for (const [i, b] of c.bars.entries()) {
    assert.ok(b.x >= c.plot.left && b.x + b.w <= c.plot.right + 0.1);
    if (i) assert.ok(b.x > c.bars[i - 1].x + c.bars[i - 1].w);
  }
  assert.equal(c.bars[29].title, 'Dec 6: 34,000 tokens');
  assert.equal(c.summary, 'Team tokens per day, Nov 7 to Dec 6: 39,000 in all, most on Dec 6 (34,000)');
});

test("the chart ends on the gateway's day when its calendar is ahead of the browser's; an empty window is flat", () => {
  const c = dayChart([{ day: '2026-12-07', ...counts(1, 0, 10, 5, 1) }], { today: '2026-12-06' });
  assert.equal(c.bars[29].day, '2026-12-07');
  assert.equal(c.bars[0].day, '2026-11-08');
  const empty = dayChart([], { today: '2026-03-01', days: 7 });
  assert.deepEqual(empty.bars.map((b) => b.day), ['2026-02-23', '2026-02-24', '2026-02-25', '2026-02-26', '2026-02-27', '2026-02-28', '2026-03-01']);
  assert.ok(empty.bars.every((b) => b.h === 0));
  assert.equal(empty.summary, 'Team tokens per day, Feb 23 to Mar 1: 0 in all');
});

test('an admin key gets the team section', () => {
  const p = usagePanel(mine({ admin: true }), team(), NOW);
  assert.equal(p.team.totals, '40 requests · 2 errors · 39,000 tokens · 3 min 20 s of GPU time');
  assert.deepEqual(p.team.keys.map((k) => k.key), ['intern', 'alice']);
  assert.equal(p.team.chart.bars.length, 30);
});

test('why the panel is empty, in words', () => {
  assert.equal(usageError(new ApiError(401, { message: 'bad key' })), 'The gateway did not accept your API key.');
  assert.match(usageError(new ApiError(404, { message: 'Not Found' })), /does not report usage/);
  assert.equal(usageError(new ApiError(500, { message: 'database is locked' })), 'Could not load the usage (HTTP 500): database is locked');
  assert.match(usageError(new TypeError('Failed to fetch')), /Can't reach the gateway/);
});

test('the requests: /v1/usage and /v1/usage/team with the key and the window; a 403 from the team is null', async () => {
  const calls = [];
  const answer = { 'v1/usage?since=30d': [200, mine()], 'v1/usage/team?since=30d': [403, { error: { code: 'admin_only', message: 'admin keys only' } }] };
  globalThis.fetch = async (url, init) => {
    calls.push({ url, auth: init.headers.Authorization });
    const [status, body] = answer[url];
    return new Response(JSON.stringify(body), { status });
  };
  assert.equal((await getUsage('sk-a', '30d')).key, 'alice');
  assert.equal(await getTeamUsage('sk-a', '30d'), null);
  assert.deepEqual(calls, [{ url: 'v1/usage?since=30d', auth: 'Bearer sk-a' }, { url: 'v1/usage/team?since=30d', auth: 'Bearer sk-a' }]);
  answer['v1/usage/team?since=30d'] = [500, { error: { message: 'boom' } }];
  await assert.rejects(getTeamUsage('sk-a', '30d'), (e) => e instanceof ApiError && e.status === 500);
});
