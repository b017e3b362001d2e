// The pre-meeting connection test (họp thử), /test?token=<join link token>.
//
// 1. Camera and microphone: getUserMedia per device; the microphone's level must move above silence and the
//    camera's preview must produce frames.
// 2. `join_test` on the WebSocket: the server puts this page alone in a private room and sends its own tracks back
//    (echo). The page publishes its microphone and a video of the camera picture with a band of random noise (so the
//    encoder fills what the link allows, up to 2.5 Mbit/s, starting there) and receives the echo.
// 3. For MEASURE_MS it reads real WebRTC statistics: RTT from the ICE candidate pair (the ICE-lite server answers
//    the browser's checks), loss sent (remote-inbound-rtp) and received (inbound-rtp), jitter, and the bitrate
//    sent and received (bytes over time).
// 4. `test_result` with those figures; the server adds its own view, grades against the configured thresholds,
//    stores the result for IT and answers `test_verdict`, shown here with advice per measure.
// The test never joins the meeting: no attendance, nobody in the meeting sees it.

import { t, applyI18n, toggleLang, onLangChange } from '/i18n.js';
import { wsUrl } from '/protocol.js';

const WARMUP_MS = 2_000;
const MEASURE_MS = 8_000;
const CONNECT_TIMEOUT_MS = 15_000;
const VERDICT_TIMEOUT_MS = 10_000;
const SAMPLE_MS = 1_000;
/** Video starts at this rate (kbit/s) rather than Chrome's 300, which takes ~30 s to climb: the measuring window
 * then shows what the link carries (the congestion controller still backs off on a weak link). */
const START_KBPS = 2_500;
/** RMS of the microphone above which the level counts as sound (silence is ~0). */
const SOUND_RMS = 0.004;

const params = new URLSearchParams(location.search);
const token = params.get('token');

const ui = {
  meeting: document.getElementById('t-meeting'),
  hall: document.getElementById('t-hall'),
  start: document.getElementById('t-start'),
  join: document.getElementById('t-join'),
  error: document.getElementById('t-error'),
  local: document.getElementById('t-local'),
  echo: document.getElementById('t-echo'),
  level: document.getElementById('t-level'),
  steps: document.getElementById('t-steps'),
  result: document.getElementById('t-result'),
  badge: document.getElementById('t-badge'),
  headline: document.getElementById('t-headline'),
  advice: document.getElementById('t-advice'),
  findings: document.getElementById('t-findings'),
};

const STEPS = ['devices', 'connect', 'measure', 'verdict'];
/** The current run: sockets, connections, devices, figures; replaced by each new run. */
let run = null;
/** The last verdict shown (re-rendered on a language switch). */
let shown = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function setStep(name, state, detail = '') {
  const li = ui.steps.querySelector(`[data-step="${name}"]`);
  if (!li) return;
  li.dataset.state = state;
  li.querySelector('.detail').textContent = detail;
}

function renderSteps() {
  const states = new Map([...ui.steps.children].map((li) => [li.dataset.step, [li.dataset.state, li.querySelector('.detail').textContent]]));
  ui.steps.replaceChildren(
    ...STEPS.map((name) => {
      const li = document.createElement('li');
      li.dataset.step = name;
      li.dataset.testid = `step-${name}`;
      const [state, detail] = states.get(name) ?? ['pending', ''];
      li.dataset.state = state;
      const label = document.createElement('span');
      label.textContent = t(`test.step.${name}`);
      const d = document.createElement('span');
      d.className = 'detail';
      d.textContent = detail;
      li.append(label, d);
      return li;
    }),
  );
}

function showError(key, params = {}, detail = '') {
  ui.error.replaceChildren();
  const p = document.createElement('div');
  p.textContent = t(key, params);
  ui.error.append(p);
  if (detail) {
    const c = document.createElement('code');
    c.textContent = detail;
    ui.error.append(c);
  }
  ui.error.dataset.key = key;
  ui.error.hidden = false;
}

/** The display name in the token (shown before the server answers; the server checks the token). */
function nameFromToken(tok) {
  try {
    const part = tok.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      [...atob(part)].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''),
    );
    return JSON.parse(json).name || '';
  } catch {
    return '';
  }
}

// ------------------------------------------------------------------------------------------------ devices

async function openDevice(kind) {
  const constraints = kind === 'video' ? { video: { width: 1280, height: 720, frameRate: 30 } } : { audio: true };
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    const track = stream.getTracks().find((tr) => tr.kind === kind);
    return track ? { track, status: 'pending' } : { track: null, status: 'missing' };
  } catch (err) {
    const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
    return { track: null, status: denied ? 'denied' : 'missing', error: `${err?.name}: ${err?.message}` };
  }
}

/** Watch the microphone's level (meter on the page); `peak` keeps the loudest RMS seen. */
function watchLevel(r, track) {
  const ctx = new AudioContext();
  r.audioContext = ctx;
  ctx.resume().catch(() => {});
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  r.levelTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const rms = Math.sqrt(sum / buf.length);
    r.audioPeak = Math.max(r.audioPeak, rms);
    ui.level.style.width = `${Math.min(100, Math.round(rms * 400))}%`;
  }, 100);
}

/** Count the frames the camera preview shows. */
function watchFrames(r, video) {
  const onFrame = () => {
    if (r.stopped) return;
    r.localFrames += 1;
    video.requestVideoFrameCallback(onFrame);
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
  else r.localFramesUnknown = true;
}

// ------------------------------------------------------------------------------------------------ signaling

function send(r, msg) {
  if (r.ws?.readyState === WebSocket.OPEN) r.ws.send(JSON.stringify(msg));
}

function connect(r) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl());
    r.ws = ws;
    ws.onopen = () => send(r, { type: 'join_test', token });
    ws.onerror = () => reject(Object.assign(new Error('websocket'), { key: 'test.error.server' }));
    ws.onclose = () => {
      if (!r.stopped && !r.verdict) r.fail?.(Object.assign(new Error('closed'), { key: 'test.error.server' }));
    };
    ws.onmessage = async (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      try {
        await onMessage(r, msg, resolve, reject);
      } catch (err) {
        r.fail?.(err);
      }
    };
  });
}

async function onMessage(r, msg, joined, refused) {
  switch (msg.type) {
    case 'joined':
      if (msg.meeting) ui.meeting.textContent = t('test.meeting', { title: msg.meeting.title });
      // TURN servers with this test's credentials: a hall behind a closed firewall tests the way it will meet.
      r.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
      joined(msg);
      break;
    case 'publish_answer':
      await r.pub.setRemoteDescription({ type: 'answer', sdp: withStartBitrate(msg.sdp, START_KBPS) });
      break;
    case 'subscribe_offer':
      await answerSubscribe(r, msg.sdp);
      break;
    case 'test_verdict':
      r.onVerdict?.(msg);
      break;
    case 'error': {
      const err = Object.assign(new Error(msg.message), { key: 'test.error.refused', code: msg.code });
      if (!r.joined) refused(err);
      else r.fail?.(err);
      break;
    }
    case 'bye':
      r.stopped = true;
      break;
    default:
      break;
  }
}

/**
 * The video the test sends: the camera picture (if any) with a band of random noise, which no encoder can
 * compress, so the sender fills what the congestion controller allows and the bitrate measured is what the link
 * carries rather than what a still picture needs.
 */
function loadVideo(r) {
  const W = 960;
  const H = 540;
  const BAND = 180;
  const canvas = Object.assign(document.createElement('canvas'), { width: W, height: H });
  const ctx = canvas.getContext('2d');
  const noise = ctx.createImageData(W, BAND);
  const words = new Uint32Array(noise.data.buffer);
  r.canvasTimer = setInterval(() => {
    if (r.camera.track && ui.local.readyState >= 2) ctx.drawImage(ui.local, 0, 0, W, H);
    else {
      ctx.fillStyle = `hsl(${(Date.now() / 20) % 360}, 60%, 40%)`;
      ctx.fillRect(0, 0, W, H);
    }
    for (let i = 0; i < words.length; i += 16384) crypto.getRandomValues(words.subarray(i, i + 16384));
    for (let i = 3; i < noise.data.length; i += 4) noise.data[i] = 255;
    ctx.putImageData(noise, 0, H - BAND);
  }, 40);
  const track = canvas.captureStream(25).getVideoTracks()[0];
  r.synthetic = track;
  return track;
}

function pcConfig(r) {
  const config = { bundlePolicy: 'max-bundle' };
  if (r.iceServers?.length) config.iceServers = r.iceServers;
  return config;
}

async function publish(r) {
  const pc = new RTCPeerConnection(pcConfig(r));
  r.pub = pc;
  pc.onicecandidate = (e) => {
    if (e.candidate) send(r, { type: 'candidate', leg: 'publish', candidate: e.candidate.toJSON() });
  };
  const video = loadVideo(r);
  const stream = new MediaStream([r.mic.track, video].filter(Boolean));
  if (r.mic.track) pc.addTransceiver(r.mic.track, { direction: 'sendonly', streams: [stream] });
  // A high ceiling: the test measures what the link achieves.
  pc.addTransceiver(video, { direction: 'sendonly', streams: [stream], sendEncodings: [{ maxBitrate: START_KBPS * 1000 }] });
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send(r, { type: 'publish_offer', sdp: pc.localDescription.sdp });
}

async function answerSubscribe(r, sdp) {
  if (!r.sub) {
    const pc = new RTCPeerConnection(pcConfig(r));
    r.sub = pc;
    pc.onicecandidate = (e) => {
      if (e.candidate) send(r, { type: 'candidate', leg: 'subscribe', candidate: e.candidate.toJSON() });
    };
    pc.ontrack = (e) => {
      if (e.track.kind === 'video') ui.echo.srcObject = new MediaStream([e.track]);
    };
  }
  await r.sub.setRemoteDescription({ type: 'offer', sdp });
  const answer = await r.sub.createAnswer();
  await r.sub.setLocalDescription(answer);
  send(r, { type: 'subscribe_answer', sdp: r.sub.localDescription.sdp });
}

/**
 * The server's answer with `x-google-start-bitrate` on each video codec (Chrome reads it from the remote
 * description). Only this page's own view of the answer changes; the server never sees it.
 */
export function withStartBitrate(sdp, kbps) {
  const lines = sdp.split('\r\n');
  const out = [];
  let video = false;
  const fmtpDone = new Set();
  const pts = [];
  for (const line of lines) {
    if (line.startsWith('m=')) video = line.startsWith('m=video');
    if (video) {
      const rtpmap = /^a=rtpmap:(\d+) (VP8|VP9|H264|AV1)\//i.exec(line);
      if (rtpmap) pts.push(rtpmap[1]);
      const fmtp = /^a=fmtp:(\d+) /.exec(line);
      if (fmtp && !/apt=/.test(line) && !line.includes('x-google-start-bitrate')) {
        out.push(`${line};x-google-start-bitrate=${kbps}`);
        fmtpDone.add(fmtp[1]);
        continue;
      }
    }
    out.push(line);
  }
  // Codecs without an fmtp line (VP8) get one after their rtpmap.
  const result = [];
  for (const line of out) {
    result.push(line);
    const rtpmap = /^a=rtpmap:(\d+) (VP8|VP9|H264|AV1)\//i.exec(line);
    if (rtpmap && pts.includes(rtpmap[1]) && !fmtpDone.has(rtpmap[1])) {
      result.push(`a=fmtp:${rtpmap[1]} x-google-start-bitrate=${kbps}`);
    }
  }
  return result.join('\r\n');
}

function connected(pc) {
  return pc && pc.connectionState === 'connected';
}

// ------------------------------------------------------------------------------------------------ measuring

/** Totals of one moment: bytes and packets each way, loss counters, the RTT and jitter seen. */
async function snapshot(r) {
  const s = { at: performance.now(), sent: 0, packetsSent: 0, lostUp: 0, recv: 0, packetsRecv: 0, lostDown: 0, rtt: null, jitter: null, framesDecoded: 0 };
  const pubStats = await r.pub.getStats();
  pubStats.forEach((x) => {
    if (x.type === 'outbound-rtp') {
      s.sent += x.bytesSent ?? 0;
      s.packetsSent += x.packetsSent ?? 0;
    } else if (x.type === 'remote-inbound-rtp') {
      s.lostUp += Math.max(0, x.packetsLost ?? 0);
      s.hasRemoteInbound = true;
    } else if (x.type === 'candidate-pair' && x.nominated && x.state === 'succeeded' && x.currentRoundTripTime != null) {
      s.rtt = x.currentRoundTripTime * 1000;
    }
  });
  if (r.sub) {
    const subStats = await r.sub.getStats();
    subStats.forEach((x) => {
      if (x.type === 'inbound-rtp') {
        s.recv += x.bytesReceived ?? 0;
        s.packetsRecv += x.packetsReceived ?? 0;
        s.lostDown += Math.max(0, x.packetsLost ?? 0);
        // Audio only: video's jitter is inflated by paced frames and says little about the link.
        if (x.kind === 'audio' && x.jitter != null) s.jitter = Math.max(s.jitter ?? 0, x.jitter * 1000);
        if (x.kind === 'video') s.framesDecoded += x.framesDecoded ?? 0;
      } else if (x.type === 'candidate-pair' && x.nominated && x.state === 'succeeded' && x.currentRoundTripTime != null && s.rtt == null) {
        s.rtt = x.currentRoundTripTime * 1000;
      }
    });
  }
  return s;
}

function median(values) {
  const v = values.filter((x) => x != null).sort((a, b) => a - b);
  if (!v.length) return null;
  return v[Math.floor(v.length / 2)];
}

const round1 = (v) => (v == null ? null : Math.round(v * 10) / 10);

async function measure(r) {
  const first = await snapshot(r);
  const rtts = [first.rtt];
  let last = first;
  const end = first.at + MEASURE_MS;
  while (performance.now() < end) {
    await sleep(SAMPLE_MS);
    if (r.stopped) throw Object.assign(new Error('stopped'), { key: 'test.error.server' });
    last = await snapshot(r);
    rtts.push(last.rtt);
    const secs = (last.at - first.at) / 1000;
    setStep('measure', 'running', t('test.measuring', {
      up: Math.round(((last.sent - first.sent) * 8) / secs / 1000),
      down: Math.round(((last.recv - first.recv) * 8) / secs / 1000),
    }));
  }
  const secs = (last.at - first.at) / 1000;
  const sentPackets = last.packetsSent - first.packetsSent;
  const lostUp = last.lostUp - first.lostUp;
  const recvPackets = last.packetsRecv - first.packetsRecv;
  const lostDown = last.lostDown - first.lostDown;
  return {
    rtt_ms: round1(median(rtts)),
    loss_up_percent: last.hasRemoteInbound && sentPackets > 0 ? round1((100 * Math.max(0, lostUp)) / sentPackets) : null,
    loss_down_percent: recvPackets + lostDown > 0 ? round1((100 * Math.max(0, lostDown)) / (recvPackets + lostDown)) : null,
    jitter_ms: round1(last.jitter),
    up_kbps: secs > 0 ? round1(((last.sent - first.sent) * 8) / secs / 1000) : null,
    down_kbps: secs > 0 && last.recv > first.recv ? round1(((last.recv - first.recv) * 8) / secs / 1000) : null,
    echoFrames: last.framesDecoded,
  };
}

// ------------------------------------------------------------------------------------------------ a run

function stop(r) {
  if (!r) return;
  r.stopped = true;
  clearInterval(r.levelTimer);
  clearInterval(r.canvasTimer);
  r.audioContext?.close().catch(() => {});
  for (const pc of [r.pub, r.sub]) pc?.close();
  for (const tr of [r.mic?.track, r.camera?.track, r.synthetic]) tr?.stop();
  if (r.ws && r.ws.readyState === WebSocket.OPEN) {
    send(r, { type: 'leave' });
    r.ws.close();
  }
}

async function start() {
  stop(run);
  const r = { stopped: false, audioPeak: 0, localFrames: 0, joined: false, verdict: null };
  run = r;
  window.giaobanTest = { run: r };
  ui.start.disabled = true;
  ui.error.hidden = true;
  ui.result.hidden = true;
  shown = null;
  ui.steps.replaceChildren();
  renderSteps();
  try {
    // The server first (a refused link should not open the camera), then the devices, then the media.
    setStep('connect', 'running');
    const failed = new Promise((_, reject) => {
      r.fail = reject;
    });
    failed.catch(() => {});
    const joined = await Promise.race([connect(r), failed]);
    r.joined = true;
    ui.hall.textContent = t('test.hall', { name: nameFromToken(token) || joined.participant_id });

    // 1. Devices.
    setStep('devices', 'running');
    [r.camera, r.mic] = await Promise.all([openDevice('video'), openDevice('audio')]);
    if (r.camera.track) {
      ui.local.srcObject = new MediaStream([r.camera.track]);
      watchFrames(r, ui.local);
    }
    if (r.mic.track) watchLevel(r, r.mic.track);

    // 2. Publish, receive the echo.
    await publish(r);
    const deadline = performance.now() + CONNECT_TIMEOUT_MS;
    while (!(connected(r.pub) && connected(r.sub))) {
      if (performance.now() > deadline) throw Object.assign(new Error('media'), { key: 'test.error.media' });
      await Promise.race([sleep(200), failed]);
    }
    setStep('connect', 'done');

    // Devices are judged after the warm-up (the level meter and frame counter ran meanwhile).
    setStep('measure', 'running');
    await Promise.race([sleep(WARMUP_MS), failed]);
    const figures = await Promise.race([measure(r), failed]);
    r.camera.status = r.camera.track ? (r.localFrames >= 5 || r.localFramesUnknown ? 'ok' : 'no_signal') : r.camera.status;
    r.mic.status = r.mic.track ? (r.audioPeak > SOUND_RMS ? 'ok' : 'no_signal') : r.mic.status;
    setStep('devices', r.camera.status === 'ok' && r.mic.status === 'ok' ? 'done' : 'failed',
      `${t('test.measure.camera')}: ${t(`test.device.${r.camera.status}`)} · ${t('test.measure.microphone')}: ${t(`test.device.${r.mic.status}`)}`);
    setStep('measure', 'done');

    // 3. The server grades and stores; the page is still sending, so the server sees the same traffic.
    setStep('verdict', 'running');
    const { echoFrames, ...measured } = figures;
    r.figures = { ...measured, echoFrames };
    const verdict = await Promise.race([
      new Promise((resolve, reject) => {
        r.onVerdict = resolve;
        setTimeout(() => reject(Object.assign(new Error('no verdict'), { key: 'test.error.server' })), VERDICT_TIMEOUT_MS);
        send(r, { type: 'test_result', result: { ...measured, camera: r.camera.status, microphone: r.mic.status } });
      }),
      failed,
    ]);
    r.verdict = verdict;
    setStep('verdict', 'done');
    shown = { verdict, devices: { camera: r.camera.status, microphone: r.mic.status } };
    renderVerdict();
  } catch (err) {
    // A refusal the page can explain (forbidden role, ended meeting) gets its own text.
    const specific = err.code && `test.error.${err.code}`;
    const key = specific && t(specific) !== specific ? specific : err.key || 'test.error.server';
    for (const li of ui.steps.children) if (li.dataset.state === 'running') li.dataset.state = 'failed';
    showError(key, {}, err.code ? `${err.code}: ${err.message}` : err.message);
  } finally {
    stop(r);
    ui.start.disabled = false;
    ui.start.textContent = t('test.again');
  }
}

// ------------------------------------------------------------------------------------------------ the verdict

const UNITS = { rtt: 'ms', loss_up: '%', loss_down: '%', jitter: 'ms', upload: 'kbit/s', download: 'kbit/s' };

function valueText(f, devices) {
  if (f.measure === 'camera' || f.measure === 'microphone') return t(`test.device.${devices[f.measure]}`);
  if (f.value == null) return t('test.unmeasured');
  const digits = UNITS[f.measure] === '%' ? 1 : 0;
  return `${Number(f.value).toFixed(digits)} ${UNITS[f.measure]}`;
}

function renderVerdict() {
  if (!shown) return;
  const { verdict, devices } = shown;
  ui.badge.className = `t-badge ${verdict.verdict}`;
  ui.badge.dataset.verdict = verdict.verdict;
  ui.badge.textContent = t(`test.verdict.${verdict.verdict}`);
  const bad = verdict.findings.filter((f) => f.level !== 'good');
  const weakLink = bad.some((f) => f.level === 'poor' && ['upload', 'download', 'loss_up', 'loss_down'].includes(f.measure));
  ui.headline.textContent = t(verdict.verdict === 'poor' && weakLink ? 'test.headline.weak' : `test.headline.${verdict.verdict}`);
  ui.advice.replaceChildren(
    ...bad.map((f) => {
      const li = document.createElement('li');
      li.dataset.testid = 'advice';
      li.dataset.measure = f.measure;
      li.dataset.level = f.level;
      const key = f.measure === 'camera' || f.measure === 'microphone'
        ? `test.advice.${f.measure}.${devices[f.measure]}`
        : `test.advice.${f.measure}.${f.value == null ? 'unmeasured' : f.level}`;
      li.textContent = t(key, { value: f.value == null ? '' : Math.round(f.value * 10) / 10 });
      return li;
    }),
  );
  ui.findings.replaceChildren(
    ...verdict.findings.map((f) => {
      const tr = document.createElement('tr');
      tr.dataset.testid = 'finding';
      tr.dataset.measure = f.measure;
      tr.dataset.level = f.level;
      if (f.value != null) tr.dataset.value = String(f.value);
      const name = document.createElement('td');
      name.textContent = t(`test.measure.${f.measure}`);
      const value = document.createElement('td');
      value.className = 'num';
      value.textContent = valueText(f, devices);
      const level = document.createElement('td');
      level.className = `t-level ${f.level}`;
      level.textContent = t(`test.verdict.${f.level}`);
      tr.append(name, value, level);
      return tr;
    }),
  );
  ui.result.hidden = false;
}

// ------------------------------------------------------------------------------------------------ page

function init() {
  applyI18n(document);
  document.title = t('test.title');
  document.getElementById('lang').addEventListener('click', toggleLang);
  onLangChange(() => {
    document.title = t('test.title');
    renderSteps();
    renderVerdict();
    if (run && !run.stopped) return;
    ui.start.textContent = t(shown ? 'test.again' : 'test.start');
  });
  renderSteps();
  if (!token) {
    ui.start.disabled = true;
    showError('test.error.notoken');
    return;
  }
  ui.join.href = `/?token=${encodeURIComponent(token)}`;
  ui.hall.textContent = t('test.hall', { name: nameFromToken(token) });
  ui.start.addEventListener('click', start);
}

init();
