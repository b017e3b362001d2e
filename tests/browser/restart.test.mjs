// The server restarts in the middle of a meeting: two halls in real Chromium see each other, the server stops
// (SIGTERM: everyone gets `bye` with `rejoin: true`) and starts again on the same address and data directory, and
// both pages come back by themselves — no reload — and see each other again.
//
// Run: `npm test` here (node --test). GIAOBAN_BIN overrides the server binary (default target/debug/giaoban).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  colourMatches,
  diagnostics,
  fakeMediaScript,
  inboundStats,
  launchBrowser,
  meanColour,
  startServer,
  stopServer,
  waitFor,
  watchPage,
} from './harness.mjs';

const HALLS = [
  { name: 'UBND xã Hồng', rgb: [230, 20, 20] },
  { name: 'UBND xã Lục', rgb: [20, 210, 20] },
];

let browser;
let server;
const dataDir = mkdtempSync(join(tmpdir(), 'giaoban-restart-'));

/** A loopback TCP port nobody listens on now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopServer(server);
  rmSync(dataDir, { recursive: true, force: true });
});

/** Both pages decode each other's video and show the other's colour. */
async function seeEachOther(pages, what) {
  for (const p of pages) {
    const other = pages.find((o) => o !== p);
    await waitFor(
      async () => {
        const s = await inboundStats(p.page);
        if (!(s && s.videoDecoding >= 1 && s.audioReceiving >= 1)) return false;
        const m = await meanColour(p.page, { participant: other.name });
        return colourMatches(m, other.rgb) && m;
      },
      { what: `"${p.name}" to see ${other.name} ${what}`, timeout: 45_000 },
    );
  }
}

test('after a server restart the halls come back by themselves, without a reload', { timeout: 150_000 }, async (t) => {
  const port = await freePort();
  const settings = {
    GIAOBAN_AUTH_OPEN_ROOMS: 'true',
    GIAOBAN_HTTP_LISTEN: `127.0.0.1:${port}`,
    GIAOBAN_STORAGE_DATA_DIR: dataDir,
  };
  server = await startServer({ prefix: 'giaoban-restart-unused-', settings });
  const room = `khoi-dong-lai-${Date.now()}`;
  const pages = [];
  try {
    for (const [i, h] of HALLS.entries()) {
      const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
      const page = await context.newPage();
      const { consoleLog } = watchPage(page, server.baseUrl);
      await page.addInitScript(fakeMediaScript, { rgb: h.rgb, tone: 350 + 200 * i });
      await page.goto(`${server.baseUrl}?${new URLSearchParams({ room, name: h.name })}`);
      pages.push({ ...h, context, page, consoleLog });
    }
    await seeEachOther(pages, 'before the restart');
    // A marker in each page: it survives only if the page is not reloaded.
    for (const p of pages) await p.page.evaluate(() => { window.__beforeRestart = true; });
    const idsBefore = await Promise.all(pages.map((p) => p.page.evaluate(() => window.giaoban.state().selfId)));

    const stoppedAt = Date.now();
    await stopServer(server);
    server = await startServer({ prefix: 'giaoban-restart-unused-', settings });
    t.diagnostic(`server restarted in ${Date.now() - stoppedAt} ms on the same port ${port}`);

    await seeEachOther(pages, 'after the restart');
    const back = Date.now() - stoppedAt;
    t.diagnostic(`both halls see each other again ${back} ms after the stop`);
    for (const p of pages) {
      assert.equal(await p.page.evaluate(() => window.__beforeRestart === true), true, `${p.name} was not reloaded`);
    }
    const idsAfter = await Promise.all(pages.map((p) => p.page.evaluate(() => window.giaoban.state().selfId)));
    for (const [i, id] of idsAfter.entries()) {
      assert.ok(id && id !== idsBefore[i], `${HALLS[i].name} joined the new server as a new session (${idsBefore[i]} → ${id})`);
    }
  } catch (err) {
    err.message += `\n${diagnostics(server, pages)}`;
    throw err;
  } finally {
    for (const p of pages) await p.context.close().catch(() => {});
  }
});
