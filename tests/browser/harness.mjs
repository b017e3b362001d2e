// Shared helpers of the browser tests (meeting, briefing, board): the real giaoban server binary on a fresh data
// directory, headless Chromium (see /work/shared/BROWSER-TESTING.md), polling, fake media and stats read in pages.
//
// GIAOBAN_BIN overrides the server binary (default target/debug/giaoban), CHROMIUM_BIN overrides /usr/bin/chromium,
// WEB_CLIENT_FROM_DISK=1 lets a test serve web-client/ from disk instead of the copy compiled into the binary.

import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SERVER_BIN = process.env.GIAOBAN_BIN || join(REPO_ROOT, 'target', 'debug', 'giaoban');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
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
export const WEB_FROM_DISK = !!process.env.WEB_CLIENT_FROM_DISK;
/** Pages fulfilled from disk have no address space of their own: this lets them reach the loopback server. */
export const FROM_DISK_ARGS = WEB_FROM_DISK ? ['--disable-features=LocalNetworkAccessChecks'] : [];
/** Where to save screenshots of each view (optional, for looking at the layout). */
export const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || '';
/** The client's files every page loads: URL path → [file in web-client/, content type]. */
export const CLIENT_FILES = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/protocol.js': ['protocol.js', 'text/javascript; charset=utf-8'],
  '/i18n.js': ['i18n.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
};

/** The settings every test gives the server: HTTP and media on loopback with ephemeral ports, no TLS. */
const BASE_SETTINGS = {
  GIAOBAN_HTTP_LISTEN: '127.0.0.1:0',
  GIAOBAN_MEDIA_LISTEN_IP: '127.0.0.1',
  GIAOBAN_MEDIA_UDP_PORT: '0',
  GIAOBAN_TLS_SELF_SIGNED: 'false',
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value; throws with the last value seen after `timeout` ms. */
export async function waitFor(fn, { timeout = 20_000, interval = 250, what = 'condition' } = {}) {
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

/**
 * Start the server on a fresh temporary data directory (`prefix`) with the base settings, that directory and
 * `settings`. With `demo`, wait until it has printed the demo meeting's join links and the admin link (an empty data
 * directory without open rooms makes it create that meeting); otherwise only for its listening line. With
 * `fallback`, a server that refuses the settings as unknown (one from before they existed) is started again with the
 * base settings only. Resolves to { proc, baseUrl, adminUrl, links: [{name, url}], log, logRecords, dataDir };
 * `logRecords` counts the server's log records and keeps any that carry a token or secret (`leaks`).
 */
export async function startServer({ prefix = 'giaoban-browser-', settings = {}, demo = false, fallback = false, wrap = [] } = {}) {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(`server binary ${SERVER_BIN} not found: run \`cargo build -p giaoban-signaling\` or set GIAOBAN_BIN`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), prefix));
  try {
    try {
      return { ...(await spawnServer({ ...BASE_SETTINGS, GIAOBAN_STORAGE_DATA_DIR: dataDir, ...settings }, demo, wrap)), dataDir };
    } catch (err) {
      if (!fallback || !/unknown setting/.test(err.message)) throw err;
      return { ...(await spawnServer(BASE_SETTINGS, demo)), dataDir };
    }
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
}

function spawnServer(settings, demo, wrap = []) {
  // The server refuses unknown GIAOBAN_* variables (typos in settings), so none from this environment (such as
  // GIAOBAN_BIN or open rooms) is passed on: only the settings given here.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GIAOBAN_')));
  // `wrap` runs the server through a command that execs it (e.g. `ip netns exec NS`), so the pid stays the server's.
  // SERVER_LOG_LEVEL sets the server's log filter (`log.level`), for a diagnosis.
  if (process.env.SERVER_LOG_LEVEL) settings = { ...settings, GIAOBAN_LOG_LEVEL: process.env.SERVER_LOG_LEVEL };
  const [cmd, ...args] = [...wrap, SERVER_BIN];
  const proc = spawn(cmd, args, { cwd: REPO_ROOT, env: { ...env, ...settings }, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  // Log records (tracing lines, with a level) must never carry a join token or secret; the links the server prints
  // at start for the operator are plain lines without a level.
  const logRecords = { seen: 0, leaks: [] };
  // SERVER_LOG_FILE=path keeps every line of the server's output there (with RUST_LOG for more: a diagnosis).
  const keep = process.env.SERVER_LOG_FILE;
  const remember = (stream) => (line) => {
    log.push(`[${stream}] ${line}`);
    if (keep) appendFileSync(keep, `${new Date().toISOString()} [${stream}] ${line}\n`);
    if (log.length > 400) log.shift();
    // eslint-disable-next-line no-control-regex
    const plain = line.replace(/\x1b\[[0-9;]*m/g, '');
    if (/\b(TRACE|DEBUG|INFO|WARN|ERROR)\b/.test(plain)) {
      logRecords.seen += 1;
      if (/eyJ[A-Za-z0-9_-]{8,}|token=|secret=/i.test(plain)) logRecords.leaks.push(plain);
    }
  };
  createInterface({ input: proc.stderr }).on('line', remember('stderr'));
  const stdout = createInterface({ input: proc.stdout });
  stdout.on('line', remember('stdout'));
  const found = { proc, log, logRecords, baseUrl: null, adminUrl: null, links: [] };
  return new Promise((resolveStart, reject) => {
    let settled = false;
    const fail = (err) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      reject(err);
    };
    const waitingFor = demo ? 'the demo meeting' : 'a listening line';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      fail(new Error(`server printed no ${waitingFor} within 30 s:\n${log.join('\n')}`));
    }, 30_000);
    let inDemo = false;
    stdout.on('line', (line) => {
      let m;
      if ((m = /giaoban listening on (http:\/\/[0-9.]+:\d+\/)/.exec(line))) found.baseUrl = m[1];
      else if ((m = /^\s+admin page: (\S+)/.exec(line))) found.adminUrl = m[1];
      else if (/^\s+demo meeting "/.test(line)) inDemo = true;
      else if (inDemo && (m = /^\s{3,}(\S.*?)\s+(http:\/\/\S+\?token=\S+)\s*$/.exec(line))) {
        found.links.push({ name: m[1], url: m[2] });
      }
      const ready = found.baseUrl && (!demo || (found.adminUrl && found.links.length >= 5));
      if (ready && !settled) {
        settled = true;
        clearTimeout(timer);
        resolveStart(found);
      }
    });
    // 'close' (not 'exit'): by then every line the server wrote has been read.
    proc.on('close', (code, signal) => fail(new Error(`server exited early (code ${code}, signal ${signal}):\n${log.join('\n')}`)));
    proc.on('error', fail);
  });
}

/** Stop the server (SIGTERM, SIGKILL after 3 s) and remove its data directory. */
export async function stopServer(server) {
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

/** The demo meeting link (printed by the server) whose entry satisfies `pred`. */
export function findLink(server, pred, what) {
  const link = server.links.find(pred);
  if (!link) throw new Error(`no ${what} link among ${JSON.stringify(server.links.map((l) => l.name))}`);
  return link;
}

/** Headless Chromium with the flags of BROWSER-TESTING.md and `extraArgs`. */
export function launchBrowser(extraArgs = [], executablePath = CHROMIUM) {
  return chromium.launch({ executablePath, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/**
 * The selected ICE candidate pair of a page's publish or subscribe connection, from getStats:
 * { local: {candidateType, protocol, address, port, relayProtocol}, remote: {...} }, or null before one is chosen.
 */
export async function selectedPair(page, leg) {
  return page.evaluate(async (leg) => {
    const pc = leg === 'publish' ? window.giaoban?.publishPc?.() : window.giaoban?.subscribePc?.();
    if (!pc) return null;
    const report = await pc.getStats();
    let pairId = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    const pair = pairId && report.get(pairId);
    if (!pair || pair.state !== 'succeeded') return null;
    const pick = (c) =>
      c && { candidateType: c.candidateType, protocol: c.protocol, address: c.address, port: c.port, relayProtocol: c.relayProtocol, tcpType: c.tcpType };
    return { local: pick(report.get(pair.localCandidateId)), remote: pick(report.get(pair.remoteCandidateId)) };
  }, leg);
}

/** With WEB_CLIENT_FROM_DISK, answer the server's URLs listed in `files` from web-client/ on disk. */
export async function serveClientFromDisk(context, baseUrl, files) {
  if (!WEB_FROM_DISK) return;
  await context.route(
    (url) => url.href.startsWith(baseUrl) && Object.hasOwn(files, url.pathname),
    (route) => {
      const [file, contentType] = files[new URL(route.request().url()).pathname];
      route.fulfill({ contentType, body: readFileSync(join(REPO_ROOT, 'web-client', file)) });
    },
  );
}

/** Keep a page's console and the requests it makes outside the server (other than data: and blob:). */
export function watchPage(page, baseUrl) {
  const consoleLog = [];
  const foreignRequests = [];
  page.on('console', (m) => consoleLog.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLog.push(`pageerror: ${e.message}`));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(baseUrl) && !url.startsWith('data:') && !url.startsWith('blob:')) foreignRequests.push(url);
  });
  return { consoleLog, foreignRequests };
}

/** The tail of each page's console and of the server log, for a failure message. */
export function diagnostics(server, pages, { consoleLines = 40, serverLines = 80 } = {}) {
  const parts = pages
    .filter(Boolean)
    .map((p) => `--- console of "${p.label ?? p.name}" ---\n${p.consoleLog.slice(-consoleLines).join('\n')}`);
  if (server) parts.push(`--- server log (tail) ---\n${server.log.slice(-serverLines).join('\n')}`);
  return parts.join('\n');
}

/**
 * Init script replacing getUserMedia: a canvas of one solid colour (20 fps; `width` × `height`, 640 × 360 unless
 * given) and a WebAudio oscillator. With `moving`, a white bar sweeps across it (real motion for the encoder); with
 * `noise`, its lower half is new random blocks every frame (the encoder needs its whole bit rate).
 */
export function fakeMediaScript({ rgb, tone, width = 640, height = 360, moving = false, noise = false }) {
  const md = navigator.mediaDevices;
  if (!md) return;
  md.getUserMedia = async (constraints = {}) => {
    const out = new MediaStream();
    if (constraints.video) {
      const canvas = document.createElement('canvas');
      canvas.width = width;
      canvas.height = height;
      const ctx = canvas.getContext('2d');
      let frame = 0;
      const paint = () => {
        ctx.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        if (moving) {
          frame += 1;
          ctx.fillStyle = 'white';
          ctx.fillRect((frame * 8) % canvas.width, 0, canvas.width / 40, canvas.height);
        }
        if (noise) {
          // New random 8-pixel blocks every frame: the encoder needs its whole bit rate, as for a busy hall.
          const cols = Math.ceil(canvas.width / 8);
          const rows = Math.ceil(canvas.height / 8);
          const img = noiseCtx.createImageData(cols, rows);
          for (let i = 0; i < img.data.length; i += 4) {
            const v = (Math.random() * 256) | 0;
            img.data[i] = v;
            img.data[i + 1] = (v * 7) & 255;
            img.data[i + 2] = (v * 13) & 255;
            img.data[i + 3] = 255;
          }
          noiseCtx.putImageData(img, 0, 0);
          ctx.imageSmoothingEnabled = false;
          ctx.drawImage(noiseCanvas, 0, 0, cols, rows, 0, canvas.height / 2, canvas.width, canvas.height / 2);
        }
      };
      const noiseCanvas = document.createElement('canvas');
      noiseCanvas.width = Math.ceil(width / 8);
      noiseCanvas.height = Math.ceil(height / 8);
      const noiseCtx = noiseCanvas.getContext('2d');
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

/** Inbound RTP counts from the page's subscribe connection (real stats, not the app's own bookkeeping). */
export async function inboundStats(page) {
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
        out.audio.push({
          ssrc: s.ssrc,
          packetsReceived: s.packetsReceived ?? 0,
          packetsLost: s.packetsLost ?? 0,
          samples: s.totalSamplesReceived ?? 0,
          concealed: s.concealedSamples ?? 0,
        });
        if ((s.packetsReceived ?? 0) > 0) out.audioReceiving += 1;
      }
    });
    return out;
  });
}

/** How many videos the page's subscribe connection decodes (inbound-rtp video with framesDecoded > 0). */
/**
 * The page's main picture: its decoded width and height, and the most frames decoded by one video stream of its
 * subscribe connection (getStats).
 */
export async function mainPicture(page) {
  return page.evaluate(async () => {
    const v = document.querySelector('[data-testid="main-video"]');
    const pc = window.giaoban?.subscribePc?.();
    let framesDecoded = 0;
    if (pc) {
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded = Math.max(framesDecoded, s.framesDecoded ?? 0);
      });
    }
    return { width: v?.videoWidth ?? 0, height: v?.videoHeight ?? 0, framesDecoded };
  });
}

export async function videosDecoding(page) {
  return (await inboundStats(page))?.videoDecoding ?? 0;
}

/** One counter from the server's `/metrics` (Prometheus text), or null if it is not there. */
export async function metric(server, name) {
  const text = await (await fetch(new URL('/metrics', server.baseUrl))).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : null;
}

/** The audio payload types of a page's publish connection, in the order the server's answer gives them. */
export async function publishAudioCodecs(page) {
  return page.evaluate(() => {
    const sdp = window.giaoban?.publishPc?.()?.remoteDescription?.sdp ?? '';
    const m = sdp.split('\r\n').find((l) => l.startsWith('m=audio'));
    if (!m) return [];
    return m
      .split(' ')
      .slice(3)
      .map((pt) => sdp.match(new RegExp(`a=rtpmap:${pt} ([^/]+)/`))?.[1]?.toLowerCase() ?? pt);
  });
}

/** Packets sent per kind on the page's publish connection. */
export async function outboundStats(page) {
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

/**
 * Mean colour of a <video>, drawn into a canvas; null until it has a frame. `target` is a CSS selector or
 * `{ participant: name }` for the remote tile `video[data-participant=name]`.
 */
export async function meanColour(page, target) {
  return page.evaluate((target) => {
    const selector =
      typeof target === 'string' ? target : `video[data-participant="${CSS.escape(target.participant)}"]`;
    const video = document.querySelector(selector);
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
  }, target);
}

/**
 * The mean colour shows the publisher's colour: its dominant channel is bright and the other two are dark. (Not an
 * exact match: the decoded picture may come out in a different YUV range, e.g. 210 green is shown as 255.)
 */
export function colourMatches(mean, rgb) {
  if (!mean) return false;
  const want = rgb.indexOf(Math.max(...rgb));
  return mean.every((v, i) => (i === want ? v >= 150 : v <= 90));
}

/** Two pages (`{ name, rgb, page }`) each decode the other's video, in the other's colour. */
export async function bothDecode(people) {
  for (const [i, p] of people.entries()) {
    const other = people[1 - i];
    await waitFor(async () => (await videosDecoding(p.page)) >= 1, {
      timeout: 30_000,
      what: `"${p.name}" to decode a video`,
    });
    await waitFor(async () => colourMatches(await meanColour(p.page, { participant: other.name }), other.rgb), {
      timeout: 20_000,
      what: `"${p.name}" to show "${other.name}" in its colour`,
    });
  }
}

/** Delete a network namespace a test made, if it was made at all. */
export function removeNetns(ns) {
  try {
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  } catch {
    // never created
  }
}
