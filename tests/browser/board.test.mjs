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
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER_BIN = process.env.GIAOBAN_BIN || join(REPO_ROOT, 'target', 'debug', 'giaoban');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const WEB_FROM_DISK = !!process.env.WEB_CLIENT_FROM_DISK;
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || '';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
  ...(WEB_FROM_DISK ? ['--disable-features=LocalNetworkAccessChecks'] : []),
];
const DISK_FILES = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/protocol.js': ['protocol.js', 'text/javascript; charset=utf-8'],
  '/i18n.js': ['i18n.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
  '/board': ['board.html', 'text/html; charset=utf-8'],
  '/board.js': ['board.js', 'text/javascript; charset=utf-8'],
};

const HALL_A = 'UBND xã An Phú';
const HALL_B = 'UBND xã Bình Minh';

let server; // { proc, log, dataDir, baseUrl, adminUrl, links: [{name, url}] }
let browser;
const contexts = [];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(fn, { timeout = 15_000, interval = 250, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const detail = lastErr ? `last error: ${lastErr.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (${detail})`);
    }
    await sleep(interval);
  }
}

/** The server on a fresh data directory, with the links it prints for the demo meeting. */
function startServer() {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(`no server binary at ${SERVER_BIN}: run \`cargo build -p giaoban-signaling\` or set GIAOBAN_BIN`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'giaoban-board-'));
  // The server refuses unknown GIAOBAN_* variables: pass none of ours.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GIAOBAN_')));
  Object.assign(env, {
    GIAOBAN_HTTP_LISTEN: '127.0.0.1:0',
    GIAOBAN_MEDIA_LISTEN_IP: '127.0.0.1',
    GIAOBAN_MEDIA_UDP_PORT: '0',
    GIAOBAN_TLS_SELF_SIGNED: 'false',
    GIAOBAN_STORAGE_DATA_DIR: dataDir,
  });
  const proc = spawn(SERVER_BIN, [], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const found = { proc, log: [], dataDir, baseUrl: null, adminUrl: null, links: [] };
  const keep = (tag) => (line) => {
    found.log.push(`[${tag}] ${line}`);
    if (found.log.length > 300) found.log.shift();
  };
  createInterface({ input: proc.stderr }).on('line', keep('stderr'));
  const out = createInterface({ input: proc.stdout });
  out.on('line', keep('stdout'));
  return new Promise((ok, fail) => {
    const give_up = (err) => {
      clearTimeout(timer);
      rmSync(dataDir, { recursive: true, force: true });
      fail(err);
    };
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      give_up(new Error(`the server printed no demo meeting within 30 s:\n${found.log.join('\n')}`));
    }, 30_000);
    let demo = false;
    out.on('line', (line) => {
      let m;
      if ((m = /giaoban listening on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(line))) found.baseUrl = m[1];
      else if ((m = /^\s+admin page: (\S+)/.exec(line))) found.adminUrl = m[1];
      else if (/^\s+demo meeting "/.test(line)) demo = true;
      else if (demo && (m = /^\s{3,}(\S.*?)\s+(http:\/\/\S+\?token=\S+)\s*$/.exec(line))) found.links.push({ name: m[1], url: m[2] });
      if (found.baseUrl && found.adminUrl && found.links.length >= 5) {
        clearTimeout(timer);
        ok(found);
      }
    });
    proc.on('close', (code, signal) => give_up(new Error(`the server exited (code ${code}, signal ${signal}):\n${found.log.join('\n')}`)));
    proc.on('error', give_up);
  });
}

async function stopServer() {
  if (!server) return;
  const { proc } = server;
  if (proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 3_000);
    await exited;
    clearTimeout(timer);
  }
  rmSync(server.dataDir, { recursive: true, force: true });
}

const tokenOf = (url) => new URL(url).searchParams.get('token');

function link(pred, what) {
  const l = server.links.find(pred);
  if (!l) throw new Error(`no ${what} link among ${JSON.stringify(server.links.map((x) => x.name))}`);
  return l;
}

/** A page in its own browser context (one per participant), its console kept. */
async function openPage(label, url) {
  const context = await browser.newContext({ viewport: { width: 1600, height: 900 } });
  contexts.push(context);
  if (WEB_FROM_DISK) {
    await context.route(
      (u) => u.href.startsWith(server.baseUrl) && Object.hasOwn(DISK_FILES, u.pathname),
      (route) => {
        const [file, contentType] = DISK_FILES[new URL(route.request().url()).pathname];
        route.fulfill({ contentType, body: readFileSync(join(REPO_ROOT, 'web-client', file)) });
      },
    );
  }
  const page = await context.newPage();
  const consoleLog = [];
  page.on('console', (m) => consoleLog.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLog.push(`pageerror: ${e.message}`));
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

function diagnostics(pages) {
  const parts = pages.filter(Boolean).map((p) => `--- console of ${p.label} ---\n${p.consoleLog.slice(-30).join('\n')}`);
  if (server) parts.push(`--- server log (tail) ---\n${server.log.slice(-40).join('\n')}`);
  return parts.join('\n');
}

before(async () => {
  server = await startServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await stopServer();
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
    assert.equal(await rowA.locator('svg[data-testid="sparkline"] polyline').count(), 2, 'a sparkline of bitrate');
    assert.deepEqual(view.alerts, [], 'no alerts while all is well');
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
