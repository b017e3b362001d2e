// Join → first frame in real Chromium (a measurement, not a test: `node join-time.mjs [joins]`).
//
// One hall publishes (a canvas and an oscillator); then halls join one after another, each alone (the previous one
// has its picture and left, and a second has passed), and each page notes when it sent `join`, when its subscribe
// connection was made (the first `subscribe_offer` handled; `joined` and the offer are also noted as they arrive),
// ICE connected, DTLS connected (connectionState), and when its
// first video frame was decoded (getStats, polled every 5 ms). Prints each join and the medians.
// GIAOBAN_BIN picks the server binary (default target/debug/giaoban; a release build measures better).

import { fakeMediaScript, launchBrowser, outboundStats, sleep, startServer, stopServer, waitFor } from './harness.mjs';

const JOINS = Number(process.argv[2] || 7);

// Runs in each joining page before its scripts: timestamps (performance.now) of the join's steps.
function joinClock() {
  const t = {};
  window.__joinTimes = t;
  // The server's `joined` and first `subscribe_offer` as they arrive (before the page handles them).
  const Ws = window.WebSocket;
  window.WebSocket = class extends Ws {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        if (typeof e.data !== 'string') return;
        if (t.joined === undefined && e.data.includes('"type":"joined"')) t.joined = performance.now();
        if (t.offerIn === undefined && e.data.includes('"type":"subscribe_offer"')) t.offerIn = performance.now();
      });
    }
  };
  const send = Ws.prototype.send;
  Ws.prototype.send = function (data) {
    if (t.join === undefined && typeof data === 'string' && data.includes('"type":"join"')) t.join = performance.now();
    return send.call(this, data);
  };
  const poll = async () => {
    const pc = window.giaoban?.subscribePc?.();
    const now = performance.now();
    if (pc) {
      if (t.offer === undefined) t.offer = now;
      if (t.ice === undefined && ['connected', 'completed'].includes(pc.iceConnectionState)) t.ice = now;
      if (t.connected === undefined && pc.connectionState === 'connected') t.connected = now;
      if (t.connected !== undefined) {
        const report = await pc.getStats();
        report.forEach((s) => {
          if (t.frame === undefined && s.type === 'inbound-rtp' && s.kind === 'video' && (s.framesDecoded ?? 0) > 0) {
            t.frame = performance.now();
          }
        });
      }
    }
    if (t.frame === undefined) setTimeout(poll, 5);
  };
  setTimeout(poll, 5);
}

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};

const server = await startServer({ settings: { GIAOBAN_AUTH_OPEN_ROOMS: 'true' }, fallback: true });
const browser = await launchBrowser();
try {
  const room = 'do-thoi-gian';
  const open = async (name, rgb, clock) => {
    const context = await browser.newContext({ viewport: { width: 960, height: 540 } });
    const page = await context.newPage();
    await page.addInitScript(fakeMediaScript, { rgb, tone: 440 });
    if (clock) await page.addInitScript(joinClock);
    await page.goto(`${server.baseUrl}?${new URLSearchParams({ room, name })}`);
    return { context, page };
  };
  const chair = await open('Chủ trì', [230, 20, 20], false);
  await waitFor(async () => ((await outboundStats(chair.page))?.video ?? 0) > 0, { what: 'the chair sending video' });
  await sleep(1000);
  const rows = [];
  for (let i = 0; i < JOINS; i++) {
    const hall = await open(`Xã ${i + 1}`, [20, 20, 230], true);
    const t = await waitFor(
      async () => {
        const t = await hall.page.evaluate(() => window.__joinTimes);
        return t?.frame !== undefined ? t : null;
      },
      { interval: 50, what: `a first frame at hall ${i + 1}` },
    );
    const row = {
      joined: t.joined - t.join,
      offerIn: t.offerIn - t.join,
      offer: t.offer - t.join,
      ice: t.ice - t.join,
      connected: t.connected - t.join,
      frame: t.frame - t.join,
    };
    rows.push(row);
    console.log(
      `join ${i + 1}: joined ${row.joined.toFixed(0)} ms, subscribe_offer in ${row.offerIn.toFixed(0)} ms, ` +
        `handled ${row.offer.toFixed(0)} ms, ICE ${row.ice.toFixed(0)} ms, ` +
        `DTLS ${row.connected.toFixed(0)} ms, first frame decoded ${row.frame.toFixed(0)} ms`,
    );
    await hall.context.close();
    await sleep(1000);
  }
  const m = (k) => median(rows.map((r) => r[k])).toFixed(0);
  console.log(
    `median of ${rows.length} (server ${process.env.GIAOBAN_BIN || 'target/debug/giaoban'}): subscribe offer ` +
      `in ${m('offerIn')} ms, handled ${m('offer')} ms, ICE ${m('ice')} ms, DTLS ${m('connected')} ms, first frame decoded ${m('frame')} ms`,
  );
  await chair.context.close();
} finally {
  await browser.close().catch(() => {});
  await stopServer(server);
}
