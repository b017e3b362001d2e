// Simulcast end to end: the real giaoban server and headless Chromium (see /work/shared/BROWSER-TESTING.md).
//
// The chair of the demo meeting publishes its camera (a 960x540 canvas with motion) in three simulcast layers
// (rids q/h/f). From the SFU's own figures (/api/health with the admin token) the test checks that three layers
// arrive, each with its own SSRC and packets. A hall receives the chair as its main picture; the chair caps what
// the hall receives from its tile ("Hình: thấp / vừa / tự động"), and the layer the SFU forwards to the hall and
// the width the hall's Chromium decodes follow: 240, 480, then 960. Layers nobody receives are paused at the
// chair (the SFU's `layers` message → `encodings[i].active = false`; a layer the message does not name stays as
// it is), and the hall's picture keeps being decoded after every switch (no frozen picture).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  CLIENT_FILES,
  FROM_DISK_ARGS,
  diagnostics as harnessDiagnostics,
  fakeMediaScript,
  findLink,
  launchBrowser,
  mainPicture,
  serveClientFromDisk,
  startServer,
  stopServer,
  waitFor as harnessWaitFor,
  watchPage,
} from './harness.mjs';

const HALL = 'UBND xã An Phú';

let server; // { proc, log, dataDir, baseUrl, adminUrl, links: [{name, url}] }
let browser;
const contexts = [];

const waitFor = (fn, options = {}) => harnessWaitFor(fn, { timeout: 30_000, what: 'a condition', ...options });
const tokenOf = (url) => new URL(url).searchParams.get('token');

async function openPage(label, url, media) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  contexts.push(context);
  await serveClientFromDisk(context, server.baseUrl, CLIENT_FILES);
  const page = await context.newPage();
  const { consoleLog } = watchPage(page, server.baseUrl);
  await page.addInitScript(fakeMediaScript, media);
  // The control WebSocket passes through untouched; `socket` lets the test add a message of its own.
  const opened = { socket: null };
  await page.routeWebSocket(/.*/, (ws) => {
    ws.connectToServer();
    opened.socket = ws;
  });
  await page.goto(url);
  return { label, context, page, consoleLog, opened };
}

/** The SFU's link health of one participant (admin token). */
async function healthOf(participantId) {
  const res = await fetch(`${server.baseUrl}api/health?token=${tokenOf(server.adminUrl)}`);
  assert.equal(res.status, 200);
  const body = await res.json();
  return body.participants.find((p) => p.participant_id === participantId) ?? null;
}

/** The chair's camera producer as the SFU sees it (the video producer with rids). */
async function cameraProducer(chairId) {
  const h = await healthOf(chairId);
  return h?.producers?.find((p) => p.kind === 'video') ?? null;
}

/** What the hall receives of `trackId`: the SFU's chosen layer. */
async function receiving(hallId, trackId) {
  const h = await healthOf(hallId);
  return h?.receiving?.find((r) => r.track_id === trackId) ?? null;
}

/** The chair's outbound video encodings by rid: active flag, packets sent, frame width. */
function chairEncodings(page) {
  return page.evaluate(async () => {
    const pc = window.giaoban?.publishPc?.();
    if (!pc) return {};
    const out = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) {
        out[s.rid] = { active: s.active, packetsSent: s.packetsSent ?? 0, frameWidth: s.frameWidth ?? 0 };
      }
    });
    return out;
  });
}

before(async () => {
  server = await startServer({ prefix: 'giaoban-simulcast-', demo: true }); // simulcast is on by default
  browser = await launchBrowser(FROM_DISK_ARGS);
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await stopServer(server);
});

test('Chromium publishes three layers; the chair moves a hall between them by its cap', { timeout: 150_000 }, async (t) => {
  const pages = [];
  try {
    const chairLink = findLink(server, (l) => l.name.endsWith('(Chủ trì)'), 'chair');
    const hallLink = findLink(server, (l) => l.name === HALL, HALL);
    const chair = await openPage('chair', chairLink.url, { rgb: [230, 20, 20], tone: 300, width: 960, height: 540, moving: true });
    pages.push(chair);
    const hall = await openPage(HALL, hallLink.url, { rgb: [20, 210, 20], tone: 450 });
    pages.push(hall);
    const chairId = await waitFor(() => chair.page.evaluate(() => window.giaoban?.state().selfId), { what: 'the chair to join' });
    const hallId = await waitFor(() => hall.page.evaluate(() => window.giaoban?.state().selfId), { what: 'the hall to join' });

    // The server's answer takes the three layers: a=rid:<rid> recv and a=simulcast:recv q;h;f.
    const answer = await waitFor(
      () => chair.page.evaluate(() => window.giaoban?.publishPc?.()?.remoteDescription?.sdp),
      { what: 'the publish answer' },
    );
    for (const rid of ['q', 'h', 'f']) assert.match(answer, new RegExp(`a=rid:${rid} recv`), `answer has a=rid:${rid} recv`);
    assert.match(answer, /a=simulcast:recv q;h;f/);
    assert.doesNotMatch(answer, /rtx/i, 'no RTX on the publish leg');

    // 1. Three layers arrive at the SFU, each its own SSRC, each with packets (its own figures). Layers nobody
    // receives are paused at the chair soon after, so each layer's flow is checked again when the hall gets it.
    const producer = await waitFor(
      async () => {
        const p = await cameraProducer(chairId);
        return p && p.layers.length === 3 && p.layers.every((l) => l.packets > 0) ? p : null;
      },
      { what: 'three layers with packets at the SFU', timeout: 45_000 },
    );
    t.diagnostic(`layers at the SFU: ${JSON.stringify(producer.layers)}`);
    assert.deepEqual(producer.layers.map((l) => l.rid), ['q', 'h', 'f']);
    assert.equal(new Set(producer.layers.map((l) => l.ssrc)).size, 3, 'one SSRC per layer');
    const trackId = producer.track_id;

    // The hall's main picture is the chair; it gets decoded frames.
    await waitFor(async () => (await mainPicture(hall.page)).framesDecoded > 10, { what: 'the hall to decode the chair' });

    // The chair's cap select on the hall's tile.
    const capSelect = chair.page.locator(`.tile[data-participant-id="${hallId}"] [data-testid="tile-layer-cap"]`);
    await capSelect.waitFor({ state: 'attached', timeout: 15_000 });

    const layerPackets = async (rid) => (await cameraProducer(chairId)).layers.find((l) => l.rid === rid).packets;
    const moveTo = async (cap, rid, width) => {
      await capSelect.selectOption(cap);
      const r = await waitFor(
        async () => {
          const rec = await receiving(hallId, trackId);
          return rec && rec.layer === rid && rec.target === rid ? rec : null;
        },
        { what: `the SFU to forward layer ${rid} to the hall (cap ${cap})` },
      );
      const pic = await waitFor(
        async () => {
          const p = await mainPicture(hall.page);
          return p.width === width ? p : null;
        },
        { what: `the hall to decode ${width} wide (cap ${cap})` },
      );
      // No frozen picture after the switch: frames keep being decoded; and the layer keeps arriving at the SFU.
      const packets = await layerPackets(rid);
      await waitFor(async () => (await mainPicture(hall.page)).framesDecoded >= pic.framesDecoded + 20, {
        what: `frames to keep coming after the switch to ${rid}`,
      });
      // Counted on its own clock: frames decoded after the first reading may have reached the SFU before it.
      await waitFor(async () => (await layerPackets(rid)) > packets + 20, {
        what: `layer ${rid} to keep arriving at the SFU`,
        timeout: 10_000,
      });
      t.diagnostic(`cap ${cap}: SFU layer ${r.layer}, hall decodes ${pic.width}x${pic.height}`);
      return r;
    };

    // 2. Cap low: the hall gets q (240 wide); nobody receives h and f, so the chair stops sending them.
    await moveTo('low', 'q', 240);
    await waitFor(
      async () => {
        const p = await cameraProducer(chairId);
        return p.layers.find((l) => l.rid === 'h').paused && p.layers.find((l) => l.rid === 'f').paused;
      },
      { what: 'the SFU to pause h and f at the publisher' },
    );
    const inactive = await waitFor(
      async () => {
        const e = await chairEncodings(chair.page);
        return e.f && e.f.active === false && e.h.active === false && e.q.active === true ? e : null;
      },
      { what: "the chair's Chromium to stop sending h and f" },
    );
    t.diagnostic(`chair encodings with cap low: ${JSON.stringify(inactive)}`);

    // 3. Cap medium: h (480 wide); the chair sends h again.
    await moveTo('medium', 'h', 480);
    // 4. No cap: the main picture is large, the link on loopback ample: f (960 wide).
    await moveTo('auto', 'f', 960);

    // A `layers` message names only the layers the SFU has seen. One sent before f's first packet reached the SFU
    // names q and h but not f, and the chair must leave f on, or f would never arrive. The test adds such a message
    // (the race itself is rare: 3 of ~17 runs of downlink.test.mjs lost f to it) and checks that f keeps flowing.
    const fBefore = await layerPackets('f');
    chair.opened.socket.send(
      JSON.stringify({ type: 'layers', track_id: trackId, source: 'camera', active: ['q'], paused: ['h'] }),
    );
    await new Promise((r) => setTimeout(r, 1_500));
    const unnamed = await chairEncodings(chair.page);
    t.diagnostic(`chair encodings after a layers message without f: ${JSON.stringify(unnamed)}`);
    assert.equal(unnamed.f?.active, true, 'f, named in neither list, stays on');
    assert.equal(unnamed.h?.active, false, 'h, named as paused, stays off');
    await waitFor(async () => (await layerPackets('f')) > fBefore + 50, { what: 'f to keep arriving at the SFU', timeout: 10_000 });
    assert.equal((await receiving(hallId, trackId)).layer, 'f', 'the hall still gets f');
    // 5. And down again at once to q.
    await moveTo('low', 'q', 240);
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, pages, { consoleLines: 30, serverLines: 60 })}`;
    throw err;
  }
});
