// Link-health board for IT staff (cán bộ kỹ thuật): reads /api/health (see docs/protocol.md) every 2 s.
//
// Open as /board?token=<admin token> (every meeting) or /board?token=<observer token> (that meeting). Per meeting, one
// row per participant (hall) with its verdict, browser, both legs' state, bitrate, loss, RTT, jitter, time joined and a
// sparkline of the last ~5 minutes (kept in this page's memory). Alerts (also on console.info) when a hall turns
// red, drops out or comes back. The server's own CPU, memory and packet rates from the deltas between polls. Below:
// the latest pre-meeting connection test of each hall (/test) and the verdict thresholds in force (config [health]).

import { getLang, setLang, onLangChange } from '/i18n.js';

const POLL_MS = 2000;
const FETCH_TIMEOUT_MS = 5000;
const HISTORY_MS = 5 * 60 * 1000;
const OFFLINE_KEEP_MS = 10 * 60 * 1000;
const MAX_ALERTS = 100;
const TITLES_EVERY_MS = 15_000;

const STRINGS = {
  vi: {
    title: 'Giám sát đường truyền',
    langButton: 'English',
    updated: 'Cập nhật lúc {time}',
    stale: 'Chưa cập nhật từ {time}',
    connOk: 'Đang nhận số liệu',
    connDown: 'Mất kết nối tới máy chủ',
    serverTitle: 'Máy chủ',
    cpu: 'CPU',
    cpuUnit: '% một lõi',
    memory: 'Bộ nhớ',
    participants: 'Người tham gia',
    connections: 'Kết nối media',
    ppsIn: 'Gói vào',
    ppsOut: 'Gói ra',
    pps: 'gói/s',
    mbpsIn: 'Lưu lượng vào',
    mbpsOut: 'Lưu lượng ra',
    alertsTitle: 'Cảnh báo',
    noAlerts: 'Chưa có cảnh báo.',
    clearAlerts: 'Xóa',
    onlyProblems: 'Chỉ hiện điểm cầu có vấn đề',
    noParticipants: 'Chưa có điểm cầu nào kết nối.',
    noMeetings: 'Chưa có cuộc họp nào đang diễn ra.',
    colHall: 'Điểm cầu',
    colVerdict: 'Chất lượng',
    colLegs: 'Kết nối',
    colUp: 'Gửi lên',
    colDown: 'Nhận về',
    colLoss: 'Mất gói',
    colRtt: 'RTT',
    colJitter: 'Jitter',
    colTime: 'Thời gian',
    colSpark: 'Diễn biến (≤ 5 phút)',
    upTip: 'Điểm cầu gửi lên máy chủ (kbit/s)',
    downTip: 'Máy chủ gửi xuống điểm cầu (kbit/s)',
    lossTip: 'Tỉ lệ mất gói: chiều lên / chiều xuống',
    levelTip: 'Mức âm thanh micro (RFC 6464): {db} dBov',
    levelNone: 'Không có mức âm thanh (trình duyệt không gửi hoặc chưa có tiếng)',
    layersReceived: 'Hình nhận: {list}',
    layersTip: 'Lớp hình (simulcast) đang nhận của mỗi luồng: q thấp, h vừa, f cao; "tạm dừng" khi đường truyền không đủ',
    layerPaused: 'tạm dừng',
    layerSingle: '1 lớp',
    legPub: 'Gửi',
    legSub: 'Nhận',
    legendUp: 'gửi lên',
    legendDown: 'nhận về',
    legendLoss: 'mất gói',
    good: 'Tốt',
    fair: 'Trung bình',
    poor: 'Kém',
    offline: 'Mất kết nối',
    unknown: '—',
    'state.connected': 'đã kết nối',
    'state.connecting': 'đang kết nối',
    'state.new': 'đang kết nối',
    'state.checking': 'đang kết nối',
    'state.disconnected': 'mất kết nối',
    'state.failed': 'lỗi',
    'state.closed': 'đã đóng',
    'state.none': 'không có',
    'role.chair': 'Chủ trì',
    'role.secretary': 'Thư ký',
    'role.endpoint': 'Điểm cầu',
    'role.observer': 'Dự thính',
    'role.admin': 'Quản trị',
    gone: 'rời lúc {time}',
    counts: '{good} tốt · {fair} trung bình · {poor} kém',
    alertPoor: '{name}: chất lượng KÉM (mất gói {loss} %, RTT {rtt} ms)',
    alertRecovered: '{name}: chất lượng trở lại {verdict}',
    alertLegDown: '{name}: kết nối {leg} {state}',
    alertGone: '{name}: đã rời / mất kết nối khỏi cuộc họp',
    alertBack: '{name}: đã kết nối lại',
    alertServerDown: 'Không kết nối được máy chủ ({detail})',
    alertServerBack: 'Đã kết nối lại tới máy chủ',
    errMissing: 'Thiếu mã truy cập',
    errMissingHelp: 'Hãy mở trang này bằng đường link giám sát có mã truy cập: /board?token=… (mã của quản trị hoặc của người dự thính cuộc họp).',
    errUnauthorized: 'Mã truy cập không hợp lệ hoặc đã hết hạn',
    errUnauthorizedHelp: 'Máy chủ từ chối mã trong đường link này. Hãy xin quản trị một đường link giám sát mới (quản trị hoặc dự thính).',
    errForbidden: 'Đường link này không có quyền xem giám sát',
    errForbiddenHelp: 'Chỉ mã của quản trị (mọi cuộc họp) hoặc của người dự thính (cuộc họp đó) mới xem được trang này.',
    errServer: 'Máy chủ trả lời:',
    meetingUnknown: 'Cuộc họp',
    settingUp: 'đang thiết lập kết nối',
    jitterDoubt: 'Máy chủ báo {raw} ms: giá trị không hợp lý, không hiển thị',
    testsTitle: 'Kiểm tra kết nối trước cuộc họp (lần gần nhất của mỗi điểm cầu)',
    testsNone: 'Chưa điểm cầu nào kiểm tra kết nối.',
    colTestedAt: 'Lúc',
    colDevices: 'Camera / micro',
    colBrowser: 'Trình duyệt',
    colProblems: 'Vấn đề',
    colServerUp: 'Máy chủ nhận',
    serverUpTip: 'Tốc độ máy chủ nhận được từ điểm cầu trong lúc kiểm tra',
    'device.ok': 'tốt',
    'device.no_signal': 'không tín hiệu',
    'device.denied': 'bị chặn',
    'device.missing': 'không có',
    'measure.rtt': 'độ trễ',
    'measure.loss_up': 'mất gói gửi',
    'measure.loss_down': 'mất gói nhận',
    'measure.jitter': 'dao động trễ',
    'measure.upload': 'tốc độ gửi',
    'measure.download': 'tốc độ nhận',
    'measure.camera': 'camera',
    'measure.microphone': 'micro',
    noProblems: 'không có',
    thresholds: 'Ngưỡng (trung bình / kém): mất gói > {fl} / {pl} %, RTT > {fr} / {pr} ms, dao động trễ > {fj} / {pj} ms; kiểm tra trước họp: tốc độ < {fb} / {pb} kbit/s',
  },
  en: {
    title: 'Link health board',
    langButton: 'Tiếng Việt',
    updated: 'Updated at {time}',
    stale: 'Not updated since {time}',
    connOk: 'Receiving data',
    connDown: 'Cannot reach the server',
    serverTitle: 'Server',
    cpu: 'CPU',
    cpuUnit: '% of one core',
    memory: 'Memory',
    participants: 'Participants',
    connections: 'Media connections',
    ppsIn: 'Packets in',
    ppsOut: 'Packets out',
    pps: 'pkt/s',
    mbpsIn: 'Traffic in',
    mbpsOut: 'Traffic out',
    alertsTitle: 'Alerts',
    noAlerts: 'No alerts yet.',
    clearAlerts: 'Clear',
    onlyProblems: 'Only halls with problems',
    noParticipants: 'No hall connected yet.',
    noMeetings: 'No meeting in progress.',
    colHall: 'Hall',
    colVerdict: 'Quality',
    colLegs: 'Connections',
    colUp: 'Upstream',
    colDown: 'Downstream',
    colLoss: 'Loss',
    colRtt: 'RTT',
    colJitter: 'Jitter',
    colTime: 'Connected',
    colSpark: 'Trend (≤ 5 min)',
    upTip: 'Hall to server (kbit/s)',
    downTip: 'Server to hall (kbit/s)',
    lossTip: 'Packet loss: upstream / downstream',
    levelTip: 'Microphone level (RFC 6464): {db} dBov',
    levelNone: 'No audio level (the browser does not send it, or no sound yet)',
    layersReceived: 'Video received: {list}',
    layersTip: 'The (simulcast) layer received of each video: q low, h medium, f high; "paused" when the link cannot carry it',
    layerPaused: 'paused',
    layerSingle: 'single layer',
    legPub: 'Send',
    legSub: 'Receive',
    legendUp: 'upstream',
    legendDown: 'downstream',
    legendLoss: 'loss',
    good: 'Good',
    fair: 'Fair',
    poor: 'Poor',
    offline: 'Offline',
    unknown: '—',
    'state.connected': 'connected',
    'state.connecting': 'connecting',
    'state.new': 'connecting',
    'state.checking': 'connecting',
    'state.disconnected': 'disconnected',
    'state.failed': 'failed',
    'state.closed': 'closed',
    'state.none': 'none',
    'role.chair': 'Chair',
    'role.secretary': 'Secretary',
    'role.endpoint': 'Hall',
    'role.observer': 'Observer',
    'role.admin': 'Admin',
    gone: 'left at {time}',
    counts: '{good} good · {fair} fair · {poor} poor',
    alertPoor: '{name}: POOR quality (loss {loss} %, RTT {rtt} ms)',
    alertRecovered: '{name}: quality back to {verdict}',
    alertLegDown: '{name}: {leg} connection {state}',
    alertGone: '{name}: left / dropped out of the meeting',
    alertBack: '{name}: reconnected',
    alertServerDown: 'Cannot reach the server ({detail})',
    alertServerBack: 'Reconnected to the server',
    errMissing: 'No access token',
    errMissingHelp: 'Open this page with a monitoring link that carries a token: /board?token=… (the admin token or a meeting observer token).',
    errUnauthorized: 'The access token is invalid or expired',
    errUnauthorizedHelp: 'The server refused the token in this link. Ask the administrator for a new monitoring link (admin or observer).',
    errForbidden: 'This link may not view the board',
    errForbiddenHelp: 'Only the admin token (every meeting) or an observer token (that meeting) may open this page.',
    errServer: 'The server said:',
    meetingUnknown: 'Meeting',
    settingUp: 'connection being set up',
    jitterDoubt: 'The server reports {raw} ms: not plausible, not shown',
    testsTitle: 'Connection tests before the meeting (latest of each hall)',
    testsNone: 'No hall has tested its connection yet.',
    colTestedAt: 'At',
    colDevices: 'Camera / mic',
    colBrowser: 'Browser',
    colProblems: 'Problems',
    colServerUp: 'Server received',
    serverUpTip: 'What the server received from the hall during the test',
    'device.ok': 'ok',
    'device.no_signal': 'no signal',
    'device.denied': 'blocked',
    'device.missing': 'none',
    'measure.rtt': 'RTT',
    'measure.loss_up': 'loss sending',
    'measure.loss_down': 'loss receiving',
    'measure.jitter': 'jitter',
    'measure.upload': 'upload',
    'measure.download': 'download',
    'measure.camera': 'camera',
    'measure.microphone': 'microphone',
    noProblems: 'none',
    thresholds: 'Thresholds (fair / poor): loss > {fl} / {pl} %, RTT > {fr} / {pr} ms, jitter > {fj} / {pj} ms; pre-meeting test: bitrate < {fb} / {pb} kbit/s',
  },
};

function tr(key, params = {}) {
  const table = STRINGS[getLang()] || STRINGS.vi;
  const template = table[key] ?? STRINGS.vi[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

const locale = () => (getLang() === 'en' ? 'en-GB' : 'vi-VN');
const fmtTime = (ms) => new Date(ms).toLocaleTimeString(locale(), { hour12: false });
function fmtNum(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  return Number(v).toLocaleString(locale(), { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
function fmtDuration(sec) {
  if (sec === null || sec === undefined) return '—';
  const s = Math.floor(sec % 60);
  const m = Math.floor(sec / 60) % 60;
  const h = Math.floor(sec / 3600);
  const pad = (n) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

/** A small element builder: h('td', {class: 'num', title: '…'}, 'text', childNode, …). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// ------------------------------------------------------------------------------------------------------------
// Derived figures of one participant (from the server's point of view: "in" = from the hall, "out" = to it).

const LEGS = ['publish', 'subscribe'];
const legsOf = (p) => LEGS.map((k) => p[k]).filter(Boolean);
const sum = (vals) => vals.reduce((a, v) => a + (typeof v === 'number' ? v : 0), 0);
function maxOf(vals) {
  const nums = vals.filter((v) => typeof v === 'number' && !Number.isNaN(v));
  return nums.length ? Math.max(...nums) : null;
}

const PENDING = ['new', 'connecting', 'checking'];
/** A leg still being set up (a hall that just joined), and none failed: the server's "poor" is not news yet. */
const onlyPending = (f) => f.legsDown.length > 0 && f.legsDownStates.every((st) => PENDING.includes(st));
/** Poor for a reason worth an alert: loss, RTT or a leg lost — not merely a leg still connecting. */
const realPoor = (p, f) => p.verdict === 'poor' && !onlyPending(f);

function lossPct(f) {
  const loss = maxOf([f.lossIn, f.lossOut]);
  return loss === null ? null : loss * 100;
}

function figures(p) {
  const legs = legsOf(p);
  return {
    bitrateIn: sum(legs.map((l) => l.bitrate_in)),
    bitrateOut: sum(legs.map((l) => l.bitrate_out)),
    lossIn: maxOf(legs.map((l) => l.loss_in)),
    lossOut: maxOf(legs.map((l) => l.loss_out)),
    rtt: maxOf(legs.map((l) => l.rtt_ms)),
    jitter: maxOf(legs.map((l) => l.jitter_ms)),
    connected: maxOf(legs.map((l) => l.connected_seconds)),
    legsDown: LEGS.filter((k) => p[k] && p[k].state !== 'connected'),
    legsDownStates: LEGS.filter((k) => p[k] && p[k].state !== 'connected').map((k) => p[k].state),
  };
}

// ------------------------------------------------------------------------------------------------------------
// Page state (all in memory: reloading the page starts the history afresh).

const token = new URLSearchParams(location.search).get('token') || '';
const state = {
  /** key (room + name) → {key, room, name, role, id, verdict, legStates, present, goneAt, samples: [{t, up, down, loss}]} */
  halls: new Map(),
  alerts: [], // newest first: {at, level: 'bad'|'warn'|'ok', text, hall}
  server: null, // the last `server` object with derived rates
  prevServer: null, // {at, cpu_seconds, datagrams_in, datagrams_out, bytes_in, bytes_out}
  titles: new Map(), // room → meeting title
  titlesAt: 0,
  lastOk: 0,
  reachable: true,
  fatal: null, // {kind: 'missing'|'unauthorized'|'forbidden', detail}
  polls: 0,
  onlyProblems: false,
  startedAt: Date.now(),
  tests: [], // the latest connection test of each hall (from /api/health)
  thresholds: null, // the server's [health] settings
};

const hallKey = (p) => `${p.room}\u0000${p.name ?? p.participant_id}`;
const displayName = (hall) => hall.name || hall.id;

function alert(level, text, hall) {
  const entry = { at: Date.now(), level, text, hall: hall ? displayName(hall) : null };
  state.alerts.unshift(entry);
  if (state.alerts.length > MAX_ALERTS) state.alerts.length = MAX_ALERTS;
  console.info(`[giám sát] ${fmtTime(entry.at)} ${text}`);
}

/** Take one /api/health answer in: history, alerts on transitions, the server's rates. */
function ingest(body, now) {
  const first = state.polls === 0;
  state.polls += 1;
  const seen = new Set();
  for (const p of body.participants || []) {
    const key = hallKey(p);
    seen.add(key);
    const f = figures(p);
    let hall = state.halls.get(key);
    const isNew = !hall;
    if (!hall) {
      hall = { key, room: p.room, name: p.name, samples: [], present: false, verdict: null, legStates: {} };
      state.halls.set(key, hall);
    }
    const wasPresent = hall.present;
    const prevLegs = hall.legStates;
    Object.assign(hall, { id: p.participant_id, role: p.role, name: p.name, present: true, goneAt: null, verdict: p.verdict, p, f });
    hall.legStates = Object.fromEntries(LEGS.map((k) => [k, p[k] ? p[k].state : null]));
    hall.samples.push({ t: now, up: f.bitrateIn, down: f.bitrateOut, loss: maxOf([f.lossIn, f.lossOut]) ?? 0 });
    while (hall.samples.length && hall.samples[0].t < now - HISTORY_MS) hall.samples.shift();

    const name = displayName(hall);
    if (first) {
      // The state at opening is a baseline, not news; only halls already in trouble are listed.
      if (realPoor(p, f)) {
        hall.poorAlerted = true;
        alert('bad', tr('alertPoor', { name, loss: fmtNum(lossPct(f), 1), rtt: fmtNum(f.rtt) }), hall);
      }
      continue;
    }
    if (!isNew && !wasPresent) {
      hall.legDown = false;
      hall.poorAlerted = false;
      alert('ok', tr('alertBack', { name }), hall);
      continue;
    }
    // A leg that was connected and no longer is: the hall is dropping out (or its network is).
    let legAlert = false;
    for (const k of LEGS) {
      const st = hall.legStates[k];
      if (prevLegs[k] === 'connected' && st !== 'connected') {
        alert('bad', tr('alertLegDown', { name, leg: tr(k === 'publish' ? 'legPub' : 'legSub').toLowerCase(), state: tr(`state.${st ?? 'closed'}`) }), hall);
        legAlert = true;
        hall.legDown = true;
      }
    }
    let legsBack = false;
    if (hall.legDown && !legAlert && LEGS.every((k) => !hall.legStates[k] || hall.legStates[k] === 'connected')) {
      hall.legDown = false;
      legsBack = true;
      alert('ok', tr('alertBack', { name }), hall);
    }
    if (realPoor(p, f) && !hall.poorAlerted && !legAlert && !hall.legDown) {
      hall.poorAlerted = true;
      alert('bad', tr('alertPoor', { name, loss: fmtNum(lossPct(f), 1), rtt: fmtNum(f.rtt) }), hall);
    } else if (hall.poorAlerted && p.verdict !== 'poor') {
      hall.poorAlerted = false;
      if (!legsBack) alert('ok', tr('alertRecovered', { name, verdict: tr(p.verdict) }), hall);
    }
  }
  for (const hall of state.halls.values()) {
    if (seen.has(hall.key)) continue;
    if (hall.present) {
      hall.present = false;
      hall.goneAt = now;
      hall.verdict = 'offline';
      if (!first) alert('bad', tr('alertGone', { name: displayName(hall) }), hall);
    } else if (now - hall.goneAt > OFFLINE_KEEP_MS) {
      state.halls.delete(hall.key);
    }
  }

  state.tests = body.tests || [];
  state.thresholds = body.thresholds || null;

  const sv = body.server || {};
  const prev = state.prevServer;
  const rates = {};
  if (prev && now > prev.at) {
    const dt = (now - prev.at) / 1000;
    const d = (k) => (typeof sv[k] === 'number' && typeof prev[k] === 'number' ? Math.max(0, sv[k] - prev[k]) / dt : null);
    rates.cpuPercent = d('cpu_seconds') === null ? null : d('cpu_seconds') * 100;
    rates.ppsIn = d('datagrams_in');
    rates.ppsOut = d('datagrams_out');
    rates.bpsIn = d('bytes_in') === null ? null : d('bytes_in') * 8;
    rates.bpsOut = d('bytes_out') === null ? null : d('bytes_out') * 8;
  }
  state.prevServer = { at: now, ...sv };
  state.server = { ...sv, ...rates };
}

// ------------------------------------------------------------------------------------------------------------
// Polling

async function fetchJson(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const res = await fetch(url, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store', signal: ctl.signal });
    let body = null;
    try {
      body = await res.json();
    } catch {
      // not JSON (a proxy's error page): keep the status only
    }
    return { status: res.status, ok: res.ok, body };
  } finally {
    clearTimeout(timer);
  }
}

async function refreshTitles(now) {
  if (now - state.titlesAt < TITLES_EVERY_MS && [...state.halls.values()].every((x) => state.titles.has(x.room))) return;
  state.titlesAt = now;
  try {
    const res = await fetch('/api/rooms', { cache: 'no-store' });
    if (!res.ok) return;
    const { rooms = [] } = await res.json();
    for (const r of rooms) if (r.meeting?.title) state.titles.set(r.room, r.meeting.title);
  } catch {
    // titles are a nicety; the room id stands in
  }
}

async function poll() {
  const now = Date.now();
  try {
    const res = await fetchJson('/api/health');
    if (res.status === 401 || res.status === 403) {
      state.fatal = { kind: res.status === 401 ? 'unauthorized' : 'forbidden', detail: res.body?.error || `HTTP ${res.status}` };
      render();
      return; // the same token will not start working: stop polling
    }
    if (!res.ok || !res.body) throw new Error(res.body?.error || `HTTP ${res.status}`);
    if (!state.reachable) alert('ok', tr('alertServerBack'));
    state.reachable = true;
    state.lastOk = now;
    ingest(res.body, now);
    await refreshTitles(now);
  } catch (err) {
    if (state.reachable) alert('bad', tr('alertServerDown', { detail: err.name === 'AbortError' ? 'timeout' : err.message }));
    state.reachable = false;
  }
  render();
  setTimeout(poll, POLL_MS);
}

// ------------------------------------------------------------------------------------------------------------
// Rendering (the whole board is rebuilt at each poll: a few hundred rows at most)

const root = document.getElementById('board');

function renderError() {
  const { kind, detail } = state.fatal;
  const head = { missing: 'errMissing', unauthorized: 'errUnauthorized', forbidden: 'errForbidden' }[kind];
  return h(
    'div',
    { class: 'b-error', role: 'alert', 'data-testid': 'board-error', dataset: { kind } },
    h('strong', {}, tr(head)),
    h('div', {}, tr(`${head}Help`)),
    detail ? h('div', {}, tr('errServer'), ' ', h('code', {}, detail)) : null,
  );
}

function stat(key, label, value, unit, extra = {}) {
  return h(
    'div',
    { class: `b-stat${extra.hot ? ' hot' : ''}`, 'data-testid': `server-${key}`, dataset: { value: extra.raw ?? '' } },
    h('div', { class: 'k' }, label),
    h('div', { class: 'v' }, value, unit ? h('span', { class: 'u' }, unit) : null),
  );
}

function renderServer() {
  const sv = state.server || {};
  const mb = typeof sv.rss_bytes === 'number' ? sv.rss_bytes / (1024 * 1024) : null;
  const mbps = (v) => (v === null || v === undefined ? null : v / 1e6);
  return h(
    'section',
    { 'data-testid': 'server-panel' },
    h('h2', { class: 'b-section-title' }, tr('serverTitle')),
    h(
      'div',
      { class: 'b-server' },
      stat('cpu', tr('cpu'), fmtNum(sv.cpuPercent, 0), tr('cpuUnit'), { raw: sv.cpuPercent ?? '', hot: sv.cpuPercent > 150 }),
      stat('memory', tr('memory'), fmtNum(mb, 0), 'MB', { raw: mb ?? '' }),
      stat('participants', tr('participants'), fmtNum(sv.participants), '', { raw: sv.participants ?? '' }),
      stat('connections', tr('connections'), fmtNum(sv.connections), '', { raw: sv.connections ?? '' }),
      stat('pps-in', tr('ppsIn'), fmtNum(sv.ppsIn), tr('pps'), { raw: sv.ppsIn ?? '' }),
      stat('pps-out', tr('ppsOut'), fmtNum(sv.ppsOut), tr('pps'), { raw: sv.ppsOut ?? '' }),
      stat('mbps-in', tr('mbpsIn'), fmtNum(mbps(sv.bpsIn), 1), 'Mbit/s', { raw: sv.bpsIn ?? '' }),
      stat('mbps-out', tr('mbpsOut'), fmtNum(mbps(sv.bpsOut), 1), 'Mbit/s', { raw: sv.bpsOut ?? '' }),
    ),
  );
}

function renderAlerts() {
  const list = state.alerts.length
    ? h(
        'ol',
        {},
        state.alerts.map((a) =>
          h(
            'li',
            { class: a.level, 'data-testid': 'alert', dataset: { level: a.level, hall: a.hall ?? '' } },
            h('time', { datetime: new Date(a.at).toISOString() }, fmtTime(a.at)),
            h('span', { class: 'lvl', 'aria-hidden': 'true' }, a.level === 'ok' ? '✓' : a.level === 'bad' ? '✕' : '!'),
            h('span', {}, a.text),
          ),
        ),
      )
    : h('div', { class: 'none' }, tr('noAlerts'));
  return h(
    'section',
    { class: 'b-alerts', 'data-testid': 'alerts', 'aria-live': 'polite' },
    h(
      'div',
      { class: 'b-alerts-head' },
      h('h2', { class: 'b-section-title' }, `${tr('alertsTitle')} (${state.alerts.length})`),
      state.alerts.length
        ? h('button', { type: 'button', 'data-testid': 'alerts-clear', onclick: () => { state.alerts = []; render(); } }, tr('clearAlerts'))
        : null,
    ),
    list,
  );
}

/** Bitrate up/down (own scale) and loss (0..max(5 %, worst)) over the last 5 minutes. */
function sparkline(hall, now) {
  const W = 180;
  const H = 40;
  const svg = s('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-testid': 'sparkline' });
  svg.append(s('rect', { x: 0, y: 0, width: W, height: H, rx: 4, fill: '#111821' }));
  const pts = hall.samples;
  if (pts.length) {
    const maxRate = Math.max(1, ...pts.map((p) => Math.max(p.up, p.down)));
    const maxLoss = Math.max(0.05, ...pts.map((p) => p.loss));
    // The window grows with the page's age up to 5 minutes, so a freshly opened board is not a sliver at the right.
    const span = Math.min(HISTORY_MS, Math.max(60_000, now - state.startedAt));
    const x = (t) => Math.max(0, (W * (t - (now - span))) / span);
    const y = (v, max) => H - 2 - ((H - 4) * v) / max;
    const line = (get, max, colour, width) => {
      const d = pts.map((p) => `${x(p.t).toFixed(1)},${y(get(p), max).toFixed(1)}`).join(' ');
      svg.append(s('polyline', { points: pts.length === 1 ? `${d} ${d}` : d, fill: 'none', stroke: colour, 'stroke-width': width, 'stroke-linejoin': 'round' }));
    };
    // Loss as red bars from the bottom, under the lines.
    for (const p of pts) {
      if (p.loss > 0) {
        const bh = ((H - 4) * p.loss) / maxLoss;
        svg.append(s('rect', { x: x(p.t) - 1, y: H - 2 - bh, width: 2, height: bh, fill: '#e5534b' }));
      }
    }
    line((p) => p.down, maxRate, '#7fb3ff', 1.5);
    line((p) => p.up, maxRate, '#6fe09c', 2);
    const tip = s('title');
    tip.textContent = `${tr('legendUp')} ≤ ${fmtNum(maxRate / 1000)} kbit/s · ${tr('legendLoss')} ≤ ${fmtNum(maxLoss * 100, 1)} %`;
    svg.append(tip);
  }
  return svg;
}

function legChip(hall, k) {
  const st = hall.present ? hall.legStates?.[k] : 'closed';
  const cls = st === 'connected' ? 'connected' : st === null || st === undefined ? 'none' : ['new', 'connecting', 'checking'].includes(st) ? 'pending' : 'down';
  const label = `${tr(k === 'publish' ? 'legPub' : 'legSub')}: ${tr(`state.${st ?? 'none'}`)}`;
  return h('span', { class: `leg ${cls}`, 'data-testid': `leg-${k}`, dataset: { state: st ?? 'none' } }, label);
}

/** Jitter above a minute cannot be real (a unit slip upstream): show it as doubtful rather than as a number. */
const JITTER_SANE_MS = 60_000;
function jitterCell(f) {
  if (!f) return h('td', { class: 'num', 'data-testid': 'jitter' }, '—');
  if (typeof f.jitter === 'number' && f.jitter > JITTER_SANE_MS) {
    return h('td', { class: 'num', 'data-testid': 'jitter', title: tr('jitterDoubt', { raw: fmtNum(f.jitter) }) }, '?');
  }
  return h('td', { class: 'num', 'data-testid': 'jitter' }, fmtNum(f.jitter, 1));
}

/** The hall's microphone level as a small bar: −60 dBov (or quieter) empty, 0 dBov full. */
function levelBar(hall) {
  const db = hall.present ? hall.p?.audio_level_dbov : null;
  const known = typeof db === 'number';
  const pct = known ? Math.round(Math.max(0, Math.min(1, (db + 60) / 60)) * 100) : 0;
  return h(
    'div',
    {
      class: `b-level${known ? '' : ' none'}`,
      'data-testid': 'audio-level',
      dataset: { dbov: known ? db : '' },
      title: known ? tr('levelTip', { db }) : tr('levelNone'),
    },
    h('span', { style: `width: ${pct}%` }),
  );
}

/** "Chrome 131 · Windows" from a User-Agent (enough for IT to know what a hall runs). */
function browserName(ua) {
  if (!ua) return '';
  const pick = (re, name) => {
    const m = re.exec(ua);
    return m ? `${name} ${m[1]}` : null;
  };
  const browser =
    pick(/Edg\/(\d+)/, 'Edge') ||
    pick(/OPR\/(\d+)/, 'Opera') ||
    pick(/Firefox\/(\d+)/, 'Firefox') ||
    pick(/(?:Headless)?Chrom(?:e|ium)\/(\d+)/, 'Chrome') ||
    pick(/Version\/(\d+)[\d.]* .*Safari/, 'Safari') ||
    ua.split(' ')[0];
  const os = /Windows/.test(ua) ? 'Windows' : /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS X/.test(ua) ? 'macOS' : /Linux/.test(ua) ? 'Linux' : '';
  return os ? `${browser} · ${os}` : browser;
}

/** The layer of each video this hall receives (from the SFU's own choice), or nothing if it receives none. */
function layersReceived(hall) {
  const videos = (hall.present ? hall.p?.receiving || [] : []).filter((c) => c.kind === 'video');
  if (videos.length === 0) return null;
  const list = videos
    .map((c) => (c.paused ? tr('layerPaused') : c.layer ? c.layer : tr('layerSingle')))
    .join(' · ');
  return h('div', { class: 'b-sub', 'data-testid': 'layers-received', title: tr('layersTip') }, tr('layersReceived', { list }));
}

function hallRow(hall, now) {
  const f = hall.present ? hall.f : null;
  const verdict = hall.present ? hall.verdict || 'unknown' : 'offline';
  const pct = (v) => (v === null || v === undefined ? '—' : fmtNum(v * 100, 1));
  return h(
    'tr',
    {
      'data-testid': 'hall-row',
      dataset: {
        participant: displayName(hall),
        participantId: hall.id ?? '',
        room: hall.room,
        verdict,
        present: String(hall.present),
        bitrateIn: f ? f.bitrateIn : 0,
        bitrateOut: f ? f.bitrateOut : 0,
      },
    },
    h(
      'td',
      {},
      h('div', { class: 'b-name' }, displayName(hall)),
      h('div', { class: 'b-role' }, hall.role ? tr(`role.${hall.role}`) : ''),
      levelBar(hall),
      hall.p?.browser ? h('div', { class: 'b-sub', 'data-testid': 'browser', title: hall.p.browser }, browserName(hall.p.browser)) : null,
    ),
    h(
      'td',
      {},
      h('span', { class: `badge ${verdict}`, 'data-testid': 'verdict' }, tr(verdict)),
      hall.present ? null : h('div', { class: 'b-sub' }, tr('gone', { time: fmtTime(hall.goneAt) })),
      hall.present && f && onlyPending(f) ? h('div', { class: 'b-sub' }, tr('settingUp')) : null,
    ),
    h('td', {}, legChip(hall, 'publish'), h('br'), legChip(hall, 'subscribe'), layersReceived(hall)),
    h('td', { class: 'num', 'data-testid': 'bitrate-in' }, f ? fmtNum(f.bitrateIn / 1000) : '—'),
    h('td', { class: 'num', 'data-testid': 'bitrate-out' }, f ? fmtNum(f.bitrateOut / 1000) : '—'),
    h('td', { class: 'num', 'data-testid': 'loss' }, f ? `${pct(f.lossIn)} / ${pct(f.lossOut)}` : '—'),
    h('td', { class: 'num', 'data-testid': 'rtt' }, f ? fmtNum(f.rtt) : '—'),
    jitterCell(f),
    h('td', { class: 'num', 'data-testid': 'connected-time' }, f ? fmtDuration(hall.p?.joined_seconds ?? f.connected) : '—'),
    h('td', { class: 'b-spark' }, sparkline(hall, now)),
  );
}

const ROLE_ORDER = { chair: 0, secretary: 1, endpoint: 2, observer: 3, admin: 4 };

function renderMeetings(now) {
  const rooms = new Map();
  for (const hall of state.halls.values()) {
    if (!rooms.has(hall.room)) rooms.set(hall.room, []);
    rooms.get(hall.room).push(hall);
  }
  if (!rooms.size) return [h('div', { class: 'b-meeting b-empty', 'data-testid': 'no-meetings' }, tr('noMeetings'))];
  const collator = new Intl.Collator('vi');
  const titled = [...rooms.entries()].map(([room, halls]) => ({ room, halls, title: state.titles.get(room) || null }));
  titled.sort((a, b) => collator.compare(a.title || a.room, b.title || b.room));
  return titled.map(({ room, halls, title }) => {
    halls.sort((a, b) => (ROLE_ORDER[a.role] ?? 9) - (ROLE_ORDER[b.role] ?? 9) || collator.compare(displayName(a), displayName(b)));
    const counts = { good: 0, fair: 0, poor: 0 };
    for (const x of halls) counts[x.present ? x.verdict : 'poor'] = (counts[x.present ? x.verdict : 'poor'] ?? 0) + 1;
    const shown = state.onlyProblems ? halls.filter((x) => !x.present || x.verdict !== 'good') : halls;
    const th = (key, tip) => h('th', { title: tip ? tr(tip) : null }, tr(key));
    return h(
      'section',
      { class: 'b-meeting', 'data-testid': 'meeting', dataset: { room } },
      h(
        'div',
        { class: 'b-meeting-head' },
        h('h2', {}, title || tr('meetingUnknown')),
        h('span', { class: 'room' }, room),
        h(
          'div',
          { class: 'b-counts', 'data-testid': 'meeting-counts' },
          h('span', { class: 'badge good' }, `${counts.good} ${tr('good')}`),
          h('span', { class: 'badge fair' }, `${counts.fair} ${tr('fair')}`),
          h('span', { class: 'badge poor' }, `${counts.poor} ${tr('poor')}`),
        ),
      ),
      shown.length
        ? h(
            'table',
            { class: 'b-table' },
            h(
              'thead',
              {},
              h(
                'tr',
                {},
                th('colHall'),
                th('colVerdict'),
                th('colLegs'),
                h('th', { class: 'num', title: tr('upTip') }, `${tr('colUp')} (kbit/s)`),
                h('th', { class: 'num', title: tr('downTip') }, `${tr('colDown')} (kbit/s)`),
                h('th', { class: 'num', title: tr('lossTip') }, `${tr('colLoss')} (%)`),
                h('th', { class: 'num' }, `${tr('colRtt')} (ms)`),
                h('th', { class: 'num' }, `${tr('colJitter')} (ms)`),
                h('th', { class: 'num' }, tr('colTime')),
                th('colSpark'),
              ),
            ),
            h('tbody', {}, shown.map((x) => hallRow(x, now))),
          )
        : h('div', { class: 'b-empty' }, tr('noParticipants')),
      h(
        'div',
        { class: 'b-legend' },
        h('span', {}, h('i', { style: 'background:#6fe09c' }), tr('legendUp')),
        h('span', {}, h('i', { style: 'background:#7fb3ff' }), tr('legendDown')),
        h('span', {}, h('i', { style: 'background:#e5534b' }), tr('legendLoss')),
      ),
    );
  });
}

function testRow(x) {
  const problems = (Array.isArray(x.findings) ? x.findings : []).filter((f) => f.level !== 'good');
  const pct = (v) => (v === null || v === undefined ? '—' : fmtNum(v, 1));
  const at = Date.parse(x.at);
  return h(
    'tr',
    { 'data-testid': 'test-row', dataset: { name: x.name, verdict: x.verdict, meeting: x.meeting_id } },
    h('td', {}, h('div', { class: 'b-name' }, x.name), h('div', { class: 'b-role' }, tr(`role.${x.role}`))),
    h('td', {}, h('span', { class: `badge ${x.verdict}`, 'data-testid': 'test-verdict' }, tr(x.verdict))),
    h(
      'td',
      { class: 'num', title: x.at },
      Number.isNaN(at) ? x.at : `${new Date(at).toLocaleDateString(locale(), { day: '2-digit', month: '2-digit' })} ${fmtTime(at)}`,
    ),
    h('td', { class: 'num' }, fmtNum(x.rtt_ms)),
    h('td', { class: 'num' }, `${pct(x.loss_up_percent)} / ${pct(x.loss_down_percent)}`),
    h('td', { class: 'num' }, `${fmtNum(x.up_kbps)} / ${fmtNum(x.down_kbps)}`),
    h('td', { class: 'num', title: tr('serverUpTip') }, fmtNum(x.server_up_kbps)),
    h('td', { class: 'num' }, fmtNum(x.jitter_ms, 1)),
    h('td', {}, `${tr(`device.${x.camera}`)} / ${tr(`device.${x.microphone}`)}`),
    h('td', { title: x.browser || '' }, browserName(x.browser)),
    h(
      'td',
      { class: 'problems', 'data-testid': 'test-problems' },
      problems.length ? problems.map((f) => tr(`measure.${f.measure}`) + (f.level === 'poor' ? ' ✕' : ' !')).join(', ') : tr('noProblems'),
    ),
  );
}

function renderTests() {
  const th = state.thresholds;
  const legend = th
    ? h(
        'div',
        { class: 'b-legend', 'data-testid': 'thresholds' },
        tr('thresholds', {
          fl: fmtNum(th.fair_loss_percent, 1), pl: fmtNum(th.poor_loss_percent, 1),
          fr: fmtNum(th.fair_rtt_ms), pr: fmtNum(th.poor_rtt_ms),
          fj: fmtNum(th.fair_jitter_ms), pj: fmtNum(th.poor_jitter_ms),
          fb: fmtNum(th.fair_bitrate_kbps), pb: fmtNum(th.poor_bitrate_kbps),
        }),
      )
    : null;
  const byMeeting = new Map();
  for (const x of state.tests) {
    if (!byMeeting.has(x.meeting_id)) byMeeting.set(x.meeting_id, { title: x.meeting_title, rows: [] });
    byMeeting.get(x.meeting_id).rows.push(x);
  }
  const shown = (rows) => (state.onlyProblems ? rows.filter((x) => x.verdict !== 'good') : rows);
  return h(
    'section',
    { class: 'b-meeting b-tests', 'data-testid': 'tests' },
    h('h2', { class: 'b-section-title' }, tr('testsTitle')),
    state.tests.length
      ? [...byMeeting.entries()].map(([id, m]) =>
          h(
            'div',
            { dataset: { meeting: id } },
            h('div', { class: 'b-meeting-head' }, h('h2', {}, m.title || tr('meetingUnknown')), h('span', { class: 'room' }, id)),
            h(
              'table',
              { class: 'b-table' },
              h(
                'thead',
                {},
                h(
                  'tr',
                  {},
                  h('th', {}, tr('colHall')),
                  h('th', {}, tr('colVerdict')),
                  h('th', {}, tr('colTestedAt')),
                  h('th', { class: 'num' }, `${tr('colRtt')} (ms)`),
                  h('th', { class: 'num' }, `${tr('colLoss')} (%)`),
                  h('th', { class: 'num' }, `${tr('colUp')} / ${tr('colDown')} (kbit/s)`),
                  h('th', { class: 'num', title: tr('serverUpTip') }, `${tr('colServerUp')} (kbit/s)`),
                  h('th', { class: 'num' }, `${tr('colJitter')} (ms)`),
                  h('th', {}, tr('colDevices')),
                  h('th', {}, tr('colBrowser')),
                  h('th', {}, tr('colProblems')),
                ),
              ),
              h('tbody', {}, shown(m.rows).map(testRow)),
            ),
          ),
        )
      : h('div', { class: 'b-empty' }, tr('testsNone')),
    legend,
  );
}

function renderHeader(now) {
  const stale = state.lastOk && now - state.lastOk > POLL_MS * 3;
  return h(
    'header',
    { class: 'b-head' },
    h('h1', {}, tr('title')),
    state.fatal
      ? null
      : h(
          'span',
          { class: `b-conn ${state.reachable ? 'ok' : 'down'}`, 'data-testid': 'board-status', dataset: { reachable: String(state.reachable) } },
          tr(state.reachable ? 'connOk' : 'connDown'),
        ),
    state.lastOk
      ? h('span', { class: `b-updated${stale ? ' stale' : ''}`, 'data-testid': 'updated' }, tr(stale ? 'stale' : 'updated', { time: fmtTime(state.lastOk) }))
      : null,
    state.fatal
      ? null
      : h(
          'div',
          { class: 'b-tools' },
          h(
            'label',
            {},
            h('input', {
              type: 'checkbox',
              'data-testid': 'only-problems',
              checked: state.onlyProblems,
              onchange: (e) => {
                state.onlyProblems = e.target.checked;
                render();
              },
            }),
            tr('onlyProblems'),
          ),
        ),
    h('button', { type: 'button', 'data-testid': 'lang-toggle', onclick: () => setLang(getLang() === 'vi' ? 'en' : 'vi') }, tr('langButton')),
  );
}

function render() {
  const now = Date.now();
  document.title = tr('title');
  document.documentElement.lang = getLang();
  const scroll = root.querySelector('.b-alerts ol')?.scrollTop ?? 0;
  const parts = [renderHeader(now)];
  if (state.fatal) parts.push(renderError());
  else parts.push(renderAlerts(), renderServer(), ...renderMeetings(now), renderTests());
  root.replaceChildren(...parts);
  const ol = root.querySelector('.b-alerts ol');
  if (ol) ol.scrollTop = scroll;
}

// For tests and for looking from the console.
window.giaobanBoard = {
  state: () => ({
    polls: state.polls,
    reachable: state.reachable,
    fatal: state.fatal,
    server: state.server,
    halls: [...state.halls.values()].map(({ key, room, name, role, id, verdict, present, legStates, samples }) => ({
      key, room, name, role, id, verdict, present, legStates, samples: samples.length,
    })),
    alerts: state.alerts,
  }),
};

onLangChange(render);
if (!token) {
  state.fatal = { kind: 'missing', detail: null };
  render();
} else {
  render();
  poll();
}
