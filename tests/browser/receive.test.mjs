// A large meeting from a hall's page (headless Chromium, see /work/shared/BROWSER-TESTING.md): with more halls than
// `media.every_hall_up_to` (set to 1 here, so two halls are "large"), a hall receives only the chair and whoever
// holds the floor (`receiving`). Its page says so (the chip), shows no tile for the other hall and receives none of
// its media; the chair still sees every hall. When the chair gives the other hall the floor, the hall's page gets
// that hall's tile and shows it as the main picture, decoded (its colour), over the same subscribe connection.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  CLIENT_FILES,
  FROM_DISK_ARGS,
  colourMatches,
  diagnostics as harnessDiagnostics,
  fakeMediaScript,
  findLink,
  launchBrowser,
  meanColour,
  serveClientFromDisk,
  sleep,
  startServer,
  stopServer,
  waitFor,
  watchPage,
} from './harness.mjs';

const CHAIR = { key: 'chair', rgb: [230, 20, 20], tone: 330 };
const HALL_A = { key: 'UBND xã An Phú', rgb: [20, 210, 20], tone: 440 };
const HALL_B = { key: 'UBND xã Bình Minh', rgb: [20, 20, 230], tone: 550 };
const mainVideo = '[data-testid="main-video"]';

let server;
let browser;
const contexts = [];

before(async () => {
  server = await startServer({ prefix: 'giaoban-receive-', demo: true, settings: { GIAOBAN_MEDIA_EVERY_HALL_UP_TO: '1' } });
  browser = await launchBrowser(FROM_DISK_ARGS);
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await stopServer(server);
});

async function open(who, pred) {
  const link = findLink(server, pred, who.key);
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  contexts.push(context);
  await serveClientFromDisk(context, server.baseUrl, CLIENT_FILES);
  const page = await context.newPage();
  const { consoleLog } = watchPage(page, server.baseUrl);
  await page.addInitScript(fakeMediaScript, { rgb: who.rgb, tone: who.tone });
  await page.goto(link.url);
  const id = await waitFor(() => page.evaluate(() => window.giaoban?.state().selfId), { what: `${who.key} to join` });
  return { ...who, label: who.key, context, page, consoleLog, id };
}

/** Packets received on the page's subscribe connection, by publisher: the server names each sender's stream after its
 * publisher (`a=msid:<participant> <track>` in its offer), matched to `inbound-rtp` by mid. */
function receivedFrom(page) {
  return page.evaluate(async () => {
    const pc = window.giaoban?.subscribePc?.();
    if (!pc) return {};
    const ownerOfMid = {};
    for (const section of (pc.remoteDescription?.sdp ?? '').split(/\r?\nm=/).slice(1)) {
      const mid = /a=mid:(\S+)/.exec(section)?.[1];
      const owner = /a=msid:(\S+) /.exec(section)?.[1];
      if (mid && owner) ownerOfMid[mid] = owner;
    }
    const out = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const owner = ownerOfMid[s.mid] ?? `mid ${s.mid}`;
      out[owner] = (out[owner] ?? 0) + (s.packetsReceived ?? 0);
    });
    return out;
  });
}

const tileHidden = (page, id) =>
  page.evaluate((pid) => {
    const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
    return tile ? tile.hidden : null;
  }, id);

test('a hall in a large meeting receives the chair and the floor holder only', { timeout: 120_000 }, async (t) => {
  const pages = [];
  try {
    const chair = await open(CHAIR, (l) => l.name.endsWith('(Chủ trì)'));
    pages.push(chair);
    const a = await open(HALL_A, (l) => l.name === HALL_A.key);
    pages.push(a);
    const b = await open(HALL_B, (l) => l.name === HALL_B.key);
    pages.push(b);

    // Two halls, more than one: A is told it receives only the chair; its page says so and hides B's tile.
    await a.page.getByTestId('receive-only').waitFor({ state: 'visible', timeout: 15_000 });
    t.diagnostic(`A's chip: ${await a.page.getByTestId('receive-only').innerText()}`);
    await waitFor(async () => (await tileHidden(a.page, b.id)) === true, { what: "B's tile hidden on A's page" });
    assert.equal(await tileHidden(a.page, chair.id), false, "the chair's tile is shown on A's page");
    // The chair sees both halls, and no chip.
    await waitFor(async () => (await tileHidden(chair.page, a.id)) === false && (await tileHidden(chair.page, b.id)) === false, {
      what: "both halls' tiles on the chair's page",
    });
    assert.equal(await chair.page.getByTestId('receive-only').isVisible(), false, 'no chip on the chair');
    // A's main picture is the chair, decoded; nothing of B reaches A.
    const red = await waitFor(
      async () => {
        const m = await meanColour(a.page, mainVideo);
        return colourMatches(m, CHAIR.rgb) && m;
      },
      { what: "A's main picture to show the chair (red)" },
    );
    t.diagnostic(`A's main picture: rgb(${red.join(',')})`);
    await sleep(1000);
    const before = await receivedFrom(a.page);
    t.diagnostic(`A receives (packets by publisher): ${JSON.stringify(before)}`);
    assert.ok((before[chair.id] ?? 0) > 0, "A receives the chair's media");
    assert.equal(before[b.id] ?? 0, 0, "A receives nothing of B before B has the floor");
    const subscribePcBefore = await a.page.evaluate(() => {
      window.__subscribePcMark = window.giaoban.subscribePc();
      return true;
    });
    assert.ok(subscribePcBefore);

    // The chair gives B the floor from B's tile: A now receives B and shows it as the main picture (blue).
    await chair.page.locator(`.tile[data-participant-id="${b.id}"] [data-testid="tile-grant"]`).click();
    await waitFor(async () => (await tileHidden(a.page, b.id)) === false, { what: "B's tile shown on A's page after the grant" });
    const blue = await waitFor(
      async () => {
        const m = await meanColour(a.page, mainVideo);
        return colourMatches(m, HALL_B.rgb) && m;
      },
      { timeout: 15_000, what: "A's main picture to show B (blue) with the floor" },
    );
    t.diagnostic(`A's main picture with B holding the floor: rgb(${blue.join(',')})`);
    const during = await waitFor(
      async () => {
        const r = await receivedFrom(a.page);
        return (r[b.id] ?? 0) > 0 && r;
      },
      { what: "A to receive B's media" },
    );
    t.diagnostic(`A receives after the grant: ${JSON.stringify(during)}`);
    assert.ok(
      await a.page.evaluate(() => window.__subscribePcMark === window.giaoban.subscribePc()),
      "A's subscribe connection stayed the same (renegotiated, not replaced)",
    );
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, pages, { consoleLines: 30, serverLines: 60 })}`;
    throw err;
  }
});
