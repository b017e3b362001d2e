// End-to-end: the real giaoban server binary and headless Chromium (see /work/shared/BROWSER-TESTING.md).
//
// Three participants join one room through join links, each publishing a canvas of its own colour and an
// oscillator. Every page must decode the other two (getStats on its subscribe connection) and show each
// remote participant's colour in that participant's <video data-participant="NAME">. Then one leaves and
// its tile must disappear from the others.
//
// Run: `npm test` here (node --test). GIAOBAN_BIN overrides the server binary (default target/debug/giaoban).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER_BIN = process.env.GIAOBAN_BIN || join(REPO_ROOT, 'target', 'debug', 'giaoban');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
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
];

const PARTICIPANTS = [
  { name: 'UBND xã Đỏ', rgb: [230, 20, 20], colour: 'red' },
  { name: 'UBND phường Xanh Lá', rgb: [20, 210, 20], colour: 'green' },
  { name: 'UBND thị trấn Xanh Dương', rgb: [20, 20, 230], colour: 'blue' },
];

let server; // { proc, baseUrl, log }
let browser;

// ------------------------------------------------------------------------------------------------------------
// Helpers

/** Poll `fn` until it returns a truthy value; throws with the last value seen after `timeout` ms. */
async function waitFor(fn, { timeout = 20_000, interval = 250, what = 'condition' } = {}) {
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
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Start the server. The join links of this test name open rooms (`/?room=&name=`), so open rooms are switched on,
 * and its database goes to a temporary directory. A server from before those settings existed refuses them as
 * unknown: then it is started again without them.
 */
async function startServer() {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(`server binary ${SERVER_BIN} not found: run \`cargo build -p giaoban-signaling\` or set GIAOBAN_BIN`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'giaoban-browser-'));
  const base = {
    GIAOBAN_HTTP_LISTEN: '127.0.0.1:0',
    GIAOBAN_MEDIA_LISTEN_IP: '127.0.0.1',
    GIAOBAN_MEDIA_UDP_PORT: '0',
    GIAOBAN_TLS_SELF_SIGNED: 'false',
  };
  const extra = { GIAOBAN_AUTH_OPEN_ROOMS: 'true', GIAOBAN_STORAGE_DATA_DIR: dataDir };
  try {
    return { ...(await spawnServer({ ...base, ...extra })), dataDir };
  } catch (err) {
    if (!/unknown setting/.test(err.message)) throw err;
    return { ...(await spawnServer(base)), dataDir };
  }
}

function spawnServer(settings) {
  // The server refuses unknown GIAOBAN_* variables (typos in settings), so none from this environment (such as
  // GIAOBAN_BIN) is passed on: only the settings given here.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GIAOBAN_')));
  const proc = spawn(SERVER_BIN, [], {
    cwd: REPO_ROOT,
    env: { ...env, ...settings },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const remember = (stream) => (line) => {
    log.push(`[${stream}] ${line}`);
    if (log.length > 400) log.shift();
  };
  createInterface({ input: proc.stderr }).on('line', remember('stderr'));
  const stdout = createInterface({ input: proc.stdout });
  stdout.on('line', remember('stdout'));
  return new Promise((resolveStart, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server printed no listening line within 30 s:\n${log.join('\n')}`));
    }, 30_000);
    stdout.on('line', (line) => {
      const m = /giaoban listening on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolveStart({ proc, baseUrl: m[1], log });
      }
    });
    // 'close' (not 'exit'): by then every line the server wrote has been read.
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${signal}):\n${log.join('\n')}`));
    });
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
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

/** Replace getUserMedia: a canvas of one solid colour (20 fps) and a WebAudio oscillator. */
function fakeMediaScript({ rgb, tone }) {
  const md = navigator.mediaDevices;
  if (!md) return;
  md.getUserMedia = async (constraints = {}) => {
    const out = new MediaStream();
    if (constraints.video) {
      const canvas = document.createElement('canvas');
      canvas.width = 640;
      canvas.height = 360;
      const ctx = canvas.getContext('2d');
      const paint = () => {
        ctx.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
        ctx.fillRect(0, 0, canvas.width, canvas.height);
      };
      paint();
      setInterval(paint, 50); // repaint so the capture keeps producing frames
      out.addTrack(canvas.captureStream(20).getVideoTracks()[0]);
    }
    if (constraints.audio) {
      const ac = new AudioContext();
      const osc = ac.createOscillator();
      osc.frequency.value = tone;
      const dest = ac.createMediaStreamDestination();
      osc.connect(dest);
      osc.start();
      out.addTrack(dest.stream.getAudioTracks()[0]);
    }
    return out;
  };
}

async function openParticipant(p, room, index) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  const consoleLog = [];
  const foreignRequests = [];
  page.on('console', (m) => consoleLog.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLog.push(`pageerror: ${e.message}`));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(server.baseUrl) && !url.startsWith('data:') && !url.startsWith('blob:')) {
      foreignRequests.push(url);
    }
  });
  await page.addInitScript(fakeMediaScript, { rgb: p.rgb, tone: 300 + 150 * index });
  const link = `${server.baseUrl}?${new URLSearchParams({ room, name: p.name })}`;
  await page.goto(link);
  return { ...p, context, page, consoleLog, foreignRequests };
}

/** Inbound RTP counts from the page's subscribe connection (real stats, not the app's own bookkeeping). */
async function inboundStats(page) {
  return page.evaluate(async () => {
    const pc = window.giaoban?.subscribePc?.();
    if (!pc) return null;
    const report = await pc.getStats();
    const out = { videoDecoding: 0, audioReceiving: 0, video: [], audio: [] };
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') {
        out.video.push({ ssrc: s.ssrc, framesDecoded: s.framesDecoded ?? 0, codecId: s.codecId });
        if ((s.framesDecoded ?? 0) > 0) out.videoDecoding += 1;
      } else if (s.kind === 'audio') {
        out.audio.push({ ssrc: s.ssrc, packetsReceived: s.packetsReceived ?? 0 });
        if ((s.packetsReceived ?? 0) > 0) out.audioReceiving += 1;
      }
    });
    return out;
  });
}

async function outboundStats(page) {
  return page.evaluate(async () => {
    const pc = window.giaoban?.publishPc?.();
    if (!pc) return null;
    const report = await pc.getStats();
    const out = {};
    report.forEach((s) => {
      if (s.type === 'outbound-rtp') out[s.kind] = (out[s.kind] ?? 0) + (s.packetsSent ?? 0);
    });
    return out;
  });
}

/** Mean colour of the remote <video data-participant=name>, drawn into a canvas; null until it has a frame. */
async function meanColour(page, name) {
  return page.evaluate((name) => {
    const video = document.querySelector(`video[data-participant="${CSS.escape(name)}"]`);
    if (!video || video.videoWidth === 0 || video.readyState < 2) return null;
    const w = 64;
    const h = 36;
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, w, h);
    const data = ctx.getImageData(0, 0, w, h).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) {
      sum[0] += data[i];
      sum[1] += data[i + 1];
      sum[2] += data[i + 2];
    }
    const n = data.length / 4;
    return sum.map((v) => Math.round(v / n));
  }, name);
}

/**
 * The mean colour shows the publisher's colour: its dominant channel is bright and the other two are dark. (Not an
 * exact match: the decoded picture may come out in a different YUV range, e.g. 210 green is shown as 255.)
 */
function colourMatches(mean, rgb) {
  if (!mean) return false;
  const want = rgb.indexOf(Math.max(...rgb));
  return mean.every((v, i) => (i === want ? v >= 150 : v <= 90));
}

function diagnostics(people) {
  const parts = [];
  for (const p of people) {
    parts.push(`--- console of "${p.name}" ---\n${p.consoleLog.slice(-40).join('\n')}`);
  }
  if (server) parts.push(`--- server log (tail) ---\n${server.log.slice(-80).join('\n')}`);
  return parts.join('\n');
}

// ------------------------------------------------------------------------------------------------------------

before(async () => {
  server = await startServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopServer();
});

test('the page without a join link shows the Vietnamese join form', { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const foreign = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(server.baseUrl) && !r.url().startsWith('data:')) foreign.push(r.url());
    });
    await page.goto(server.baseUrl);
    const form = page.getByTestId('join-form');
    await form.waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'vi');
    const formText = await form.innerText();
    assert.match(formText, /Phòng họp/);
    assert.match(formText, /Tên điểm cầu/);
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Tham gia');
    assert.equal(await page.getByTestId('meeting-view').isVisible(), false);

    // The English switch changes the form and persists across a reload.
    await page.getByTestId('lang').click();
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Join');
    await page.reload();
    await page.getByTestId('join-form').waitFor({ state: 'visible' });
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Join');
    await page.getByTestId('lang').click();
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Tham gia');

    assert.deepEqual(foreign, [], 'the page must load nothing from outside the server');
  } finally {
    await context.close();
  }
});

test('three halls see and hear each other; a leaver disappears', { timeout: 100_000 }, async (t) => {
  const room = `giao-ban-${Date.now()}`;
  const people = [];
  try {
    for (const [i, p] of PARTICIPANTS.entries()) people.push(await openParticipant(p, room, i));

    // Every page joined (its own debug hook) and publishes (its publish connection's real stats).
    for (const p of people) {
      await waitFor(() => p.page.evaluate(() => window.giaoban.state().joined), {
        what: `"${p.name}" to join`,
      });
    }
    for (const p of people) {
      await waitFor(
        async () => {
          const out = await outboundStats(p.page);
          return out && out.audio > 0 && out.video > 0 && out;
        },
        { what: `"${p.name}" to send audio and video` },
      );
    }

    // Each page decodes two video streams and receives two audio streams on its subscribe connection.
    for (const p of people) {
      const stats = await waitFor(
        async () => {
          const s = await inboundStats(p.page);
          return s && s.videoDecoding >= 2 && s.audioReceiving >= 2 && s;
        },
        { what: `"${p.name}" to decode 2 videos and receive 2 audios` },
      );
      t.diagnostic(`${p.name}: ${JSON.stringify(stats)}`);
    }

    // Each remote tile shows its publisher's colour.
    for (const viewer of people) {
      for (const other of people) {
        if (other === viewer) continue;
        const mean = await waitFor(
          async () => {
            const m = await meanColour(viewer.page, other.name);
            return colourMatches(m, other.rgb) && m;
          },
          { what: `"${viewer.name}" to show ${other.colour} for "${other.name}"` },
        );
        t.diagnostic(`${viewer.name} sees ${other.name} as rgb(${mean.join(',')})`);
      }
      // Own preview is not a remote tile.
      const remoteTiles = await viewer.page.locator('video[data-participant]').count();
      assert.equal(remoteTiles, 2, `"${viewer.name}" has exactly two remote tiles`);
    }

    // Switching the camera off is relayed (media_state) to the others' tiles.
    const [, second, third] = people;
    await third.page.getByTestId('camera').click();
    await waitFor(
      () =>
        second.page.evaluate((name) => {
          const video = document.querySelector(`video[data-participant="${CSS.escape(name)}"]`);
          return video?.closest('.tile')?.querySelector('[data-testid="tile-camera"]')?.dataset.on === 'false';
        }, third.name),
      { timeout: 10_000, what: `"${second.name}" to see the camera of "${third.name}" off` },
    );
    await third.page.getByTestId('camera').click();

    // One hall leaves: its tile disappears from the other two pages.
    const [leaver, ...stayers] = people;
    await leaver.page.getByRole('button', { name: 'Rời cuộc họp' }).click();
    await leaver.page.getByTestId('join-form').waitFor({ state: 'visible', timeout: 5_000 });
    for (const p of stayers) {
      await waitFor(
        () =>
          p.page.evaluate(
            (name) => document.querySelector(`[data-participant="${CSS.escape(name)}"]`) === null,
            leaver.name,
          ),
        { timeout: 10_000, what: `"${leaver.name}" to leave the page of "${p.name}"` },
      );
      assert.equal(await p.page.locator('video[data-participant]').count(), 1);
    }

    for (const p of people) assert.deepEqual(p.foreignRequests, [], `"${p.name}" loaded nothing external`);
  } catch (err) {
    err.message += `\n${diagnostics(people)}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
  }
});
