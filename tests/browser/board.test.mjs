// End-to-end: the link-health board (/board, "Giám sát đường truyền") with the real server and headless Chromium.
//
// The server starts on an empty data directory, so it creates the demo meeting and prints its join links, the
// observer link and the admin link. Two halls join by their links (fake media); the board opened with the admin
// token must list both with verdict "good" and a bitrate, and the server panel must count 2 participants. When one
// hall's page closes, an alert about it appears and its row turns red (or goes). The observer token also opens the
// board (its own meeting); a bogus, a missing and a hall's token show a clear error.
//
// Run: `node --test board.test.mjs` here. GIAOBAN_BIN overrides the server binary (default target/debug/giaoban).
// WEB_CLIENT_FROM_DISK=1 serves the board's files from web-client/ instead of the copy embedded in the binary.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  CLIENT_FILES,
  FROM_DISK_ARGS,
  SCREENSHOT_DIR,
  diagnostics as harnessDiagnostics,
  findLink,
  launchBrowser,
  serveClientFromDisk,
  startServer,
  stopServer,
  waitFor as harnessWaitFor,
  watchPage,
} from './harness.mjs';

const DISK_FILES = {
  ...CLIENT_FILES,
  '/board': ['board.html', 'text/html; charset=utf-8'],
  '/board.js': ['board.js', 'text/javascript; charset=utf-8'],
};

const HALL_A = 'UBND xã An Phú';
const HALL_B = 'UBND xã Bình Minh';

let server; // { proc, log, dataDir, baseUrl, adminUrl, links: [{name, url}] }
let browser;
const contexts = [];

/** The harness's polling with this test's defaults (15 s). */
const waitFor = (fn, options = {}) => harnessWaitFor(fn, { timeout: 15_000, what: 'a condition', ...options });

const tokenOf = (url) => new URL(url).searchParams.get('token');

const link = (pred, what) => findLink(server, pred, what);

/** A page in its own browser context (one per participant), its console kept. */
async function openPage(label, url) {
  const context = await browser.newContext({ viewport: { width: 1600, height: 900 } });
  contexts.push(context);
  await serveClientFromDisk(context, server.baseUrl, DISK_FILES);
  const page = await context.newPage();
  const { consoleLog } = watchPage(page, server.baseUrl);
  await page.goto(url);
  return { label, context, page, consoleLog };
}

/** What the board shows: its rows, alerts, server panel and error, read from the DOM. */
function boardView(page) {
  return page.evaluate(() => {
    const rows = [...document.querySelectorAll('[data-testid="hall-row"]')].map((r) => ({
      name: r.dataset.participant,
      verdict: r.dataset.verdict,
      present: r.dataset.present,
      bitrateIn: Number(r.dataset.bitrateIn),
      bitrateOut: Number(r.dataset.bitrateOut),
      legs: [...r.querySelectorAll('[data-testid^="leg-"]')].map((l) => l.dataset.state),
      badge: r.querySelector('[data-testid="verdict"]')?.textContent,
      level: r.querySelector('[data-testid="audio-level"]')?.dataset.dbov ?? null,
    }));
    const alerts = [...document.querySelectorAll('[data-testid="alert"]')].map((a) => ({
      level: a.dataset.level,
      hall: a.dataset.hall,
      text: a.textContent,
    }));
    const stat = (k) => document.querySelector(`[data-testid="server-${k}"]`)?.dataset.value ?? null;
    const err = document.querySelector('[data-testid="board-error"]');
    return {
      rows,
      alerts,
      server: {
        panel: !!document.querySelector('[data-testid="server-panel"]'),
        participants: stat('participants'),
        connections: stat('connections'),
        cpu: stat('cpu'),
        memory: stat('memory'),
        ppsIn: stat('pps-in'),
      },
      error: err && { kind: err.dataset.kind, text: err.textContent },
    };
  });
}

const diagnostics = (pages) => harnessDiagnostics(server, pages, { consoleLines: 30, serverLines: 40 });

before(async () => {
  // A fresh data directory without open rooms: the server creates the demo meeting and prints its links.
  server = await startServer({ prefix: 'giaoban-board-', demo: true });
  browser = await launchBrowser(FROM_DISK_ARGS);
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await stopServer(server);
});

test('the board lists both halls, counts them, and alerts when one drops out', { timeout: 60_000 }, async (t) => {
  const pages = [];
  try {
    const a = await openPage(HALL_A, link((l) => l.name === HALL_A, HALL_A).url);
    pages.push(a);
    const b = await openPage(HALL_B, link((l) => l.name === HALL_B, HALL_B).url);
    pages.push(b);
    for (const p of [a, b]) {
      await waitFor(() => p.page.evaluate(() => window.giaoban?.state().joined), { what: `${p.label} to join` });
    }

    const board = await openPage('board (admin)', `${server.baseUrl}board?token=${tokenOf(server.adminUrl)}`);
    pages.push(board);
    assert.equal(await board.page.title(), 'Giám sát đường truyền');

    // Both halls good, with media flowing, within ~15 s; the server counts the two participants.
    const view = await waitFor(
      async () => {
        const v = await boardView(board.page);
        const ok = [HALL_A, HALL_B].every((n) =>
          v.rows.some((r) => r.name === n && r.verdict === 'good' && r.bitrateIn > 0 && r.legs.every((s) => s === 'connected')),
        );
        return ok && v.server.participants === '2' && v.server.cpu !== '' && v.server.ppsIn !== '' && v;
      },
      { timeout: 15_000, what: 'both halls good with bitrate, and 2 participants on the server panel' },
    ).catch(async (err) => {
      err.message += `\nboard: ${JSON.stringify(await boardView(board.page))}`;
      throw err;
    });
    t.diagnostic(`rows: ${JSON.stringify(view.rows)}`);
    if (process.env.RAW_HEALTH) {
      // The raw /api/health answer, for looking at the server's figures.
      const raw = await board.page.evaluate(async (tok) => (await fetch(`/api/health?token=${tok}`)).json(), tokenOf(server.adminUrl));
      t.diagnostic(`raw /api/health: ${JSON.stringify(raw)}`);
    }
    t.diagnostic(`server panel: ${JSON.stringify(view.server)}`);
    assert.equal(view.rows.length, 2);
    assert.equal(view.error, null);
    assert.ok(Number(view.server.memory) > 1, 'memory in MB');
    const rowA = board.page.locator(`[data-testid="hall-row"][data-participant="${HALL_A}"]`);
    assert.equal((await rowA.getByTestId('verdict').innerText()).trim(), 'Tốt');
    assert.match(await rowA.getByTestId('browser').innerText(), /^Chrome \d+ · Linux$/, "the hall's browser, from its User-Agent");
    assert.match(await rowA.getByTestId('connected-time').innerText(), /^\d+:\d\d$/, 'how long it has been connected');
    // The video it receives, with the layer the SFU chose (one layer: these halls publish without simulcast).
    await waitFor(async () => /^Hình nhận: /.test(await rowA.getByTestId('layers-received').innerText().catch(() => '')), {
      what: 'the layer the hall receives on the board',
    });
    assert.equal(await rowA.locator('svg[data-testid="sparkline"] polyline').count(), 2, 'a sparkline of bitrate');
    assert.deepEqual(view.alerts, [], 'no alerts while all is well');
    // Chromium sends the RFC 6464 audio level of its (fake, beeping) microphone: each row gets a level in dBov.
    const levels = await waitFor(
      async () => {
        const v = await boardView(board.page);
        const ls = [HALL_A, HALL_B].map((n) => v.rows.find((r) => r.name === n)?.level);
        return ls.every((l) => l !== null && l !== undefined && l !== '') && ls;
      },
      { timeout: 10_000, what: 'an audio level on both rows' },
    );
    t.diagnostic(`audio levels (dBov): ${JSON.stringify(levels)}`);
    for (const l of levels) assert.ok(Number(l) <= 0 && Number(l) >= -127, `level ${l} in dBov`);
    if (SCREENSHOT_DIR) await board.page.screenshot({ path: join(SCREENSHOT_DIR, 'board.png'), fullPage: true });

    // Hall B closes its page: an alert names it (with the time) and its row turns red or goes.
    const closedAt = Date.now();
    await b.context.close();
    const after = await waitFor(
      async () => {
        const v = await boardView(board.page);
        const alerted = v.alerts.some((x) => x.hall === HALL_B && x.level === 'bad');
        const row = v.rows.find((r) => r.name === HALL_B);
        const shown = !row || row.verdict === 'poor' || row.verdict === 'offline';
        return alerted && shown && v;
      },
      { timeout: 15_000, what: `an alert about ${HALL_B} and its row red or gone` },
    ).catch(async (err) => {
      err.message += `\nboard: ${JSON.stringify(await boardView(board.page))}`;
      throw err;
    });
    t.diagnostic(`${HALL_B} reported ${Date.now() - closedAt} ms after closing: ${JSON.stringify(after.alerts)}`);
    assert.match(after.alerts.find((x) => x.hall === HALL_B).text, /\d{1,2}:\d{2}:\d{2}/, 'the alert has a time');
    assert.ok(after.rows.some((r) => r.name === HALL_A && r.verdict === 'good'), `${HALL_A} still good`);
    assert.ok(
      board.consoleLog.some((l) => l.startsWith('info:') && l.includes(HALL_B)),
      `the alert is on console.info: ${JSON.stringify(board.consoleLog)}`,
    );
    await waitFor(async () => (await boardView(board.page)).server.participants === '1', { what: 'the server panel to count 1' });
    if (SCREENSHOT_DIR) await board.page.screenshot({ path: join(SCREENSHOT_DIR, 'board-alert.png'), fullPage: true });

    // B comes back: a "reconnected" alert and a good row again.
    const b2 = await openPage(`${HALL_B} (again)`, link((l) => l.name === HALL_B, HALL_B).url);
    pages.push(b2);
    await waitFor(
      async () => {
        const v = await boardView(board.page);
        return v.alerts.some((x) => x.hall === HALL_B && x.level === 'ok') && v.rows.some((r) => r.name === HALL_B && r.verdict === 'good') && v;
      },
      { timeout: 15_000, what: `${HALL_B} to come back on the board` },
    ).catch(async (err) => {
      err.message += `\nboard: ${JSON.stringify(await boardView(board.page))}`;
      throw err;
    });

    // The English switch re-renders the board.
    await board.page.getByTestId('lang-toggle').click();
    await board.page.getByText('Link health board').waitFor({ timeout: 5_000 });
    await board.page.getByTestId('lang-toggle').click();
    await board.page.getByText('Giám sát đường truyền', { exact: true }).waitFor({ timeout: 5_000 });
    assert.equal(board.consoleLog.filter((l) => l.startsWith('pageerror')).length, 0, board.consoleLog.join('\n'));
  } catch (err) {
    err.message += `\n${diagnostics(pages)}`;
    throw err;
  }
});

test('the board opens with the observer token; a bogus, missing or hall token gets a clear error', { timeout: 30_000 }, async (t) => {
  const observerLink = link((l) => l.name.includes('dự thính'), 'observer');
  const obs = await openPage('board (observer)', `${server.baseUrl}board?token=${tokenOf(observerLink.url)}`);
  const v = await waitFor(
    async () => {
      const x = await boardView(obs.page);
      return x.server.panel && x.rows.some((r) => r.name === HALL_A && r.present === 'true') && x;
    },
    { what: `the observer's board to list ${HALL_A}` },
  ).catch(async (err) => {
    err.message += `\nboard: ${JSON.stringify(await boardView(obs.page))}\n${diagnostics([obs])}`;
    throw err;
  });
  assert.equal(v.error, null);
  t.diagnostic(`observer sees: ${JSON.stringify(v.rows.map((r) => [r.name, r.verdict]))}`);

  const cases = [
    ['bogus', `${server.baseUrl}board?token=not-a-real-token`, 'unauthorized', /Mã truy cập không hợp lệ/],
    ['missing', `${server.baseUrl}board`, 'missing', /Thiếu mã truy cập/],
    ['hall', `${server.baseUrl}board?token=${tokenOf(link((l) => l.name === HALL_A, HALL_A).url)}`, 'forbidden', /không có quyền/],
  ];
  for (const [label, url, kind, text] of cases) {
    const p = await openPage(`board (${label} token)`, url);
    const err = await waitFor(async () => (await boardView(p.page)).error, { timeout: 8_000, what: `the ${label} token's error` });
    assert.equal(err.kind, kind, label);
    assert.match(err.text, text, label);
    assert.equal((await boardView(p.page)).rows.length, 0, `${label}: no rows`);
    if (SCREENSHOT_DIR) await p.page.screenshot({ path: join(SCREENSHOT_DIR, `board-${label}.png`) });
    await p.context.close();
  }
});
