// The giaoban browser client: join form, the meeting views (chair console, secretary, hall, observer), the
// publish and subscribe RTCPeerConnections, floor control, roll call, chat and screen sharing.
// The control protocol is in docs/protocol.md; the WebSocket session (retry, keep-alive) is protocol.js.

import { Session } from './protocol.js';
import { t, applyI18n, toggleLang, onLangChange, getLang } from './i18n.js';

const MAX_FIELD_CHARS = 64;
const PUBLISH_ANSWER_TIMEOUT_MS = 15_000;

const $ = (id) => document.getElementById(id);
const ui = {
  joinView: $('join-view'),
  endedView: $('ended-view'),
  endedText: $('ended-text'),
  rejoin: $('btn-rejoin'),
  form: $('join-form'),
  room: $('room'),
  name: $('name'),
  formError: $('form-error'),
  meetingView: $('meeting-view'),
  stage: $('stage'),
  mainVideo: $('main-video'),
  mainPip: $('main-pip'),
  mainName: $('main-name'),
  grid: $('grid'),
  empty: $('empty'),
  controls: $('controls'),
  mic: $('btn-mic'),
  camera: $('btn-camera'),
  hand: $('btn-hand'),
  handPos: $('hand-pos'),
  share: $('btn-share'),
  sound: $('btn-sound'),
  leave: $('btn-leave'),
  count: $('count'),
  lang: $('lang'),
  status: $('status'),
  meetingTitle: $('meeting-title'),
  roomLabel: $('room-label'),
  roleChip: $('role-chip'),
  modeChip: $('mode-chip'),
  lockChip: $('lock-chip'),
  receiveChip: $('receive-chip'),
  recChip: $('rec-chip'),
  messages: $('messages'),
  statusWs: $('status-ws'),
  statusPublish: $('status-publish'),
  statusSubscribe: $('status-subscribe'),
  pillQuality: $('pill-quality'),
  statusQuality: $('status-quality'),
  floorBanner: $('floor-banner'),
  unmutePrompt: $('unmute-prompt'),
  unmuteAccept: $('unmute-accept'),
  unmuteDismiss: $('unmute-dismiss'),
  side: $('side'),
  panelChair: $('panel-chair'),
  modeSelect: $('mode-select'),
  muteAll: $('btn-mute-all'),
  lock: $('btn-lock'),
  record: $('btn-record'),
  end: $('btn-end'),
  panelFloor: $('panel-floor'),
  queue: $('queue'),
  queueEmpty: $('queue-empty'),
  floorList: $('floor-list'),
  floorEmpty: $('floor-empty'),
  panelRollcall: $('panel-rollcall'),
  rollcall: $('rollcall'),
  rollcallSummary: $('rollcall-summary'),
  attendanceCsv: $('attendance-csv'),
  chatList: $('chat-list'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
};

// What each role may do (docs/protocol.md, "Roles and who is heard"); the server enforces it, the UI only hides
// what would be refused.
const ROLE_CAN = {
  chair: { moderate: true, floor: true, rollcall: true, raise: false, share: 'always' },
  admin: { moderate: true, floor: true, rollcall: true, raise: false, share: 'never' },
  secretary: { moderate: false, floor: true, rollcall: true, raise: false, share: 'floor' },
  endpoint: { moderate: false, floor: false, rollcall: false, raise: true, share: 'floor' },
  observer: { moderate: false, floor: false, rollcall: false, raise: false, share: 'never' },
};
const NO_ROLE = { moderate: false, floor: false, rollcall: false, raise: false, share: 'never' };

const GRANT_CHOICES = [0, 60, 180, 300];

// The camera goes out in three simulcast layers (the server forwards each subscriber the one that fits its tile,
// its cap and its link); three layers need a capture of at least 960x540. A screen share is one layer.
const CAMERA_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_200_000 },
];
/** How often the shown size of each received video is checked (sent to the server only when it changed). */
const VIDEO_SIZE_EVERY_MS = 1000;

// ---------------------------------------------------------------------------------------------------------
// State

/** The meeting this page is in, or null on the join form. */
let meeting = null;

function newMeeting(room, name, token) {
  return {
    room,
    name,
    token,
    session: null,
    selfId: null,
    role: null,
    meetingInfo: null,
    /** Bumped on every (re)join and on leave: async work of an older generation stops quietly. */
    generation: 0,
    local: { stream: null, audio: null, video: null },
    mediaReady: null,
    mediaSettled: false,
    canPublish: true,
    /** TURN servers with this participant's credentials (`joined`'s `ice_servers`). */
    iceServers: [],
    publishPc: null,
    publishChain: Promise.resolve(),
    publishWaiter: null,
    /** `joined` has scheduled this session's publishing (after the first subscribe answer). */
    publishPending: false,
    subscribePc: null,
    subscribeChain: Promise.resolve(),
    ...firstAnswerLatch(),
    pendingCandidates: { publish: [], subscribe: [], screen: [] },
    /** mid of the subscribe connection → {participantId, trackId}, from the offer's a=msid lines. */
    midMap: new Map(),
    /** participant id → remote participant (see addParticipant). */
    participants: new Map(),
    wsView: 'connecting',
    selfTile: null,
    /** The meeting state (docs/protocol.md) and when it arrived (for the running clocks). */
    state: null,
    stateAt: 0,
    rollCall: [],
    chat: [],
    mutedByChair: false,
    holdsFloor: false,
    /** The local screen share: {stream, video, audio, pc, waiter} (pc: its own publish connection). */
    screen: null,
    mainKey: '',
    tick: null,
    /** The last connection_quality message. */
    quality: null,
    trace: [],
  };
}

/** Server-side track id of each received MediaStreamTrack. */
const remoteTrackIds = new WeakMap();

const can = () => (meeting && ROLE_CAN[meeting.role]) || NO_ROLE;

// ---------------------------------------------------------------------------------------------------------
// Messages (banner lines). Each has a key so a newer message of the same kind replaces the older one, and
// keeps its i18n key and parameters so it re-renders when the language changes.

const messages = new Map();

function showMessage(slot, key, params = {}, kind = 'error') {
  let entry = messages.get(slot);
  if (!entry) {
    const el = document.createElement('div');
    el.className = 'message';
    el.dataset.testid = 'message';
    el.dataset.slot = slot;
    const text = document.createElement('span');
    text.className = 'message-text';
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'message-close';
    close.textContent = '×';
    close.addEventListener('click', () => clearMessage(slot));
    el.append(text, close);
    ui.messages.append(el);
    entry = { el, text, close };
    messages.set(slot, entry);
  }
  entry.key = key;
  entry.params = params;
  entry.el.dataset.kind = kind;
  entry.el.dataset.key = key;
  renderMessage(entry);
}

function renderMessage(entry) {
  entry.text.textContent = t(entry.key, entry.params);
  entry.close.title = t('msg.close');
  entry.close.setAttribute('aria-label', t('msg.close'));
}

function clearMessage(slot) {
  const entry = messages.get(slot);
  if (!entry) return;
  entry.el.remove();
  messages.delete(slot);
}

function clearAllMessages() {
  for (const slot of [...messages.keys()]) clearMessage(slot);
}

// ---------------------------------------------------------------------------------------------------------
// Small helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k in node && k !== 'list') node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

/** "m:ss" (or "h:mm:ss") for a duration in milliseconds. */
function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** Local time of day for an RFC 3339 time. */
function timeOfDay(rfc3339) {
  if (!rfc3339) return '';
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return rfc3339;
  return d.toLocaleTimeString(getLang() === 'vi' ? 'vi-VN' : 'en-GB', { hour: '2-digit', minute: '2-digit' });
}

/** Milliseconds since the meeting state arrived. */
const sinceState = () => (meeting ? Date.now() - meeting.stateAt : 0);

function participantName(id) {
  if (!meeting) return id;
  if (id === meeting.selfId) return meeting.name;
  return meeting.participants.get(id)?.name ?? id;
}

// ---------------------------------------------------------------------------------------------------------
// Connection state pills

function pcView(pc, hasMedia = true) {
  if (!hasMedia) return 'none';
  if (!pc) return 'connecting';
  switch (pc.connectionState) {
    case 'connected':
      return 'connected';
    case 'disconnected':
    case 'failed':
      return 'retrying';
    case 'closed':
      return 'closed';
    default:
      return 'connecting';
  }
}

function renderStatus() {
  if (!meeting) return;
  const hasLocal = !!(meeting.local.audio || meeting.local.video);
  const localKnown = meeting.mediaSettled === true || meeting.canPublish === false;
  const wsOk = meeting.wsView === 'connected';
  const views = {
    ws: meeting.wsView,
    publish: !wsOk ? meeting.wsView : pcView(meeting.publishPc, !localKnown || (hasLocal && meeting.canPublish)),
    // The server offers the subscribe connection once there is something to receive.
    subscribe: !wsOk ? meeting.wsView : meeting.subscribePc ? pcView(meeting.subscribePc) : 'idle',
  };
  if (views.subscribe === 'idle' && meeting.participants.size > 0) views.subscribe = 'connecting';
  setPill(ui.statusWs, views.ws);
  setPill(ui.statusPublish, views.publish);
  setPill(ui.statusSubscribe, views.subscribe);
  renderQuality();
}

/** Chất lượng kết nối: this page's link as the server measures it (connection_quality, every 2 s). */
function renderQuality() {
  const q = meeting?.quality;
  ui.pillQuality.hidden = !q || meeting.wsView !== 'connected';
  if (!q) return;
  const view = { good: 'connected', fair: 'connecting', poor: 'retrying' }[q.level] || 'idle';
  ui.statusQuality.textContent = t(`quality.${q.level}`) !== `quality.${q.level}` ? t(`quality.${q.level}`) : q.level;
  ui.pillQuality.dataset.state = view;
  ui.pillQuality.dataset.level = q.level;
  const kbit = (b) => (b == null ? '–' : Math.round(b / 1000));
  ui.pillQuality.title = t('quality.detail', {
    loss: q.loss_percent == null ? '–' : Number(q.loss_percent).toFixed(1),
    rtt: q.rtt_ms == null ? '–' : Math.round(q.rtt_ms),
    in: kbit(q.bitrate_in),
    out: kbit(q.bitrate_out),
  });
}

function setPill(valueEl, view) {
  valueEl.textContent = t(`state.${view}`);
  valueEl.parentElement.dataset.state = view;
}

// ---------------------------------------------------------------------------------------------------------
// Tiles

function makeTile({ name, self }) {
  const tile = document.createElement('div');
  tile.className = 'tile';
  tile.dataset.testid = self ? 'self-tile' : 'tile';
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.setAttribute('playsinline', '');
  if (self) {
    video.muted = true;
    video.dataset.self = 'true';
    tile.classList.add('self');
  } else {
    video.dataset.participant = name;
  }
  const novideo = document.createElement('div');
  novideo.className = 'novideo';
  novideo.dataset.testid = 'novideo';
  const initials = document.createElement('span');
  initials.className = 'initial';
  initials.textContent = (name.trim()[0] || '?').toUpperCase();
  const novideoText = document.createElement('span');
  novideoText.className = 'novideo-text';
  novideo.append(initials, novideoText);
  const flags = el('div', { className: 'flags' });
  const floorFlag = el('span', { className: 'flag floor', dataset: { testid: 'tile-floor' }, hidden: true });
  const handFlag = el('span', { className: 'flag hand', dataset: { testid: 'tile-hand' }, hidden: true });
  const screenFlag = el('span', { className: 'flag screen', dataset: { testid: 'tile-screen' }, hidden: true });
  const pausedFlag = el('span', { className: 'flag paused', dataset: { testid: 'tile-video-paused' }, hidden: true });
  flags.append(floorFlag, handFlag, screenFlag, pausedFlag);
  const label = document.createElement('div');
  label.className = 'label';
  const nameEl = document.createElement('span');
  nameEl.className = 'name';
  nameEl.dataset.testid = 'tile-name';
  const mic = document.createElement('span');
  mic.className = 'badge mic';
  mic.dataset.testid = 'tile-mic';
  const cam = document.createElement('span');
  cam.className = 'badge camera';
  cam.dataset.testid = 'tile-camera';
  label.append(nameEl, mic, cam);
  const actions = el('div', { className: 'tile-actions', hidden: true });
  tile.append(video, novideo, flags, actions, label);
  return { tile, video, novideo, novideoText, nameEl, mic, cam, floorFlag, handFlag, screenFlag, pausedFlag, actions };
}

function renderTile(view, { name, self, mic, camera, hasVideo, hasAudio }) {
  view.nameEl.textContent = self ? t('meeting.self', { name }) : name;
  view.mic.textContent = t(mic ? 'tile.mic.on' : 'tile.mic.off');
  view.mic.dataset.on = String(!!mic);
  view.cam.textContent = t(camera ? 'tile.camera.on' : 'tile.camera.off');
  view.cam.dataset.on = String(!!camera);
  const showPicture = hasVideo && camera;
  view.novideo.hidden = showPicture;
  view.novideoText.textContent = t(hasVideo ? 'tile.camera.off' : 'tile.novideo');
  view.tile.dataset.hasVideo = String(!!hasVideo);
  view.tile.dataset.hasAudio = String(!!hasAudio);
}

/** Floor, raised hand and screen flags on a tile, from the meeting state. */
function renderTileFlags(view, id, sharing) {
  const st = meeting?.state;
  const onFloor = !!st?.floor?.some((f) => f.participant_id === id);
  const queuePos = st?.queue?.findIndex((q) => q.participant_id === id) ?? -1;
  view.floorFlag.hidden = !onFloor;
  view.floorFlag.textContent = t('tile.floor');
  view.handFlag.hidden = queuePos < 0;
  view.handFlag.textContent = t('tile.hand', { n: queuePos + 1 });
  view.screenFlag.hidden = !sharing;
  view.screenFlag.textContent = t('tile.screen');
  view.pausedFlag.textContent = t('tile.videoPaused');
  view.tile.classList.toggle('speaking', onFloor);
  view.tile.classList.toggle('talking', !!meeting?.activeSpeaker && meeting.activeSpeaker === id);
  view.tile.dataset.activeSpeaker = String(!!meeting?.activeSpeaker && meeting.activeSpeaker === id);
  view.tile.classList.toggle('main', !!st?.main_participant_id && st.main_participant_id === id);
}

function renderSelfTile() {
  if (!meeting || !meeting.selfTile) return;
  const { audio, video } = meeting.local;
  renderTile(meeting.selfTile, {
    name: meeting.name || '…',
    self: true,
    mic: !!audio && audio.enabled,
    camera: !!video && video.enabled,
    hasVideo: !!video,
    hasAudio: !!audio,
  });
  renderTileFlags(meeting.selfTile, meeting.selfId, !!meeting.screen);
  meeting.selfTile.tile.hidden = meeting.canPublish === false;
}

function renderParticipant(p) {
  renderTile(p.view, {
    name: p.name,
    self: false,
    mic: p.mic,
    camera: p.camera,
    hasVideo: p.stream.getVideoTracks().length > 0,
    hasAudio: p.stream.getAudioTracks().length > 0,
  });
  renderTileFlags(p.view, p.id, p.screenStream.getVideoTracks().length > 0);
  renderTileActions(p);
  // A large meeting: a hall receives only the chair and the speakers (`receiving`); the other halls get no tile.
  p.view.tile.hidden = !!meeting.receiveOnly && !meeting.receiveOnly.has(p.id);
}

/** The chair's per-tile actions (mute, ask to unmute, remove) and, for who manages the floor, grant/revoke. */
function renderTileActions(p) {
  const c = can();
  const target = p.role || 'endpoint';
  const show = (c.moderate || c.floor) && target !== 'chair' && target !== 'admin' && target !== 'observer';
  p.view.actions.hidden = !show;
  if (!show) {
    p.view.actions.replaceChildren();
    return;
  }
  const onFloor = !!meeting.state?.floor?.some((f) => f.participant_id === p.id);
  const key = `${c.moderate}|${c.floor}|${onFloor}|${getLang()}`;
  if (p.view.actions.dataset.key === key) return;
  p.view.actions.dataset.key = key;
  const buttons = [];
  if (c.floor && target === 'endpoint') {
    buttons.push(
      onFloor
        ? el('button', {
            type: 'button',
            text: t('btn.revoke'),
            dataset: { testid: 'tile-revoke' },
            onclick: () => send({ type: 'revoke_floor', participant_id: p.id }),
          })
        : el('button', {
            type: 'button',
            text: t('btn.grant'),
            dataset: { testid: 'tile-grant' },
            onclick: () => send({ type: 'grant_floor', participant_id: p.id }),
          }),
    );
  }
  if (c.moderate) {
    buttons.push(
      el('button', {
        type: 'button',
        text: t('tile.mute'),
        dataset: { testid: 'tile-mute' },
        onclick: () => send({ type: 'mute', participant_id: p.id }),
      }),
      el('button', {
        type: 'button',
        text: t('tile.askUnmute'),
        dataset: { testid: 'tile-ask-unmute' },
        onclick: () => send({ type: 'ask_unmute', participant_id: p.id }),
      }),
      el('button', {
        type: 'button',
        className: 'danger',
        text: t('tile.remove'),
        dataset: { testid: 'tile-remove' },
        onclick: () => {
          if (window.confirm(t('confirm.remove', { name: p.name }))) send({ type: 'remove', participant_id: p.id });
        },
      }),
    );
    // The highest video quality this hall receives (a weak commune link): the server's simulcast layer cap.
    const cap = el('select', {
      title: t('tile.layerCap'),
      dataset: { testid: 'tile-layer-cap' },
      onchange: (ev) => {
        const v = ev.target.value;
        p.layerCap = v;
        send({ type: 'set_layer_cap', participant_id: p.id, max_layer: v === 'auto' ? null : v });
      },
    });
    for (const v of ['auto', 'low', 'medium', 'high']) {
      cap.append(el('option', { value: v, text: t(`tile.layerCap.${v}`), selected: (p.layerCap || 'auto') === v }));
    }
    buttons.push(cap);
  }
  p.view.actions.replaceChildren(...buttons);
}

/** Whether a remote participant's role publishes (observers and admins only watch). */
const publishes = (p) => p.role !== 'observer' && p.role !== 'admin';

function renderCount() {
  if (!meeting) return;
  const others = [...meeting.participants.values()].filter(publishes).length;
  const n = others + (meeting.canPublish === false ? 0 : 1);
  ui.count.textContent = t('meeting.count', { n });
  ui.empty.hidden = others > 0;
  ui.grid.dataset.count = String(n);
}

function renderControls() {
  if (!meeting) return;
  const { audio, video } = meeting.local;
  const publishing = meeting.canPublish !== false;
  ui.mic.hidden = !publishing;
  ui.camera.hidden = !publishing;
  ui.mic.disabled = !audio;
  ui.mic.textContent = t(!audio ? 'btn.mic.none' : audio.enabled ? 'btn.mic.on' : 'btn.mic.off');
  ui.mic.setAttribute('aria-pressed', String(!!audio && audio.enabled));
  ui.mic.dataset.on = String(!!audio && audio.enabled);
  ui.camera.disabled = !video;
  ui.camera.textContent = t(!video ? 'btn.camera.none' : video.enabled ? 'btn.camera.on' : 'btn.camera.off');
  ui.camera.setAttribute('aria-pressed', String(!!video && video.enabled));
  ui.camera.dataset.on = String(!!video && video.enabled);

  // Giơ tay / Hạ tay with the place in the queue (halls only; not while holding the floor).
  const c = can();
  const queue = meeting.state?.queue ?? [];
  const pos = queue.findIndex((q) => q.participant_id === meeting.selfId);
  ui.hand.hidden = !c.raise || !meeting.meetingInfo || meeting.holdsFloor || !meeting.selfId;
  ui.hand.textContent = t(pos >= 0 ? 'btn.hand.lower' : 'btn.hand.raise');
  ui.hand.dataset.raised = String(pos >= 0);
  ui.hand.setAttribute('aria-pressed', String(pos >= 0));
  ui.handPos.hidden = ui.hand.hidden || pos < 0;
  ui.handPos.textContent = pos >= 0 ? t('hand.position', { n: pos + 1 }) : '';

  // Chia sẻ màn hình: the chair at any time, a hall only while it holds the floor.
  const mayShare =
    publishing && (c.share === 'always' || (c.share === 'floor' && meeting.holdsFloor));
  ui.share.hidden = !(mayShare || meeting.screen) || !navigator.mediaDevices?.getDisplayMedia;
  ui.share.textContent = t(meeting.screen ? 'btn.share.stop' : 'btn.share');
  ui.share.dataset.on = meeting.screen ? 'true' : '';
  if (!meeting.screen) delete ui.share.dataset.on;
}

function renderHeader() {
  if (!meeting) return;
  const title = meeting.meetingInfo?.title;
  ui.meetingTitle.hidden = !title;
  ui.meetingTitle.textContent = title || '';
  ui.roomLabel.hidden = !!title;
  ui.roomLabel.textContent = t('meeting.room', { room: meeting.room });
  ui.roleChip.hidden = !meeting.role;
  ui.roleChip.textContent = meeting.role ? t(`role.${meeting.role}`) : '';
  ui.roleChip.dataset.role = meeting.role || '';
  const st = meeting.state;
  // Mode and lock matter in a meeting (with a token); an open room shows neither.
  const showState = !!st && !!meeting.meetingInfo;
  ui.modeChip.hidden = !showState;
  ui.lockChip.hidden = !showState;
  if (st) {
    ui.modeChip.textContent = t('mode.chip', { mode: t(`mode.${st.mode}`) });
    ui.modeChip.dataset.mode = st.mode;
    ui.lockChip.textContent = t(st.locked ? 'lock.chip.on' : 'lock.chip.off');
    ui.lockChip.dataset.locked = String(!!st.locked);
  }
  // Everyone sees that the meeting is being recorded.
  ui.recChip.hidden = !(showState && st.recording);
}

function renderPanels() {
  if (!meeting) return;
  const c = can();
  const inMeeting = !!meeting.meetingInfo;
  document.body.dataset.role = meeting.role || '';
  ui.meetingView.dataset.role = meeting.role || '';
  ui.panelChair.hidden = !c.moderate;
  ui.panelFloor.hidden = !c.floor;
  ui.panelRollcall.hidden = !c.rollcall || !inMeeting;
  const st = meeting.state;
  if (st) {
    if (document.activeElement !== ui.modeSelect) ui.modeSelect.value = st.mode;
    ui.lock.textContent = t(st.locked ? 'btn.unlock' : 'btn.lock');
    ui.lock.dataset.on = String(!!st.locked);
    ui.lock.setAttribute('aria-pressed', String(!!st.locked));
    ui.record.textContent = t(st.recording ? 'btn.record.stop' : 'btn.record.start');
    ui.record.dataset.on = String(!!st.recording);
    ui.record.setAttribute('aria-pressed', String(!!st.recording));
  }
  ui.record.hidden = !inMeeting;
  // The attendance report, downloadable with this page's own token (chair, secretary, admin).
  const mid = meeting.meetingInfo?.id;
  ui.attendanceCsv.hidden = !(mid && meeting.token && c.rollcall);
  if (mid && meeting.token) {
    ui.attendanceCsv.href = `/api/meetings/${encodeURIComponent(mid)}/attendance.csv?token=${encodeURIComponent(meeting.token)}`;
  }
  renderQueue();
  renderRollCall();
}

function renderAll() {
  if (!meeting) return;
  renderHeader();
  renderStatus();
  renderControls();
  renderSelfTile();
  for (const p of meeting.participants.values()) renderParticipant(p);
  renderCount();
  renderPanels();
  renderBanner();
  renderMain();
}

/** Play a remote video; if the browser blocks sound without a user gesture, play muted and offer a button. */
function playVideo(video) {
  const attempt = video.play();
  if (!attempt) return;
  attempt.catch((err) => {
    if (err.name !== 'NotAllowedError' || video.dataset.self || video.muted) return;
    video.muted = true;
    video.play().catch(() => {});
    ui.sound.hidden = false;
  });
}

// ---------------------------------------------------------------------------------------------------------
// The main picture: a screen share if any, else meeting_state.main_participant_id, else the chair's own preview.

function pickMain() {
  if (!meeting) return null;
  if (meeting.screen?.video && meeting.screen.video.readyState === 'live') {
    return {
      id: meeting.selfId,
      name: meeting.name,
      self: true,
      source: 'screen',
      track: meeting.screen.video,
      pip: meeting.local.video?.enabled ? meeting.local.video : null,
    };
  }
  for (const p of meeting.participants.values()) {
    const screen = p.screenStream.getVideoTracks()[0];
    if (screen) {
      return { id: p.id, name: p.name, source: 'screen', track: screen, pip: p.stream.getVideoTracks()[0] || null };
    }
  }
  const st = meeting.state;
  let mainId = st?.main_participant_id;
  if (!mainId && meeting.role === 'chair') mainId = meeting.selfId;
  if (!mainId) return null;
  if (mainId === meeting.selfId) {
    if (meeting.canPublish === false) return null;
    return { id: mainId, name: meeting.name, self: true, source: 'camera', track: meeting.local.video || null };
  }
  const p = meeting.participants.get(mainId);
  if (!p) return null;
  // A hall speaking is the main picture; the chair stays large enough to see, inset (not at the chair's own console).
  let pip = null;
  if (p.role !== 'chair' && meeting.role !== 'chair') {
    const chair = [...meeting.participants.values()].find((x) => x.role === 'chair');
    pip = chair?.camera ? chair.stream.getVideoTracks()[0] || null : null;
  }
  return { id: p.id, name: p.name, source: 'camera', track: p.stream.getVideoTracks()[0] || null, pip };
}

function renderMain() {
  if (!meeting) return;
  const pick = pickMain();
  ui.meetingView.dataset.layout = pick ? 'stage' : 'grid';
  ui.stage.hidden = !pick;
  const video = ui.mainVideo;
  if (!pick) {
    if (meeting.mainKey) {
      video.srcObject = null;
      ui.mainPip.srcObject = null;
      meeting.mainKey = '';
    }
    delete video.dataset.participant;
    delete video.dataset.participantId;
    delete video.dataset.source;
    ui.mainName.textContent = '';
    return;
  }
  const key = `${pick.id}|${pick.source}|${pick.track?.id ?? ''}|${pick.pip?.id ?? ''}`;
  video.dataset.participant = pick.name;
  video.dataset.participantId = pick.id;
  video.dataset.source = pick.source;
  video.dataset.self = String(!!pick.self);
  video.classList.toggle('mirror', !!pick.self && pick.source === 'camera');
  ui.mainName.textContent =
    pick.source === 'screen' ? t('main.screen', { name: pick.name }) : pick.self ? t('main.self', { name: pick.name }) : pick.name;
  if (key === meeting.mainKey) return;
  meeting.mainKey = key;
  video.srcObject = pick.track ? new MediaStream([pick.track]) : null;
  if (pick.track) playVideo(video);
  ui.mainPip.hidden = !pick.pip;
  ui.mainPip.srcObject = pick.pip ? new MediaStream([pick.pip]) : null;
  if (pick.pip) playVideo(ui.mainPip);
}

// ---------------------------------------------------------------------------------------------------------
// Remote participants

function addParticipant(info) {
  if (!meeting || info.id === meeting.selfId) return null;
  let p = meeting.participants.get(info.id);
  if (!p) {
    const view = makeTile({ name: info.name, self: false });
    p = {
      id: info.id,
      name: info.name,
      role: info.role || null,
      mic: true,
      camera: true,
      tracks: new Map(),
      /** server track id → received MediaStreamTrack */
      received: new Map(),
      /** The tile: microphone and camera. */
      stream: new MediaStream(),
      /** A screen share (video). */
      screenStream: new MediaStream(),
      /** Audio beyond the microphone (a shared tab's sound): track → its own <audio>. */
      extraAudio: new Map(),
      view,
      keyframeTimer: null,
    };
    view.tile.dataset.participantId = info.id;
    if (p.role) view.tile.dataset.role = p.role;
    // srcObject is set once the stream has a track: a <video> on an empty stream delays the page's load event.
    meeting.participants.set(info.id, p);
    ui.grid.append(view.tile);
  } else if (info.name && info.name !== p.name) {
    p.name = info.name;
    p.view.video.dataset.participant = info.name;
  }
  if (info.role) {
    p.role = info.role;
    p.view.tile.dataset.role = info.role;
    // Who never publishes (IT staff watching, an administrator) takes no tile on the wall screen.
    p.view.tile.hidden = !publishes(p);
  }
  if (typeof info.mic === 'boolean') p.mic = info.mic;
  if (typeof info.camera === 'boolean') p.camera = info.camera;
  for (const track of info.tracks || []) p.tracks.set(track.id, track);
  if (info.tracks?.length) rebuildStreams(p);
  renderParticipant(p);
  renderCount();
  renderStatus();
  return p;
}

function removeParticipant(id) {
  const p = meeting?.participants.get(id);
  if (!p) return;
  clearTimeout(p.keyframeTimer);
  p.received.clear();
  for (const track of p.stream.getTracks()) p.stream.removeTrack(track);
  for (const track of p.screenStream.getTracks()) p.screenStream.removeTrack(track);
  p.view.video.srcObject = null;
  for (const audioEl of p.extraAudio.values()) audioEl.srcObject = null;
  p.extraAudio.clear();
  p.view.tile.remove();
  meeting.participants.delete(id);
  renderCount();
  renderStatus();
  renderMain();
}

function clearParticipants() {
  if (!meeting) return;
  for (const id of [...meeting.participants.keys()]) removeParticipant(id);
}

/** Make `stream` hold exactly `tracks`; true when it changed. */
function syncStream(stream, tracks) {
  let changed = false;
  for (const old of stream.getTracks()) {
    if (!tracks.includes(old)) {
      stream.removeTrack(old);
      changed = true;
    }
  }
  for (const track of tracks) {
    if (!stream.getTracks().includes(track)) {
      stream.addTrack(track);
      changed = true;
    }
  }
  return changed;
}

/**
 * Sort a participant's received tracks into its tile (microphone + camera: the newest of each kind) and its
 * screen share (tracks the server announced with source `screen`).
 */
function rebuildStreams(p) {
  let audio = null;
  let video = null;
  const screen = [];
  const extraAudio = [];
  for (const [trackId, track] of p.received) {
    if (track.readyState === 'ended') continue;
    if (p.tracks.get(trackId)?.source === 'screen') screen.push(track);
    else if (track.kind === 'audio') {
      // The first is the microphone; a second (e.g. a shared tab's sound, which the server announces as a
      // microphone too) is played as well, beside it.
      if (!audio) audio = track;
      else extraAudio.push(track);
    } else video = track;
  }
  const tileChanged = syncStream(p.stream, [audio, video].filter(Boolean));
  const screenVideo = screen.filter((tr) => tr.kind === 'video');
  const screenAudio = [...screen.filter((tr) => tr.kind === 'audio'), ...extraAudio];
  syncStream(p.screenStream, screenVideo);
  if (tileChanged) {
    // Re-attach so every browser picks up the changed track set, then play.
    p.view.video.srcObject = null;
    if (p.stream.getTracks().length > 0) {
      p.view.video.srcObject = p.stream;
      playVideo(p.view.video);
    }
  }
  // One <audio> per extra track (a media element may play only the first audio track of a stream).
  for (const [track, audioEl] of p.extraAudio) {
    if (!screenAudio.includes(track)) {
      audioEl.srcObject = null;
      audioEl.remove();
      p.extraAudio.delete(track);
    }
  }
  for (const track of screenAudio) {
    if (p.extraAudio.has(track)) continue;
    const audioEl = el('audio', { autoplay: true, dataset: { testid: 'extra-audio' } });
    audioEl.srcObject = new MediaStream([track]);
    p.view.tile.append(audioEl);
    p.extraAudio.set(track, audioEl);
    audioEl.play().catch(() => {});
  }
  renderParticipant(p);
  renderMain();
}

function attachRemoteTrack(participantId, track, trackId) {
  const p = meeting.participants.get(participantId) || addParticipant({ id: participantId, name: participantId });
  if (!p) return;
  remoteTrackIds.set(track, trackId);
  // A receiver's track object belongs to its m-line; if the server reuses the m-line for someone else, the
  // track moves: take it out of any other participant first.
  for (const other of meeting.participants.values()) {
    if (other === p) continue;
    for (const [id, tr] of other.received) {
      if (tr === track) {
        other.received.delete(id);
        rebuildStreams(other);
      }
    }
  }
  for (const [id, tr] of p.received) {
    if (tr === track && id !== trackId) p.received.delete(id);
  }
  p.received.set(trackId, track);
  if (!track.giaobanWatched) {
    track.giaobanWatched = true;
    track.addEventListener('ended', () => dropTrack(track));
  }
  rebuildStreams(p);
  if (track.kind === 'video') watchFirstFrame(p, track, trackId);
}

/** Forget a received track wherever it is (ended, or removed from its stream by a renegotiation). */
function dropTrack(track) {
  if (!meeting) return;
  for (const p of meeting.participants.values()) {
    for (const [id, tr] of p.received) {
      if (tr === track) {
        p.received.delete(id);
        rebuildStreams(p);
      }
    }
  }
}

function removeRemoteTrackById(participantId, trackId) {
  const p = meeting?.participants.get(participantId);
  if (!p) return;
  p.tracks.delete(trackId);
  p.received.delete(trackId);
  rebuildStreams(p);
}

/** If no picture arrives soon, ask the publisher for a keyframe (a few times; the server throttles). */
function watchFirstFrame(p, track, trackId, tries = 0) {
  clearTimeout(p.keyframeTimer);
  if (tries >= 3) return;
  const gen = meeting.generation;
  p.keyframeTimer = setTimeout(() => {
    if (!meeting || meeting.generation !== gen || p.received.get(trackId) !== track) return;
    const isScreen = p.tracks.get(trackId)?.source === 'screen';
    const shown = isScreen ? ui.mainVideo : p.view.video;
    if (shown.videoWidth > 0) return;
    // Only ask for tracks the server told us about, so a mapping slip never produces server errors.
    if (p.tracks.has(trackId)) meeting.session.send({ type: 'request_keyframe', track_id: trackId });
    watchFirstFrame(p, track, trackId, tries + 1);
  }, 2000);
}

// ---------------------------------------------------------------------------------------------------------
// Local media

async function acquireMedia() {
  const local = { stream: new MediaStream(), audio: null, video: null };
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) {
    showMessage('media', 'msg.media.unsupported', {}, 'warn');
    return local;
  }
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  const video = { width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 20, max: 30 } };
  const adopt = (stream) => {
    for (const track of stream.getTracks()) {
      if (track.kind === 'audio' && !local.audio) local.audio = track;
      else if (track.kind === 'video' && !local.video) local.video = track;
      else {
        track.stop();
        continue;
      }
      local.stream.addTrack(track);
    }
  };
  try {
    adopt(await md.getUserMedia({ audio, video }));
    return local;
  } catch (err) {
    console.warn('giaoban: getUserMedia(audio+video) failed', err);
    if (isDenied(err)) {
      showMessage('media', 'msg.media.denied', {}, 'warn');
      return local;
    }
  }
  // One of the two is missing or busy: take what is available.
  let audioErr = null;
  let videoErr = null;
  try {
    adopt(await md.getUserMedia({ audio }));
  } catch (err) {
    audioErr = err;
  }
  try {
    adopt(await md.getUserMedia({ video }));
  } catch (err) {
    videoErr = err;
  }
  if (audioErr && videoErr) {
    if (isDenied(audioErr) || isDenied(videoErr)) showMessage('media', 'msg.media.denied', {}, 'warn');
    else if (isMissing(audioErr) && isMissing(videoErr)) showMessage('media', 'msg.media.nodevice', {}, 'warn');
    else showMessage('media', 'msg.media.error', { reason: errorReason(videoErr) }, 'warn');
  } else if (videoErr) {
    showMessage('media', 'msg.media.nocamera', { reason: errorReason(videoErr) }, 'warn');
  } else if (audioErr) {
    showMessage('media', 'msg.media.nomic', { reason: errorReason(audioErr) }, 'warn');
  }
  return local;
}

const isDenied = (err) => err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
const isMissing = (err) => err && (err.name === 'NotFoundError' || err.name === 'OverconstrainedError');
const errorReason = (err) => (err && (err.name || err.message)) || '?';

/** The camera and microphone, opened once per page (on the first `joined` that allows publishing). */
function ensureMedia() {
  const m = meeting;
  if (m.mediaReady) return m.mediaReady;
  m.mediaReady = acquireMedia().then((local) => {
    if (meeting !== m) {
      for (const track of local.stream.getTracks()) track.stop();
      return local;
    }
    m.local = local;
    m.mediaSettled = true;
    if (local.stream.getTracks().length > 0 && m.selfTile) {
      m.selfTile.video.srcObject = local.stream;
      playVideo(m.selfTile.video);
    }
    renderAll();
    return local;
  });
  return m.mediaReady;
}

function send(msg) {
  return !!meeting?.session?.send(msg);
}

function sendMediaState() {
  if (!meeting || !meeting.selfId || meeting.canPublish === false) return;
  const { audio, video } = meeting.local;
  send({ type: 'media_state', mic: !!audio && audio.enabled, camera: !!video && video.enabled });
}

function setMic(on) {
  const track = meeting?.local.audio;
  if (!track) return;
  track.enabled = on;
  if (on) {
    meeting.mutedByChair = false;
    clearMessage('chair');
    hideUnmutePrompt();
  }
  renderControls();
  renderSelfTile();
  sendMediaState();
}

function toggleTrack(kind) {
  if (!meeting) return;
  const track = meeting.local[kind];
  if (!track) return;
  if (kind === 'audio') {
    setMic(!track.enabled);
    return;
  }
  track.enabled = !track.enabled;
  renderControls();
  renderSelfTile();
  renderMain();
  sendMediaState();
}

// ---------------------------------------------------------------------------------------------------------
// Screen share: on a publish connection of its own (one layer), opened when sharing starts and closed when it
// stops, so the camera's connection (simulcast) is never renegotiated. Every track on it is the screen share.

async function startScreenShare() {
  if (!meeting || meeting.screen) return;
  const c = can();
  if (c.share === 'floor' && !meeting.holdsFloor) {
    showMessage('share', 'msg.share.floor', {}, 'warn');
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true });
  } catch (err) {
    console.warn('giaoban: getDisplayMedia failed', err);
    if (err?.name !== 'NotAllowedError' && err?.name !== 'AbortError') {
      showMessage('share', 'msg.share.error', { reason: errorReason(err) }, 'warn');
    }
    return;
  }
  if (!meeting || meeting.screen) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  const video = stream.getVideoTracks()[0] || null;
  const audio = stream.getAudioTracks()[0] || null;
  if (video) video.contentHint = 'detail';
  meeting.screen = { stream, video, audio, pc: null, waiter: null };
  clearMessage('share');
  for (const track of [video, audio].filter(Boolean)) {
    track.addEventListener('ended', () => stopScreenShare());
  }
  openScreenPc();
  renderControls();
  renderSelfTile();
  renderMain();
}

/** Open the screen share's connection (once joined; again after a rejoin) and send its offer. */
function openScreenPc() {
  const m = meeting;
  const screen = m?.screen;
  if (!screen || screen.pc || m.selfId === null || !m.canPublish) return;
  const gen = m.generation;
  const current = () => meeting === m && m.generation === gen && m.screen === screen && screen.pc === pc;
  const pc = new RTCPeerConnection(pcConfig());
  screen.pc = pc;
  pc.onicecandidate = (ev) => {
    if (current()) sendCandidate('screen', ev.candidate);
  };
  pc.onconnectionstatechange = () => {
    if (!current()) return;
    renderStatus();
    if (pc.connectionState === 'failed') {
      // Only the share is lost (the camera's connection decides about a rejoin): start it on a fresh connection.
      console.warn('giaoban: screen connection failed, opening it again');
      closeScreenPc(screen, true);
      setTimeout(() => {
        if (meeting === m && m.generation === gen && m.screen === screen) openScreenPc();
      }, 1000);
    }
  };
  for (const track of [screen.video, screen.audio].filter(Boolean)) {
    pc.addTransceiver(track, { direction: 'sendonly', streams: [screen.stream] });
  }
  (async () => {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (!current()) return;
    const answer = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no screen_answer')), PUBLISH_ANSWER_TIMEOUT_MS);
      screen.waiter = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
    m.session.send({ type: 'screen_offer', sdp: offer.sdp });
    const answerSdp = await answer;
    screen.waiter = null;
    if (!current() || pc.signalingState === 'closed') return;
    await pc.setRemoteDescription({ type: 'answer', sdp: answerSdp });
    await flushCandidates('screen', pc);
  })().catch((err) => {
    screen.waiter = null;
    if (current()) mediaFailure('screen', err);
  });
}

function onScreenAnswer(sdp) {
  const waiter = meeting.screen?.waiter;
  if (waiter) {
    meeting.screen.waiter = null;
    waiter.resolve(sdp);
  } else {
    console.warn('giaoban: unexpected screen_answer');
  }
}

/** Close the screen share's connection; `tell`: the server closes its side too (`stop_screen`). */
function closeScreenPc(screen, tell) {
  const pc = screen?.pc;
  if (!pc) return;
  screen.pc = null;
  screen.waiter?.reject(new Error('screen connection closed'));
  screen.waiter = null;
  pc.onicecandidate = pc.onconnectionstatechange = null;
  pc.close();
  if (meeting) meeting.pendingCandidates.screen = [];
  if (tell) meeting?.session.send({ type: 'stop_screen' });
}

function stopScreenShare() {
  if (!meeting || !meeting.screen) return;
  const screen = meeting.screen;
  meeting.screen = null;
  for (const track of screen.stream.getTracks()) track.stop();
  closeScreenPc(screen, true);
  renderControls();
  renderSelfTile();
  renderMain();
}

// ---------------------------------------------------------------------------------------------------------
// Peer connections

function sendCandidate(leg, candidate) {
  if (!candidate || !candidate.candidate) return; // end-of-candidates needs no message
  const c = { candidate: candidate.candidate };
  if (candidate.sdpMid != null) c.sdpMid = candidate.sdpMid;
  if (candidate.sdpMLineIndex != null) c.sdpMLineIndex = candidate.sdpMLineIndex;
  meeting?.session.send({ type: 'candidate', leg, candidate: c });
}

/**
 * A media connection disconnected this long (no packets from the server) is given up: the page joins again, which
 * resumes the same participant at the server. Shorter drops recover by themselves; the server gives up on its side
 * after 15 s of silence.
 */
const PC_DISCONNECTED_REJOIN_MS = 8_000;

/**
 * A media connection not connected this long after it was made is given up too: the page joins again. ICE and
 * DTLS take well under a second on a good link and a few seconds on a lossy one; a handshake whose flight was lost
 * at the wrong moment can stay `connecting` for good (the server's DTLS stack stops retransmitting when the
 * browser repeats its own flight first), and Chromium would not call it `failed` for a long time.
 */
const PC_CONNECT_TIMEOUT_MS = 15_000;

function watchPc(pc, leg) {
  const gen = meeting.generation;
  let lostTimer = null;
  let connectTimer = setTimeout(() => {
    connectTimer = null;
    if (pc.connectionState !== 'connected' && pc.connectionState !== 'closed') rejoin('not connected in time');
  }, PC_CONNECT_TIMEOUT_MS);
  const rejoin = (why) => {
    clearTimeout(lostTimer);
    lostTimer = null;
    clearTimeout(connectTimer);
    connectTimer = null;
    if (!meeting || meeting.generation !== gen) return;
    console.warn(`giaoban: ${leg} connection ${why}, rejoining`);
    showMessage('pc', 'msg.pc.failed', {}, 'warn');
    meeting.session.reconnect();
  };
  pc.onicecandidate = (ev) => {
    if (meeting && meeting.generation === gen) sendCandidate(leg, ev.candidate);
  };
  pc.onconnectionstatechange = () => {
    if (!meeting || meeting.generation !== gen) return;
    renderStatus();
    if (pc.connectionState === 'connected') {
      clearTimeout(connectTimer);
      connectTimer = null;
      clearTimeout(lostTimer);
      lostTimer = null;
      clearMessage('pc');
    }
    if (pc.connectionState === 'disconnected' && !lostTimer) {
      lostTimer = setTimeout(() => {
        if (pc.connectionState === 'disconnected' || pc.connectionState === 'failed') rejoin('lost');
      }, PC_DISCONNECTED_REJOIN_MS);
    }
    // The server suspends a participant whose connections fail: join again, as the same participant.
    if (pc.connectionState === 'failed') rejoin('failed');
  };
}

/** How long a joining hall holds its own publishing back for the first subscribe answer (see `joined`). */
const PUBLISH_AFTER_SUBSCRIBE_MAX_MS = 400;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `firstAnswer` settles once `answered()` is called: when the first subscribe answer of a session is sent. */
function firstAnswerLatch() {
  let answered;
  const firstAnswer = new Promise((resolve) => {
    answered = resolve;
  });
  return { firstAnswer, answered };
}

/** `?relay=1`: media only through the TURN server (tests, and checking a deployment's TURN from a hall). */
const FORCE_RELAY = new URLSearchParams(location.search).get('relay') === '1';

/** RTCPeerConnection settings: the TURN servers (with this participant's credentials) from `joined`. */
function pcConfig() {
  const config = {};
  if (meeting?.iceServers?.length) config.iceServers = meeting.iceServers;
  if (FORCE_RELAY) config.iceTransportPolicy = 'relay';
  return config;
}

/**
 * Redundant audio (RFC 2198): with `audio/red` ahead of Opus in the offer, Chromium sends each packet with the
 * previous one inside it, so a hall that loses a packet still plays it. The server forwards RED to receivers that
 * take it and plain Opus to the others. Without the capability (or the API) the browser's default order stays.
 */
function preferRedundantAudio(transceiver) {
  try {
    const codecs = RTCRtpReceiver.getCapabilities?.('audio')?.codecs ?? [];
    const red = codecs.filter((c) => c.mimeType.toLowerCase() === 'audio/red');
    if (red.length === 0 || typeof transceiver.setCodecPreferences !== 'function') return;
    transceiver.setCodecPreferences([...red, ...codecs.filter((c) => c.mimeType.toLowerCase() !== 'audio/red')]);
  } catch (e) {
    console.warn('RED not preferred', e);
  }
}

async function publish(gen) {
  const local = await ensureMedia();
  if (!meeting || meeting.generation !== gen) return;
  sendMediaState();
  const tracks = [local.audio, local.video].filter(Boolean);
  if (tracks.length === 0) {
    renderStatus();
    return; // receive-only
  }
  const pc = new RTCPeerConnection(pcConfig());
  meeting.publishPc = pc;
  watchPc(pc, 'publish');
  for (const track of tracks) {
    const init = { direction: 'sendonly', streams: [local.stream] };
    if (track.kind === 'video' && meeting.simulcast) init.sendEncodings = CAMERA_ENCODINGS.map((e) => ({ ...e }));
    const transceiver = pc.addTransceiver(track, init);
    if (track.kind === 'video') meeting.cameraSender = transceiver.sender;
    if (track.kind === 'audio') preferRedundantAudio(transceiver);
  }
  negotiatePublish(gen);
  renderStatus();
}

/** One offer/answer round on the publish connection at a time (the first, and each renegotiation). */
function negotiatePublish(gen) {
  const m = meeting;
  m.publishChain = m.publishChain
    .then(async () => {
      const pc = m.publishPc;
      if (meeting !== m || m.generation !== gen || !pc || pc.signalingState === 'closed') return;
      const offer = await pc.createOffer();
      const sdp = offer.sdp;
      await pc.setLocalDescription(offer);
      if (meeting !== m || m.generation !== gen) return;
      const answer = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no publish_answer')), PUBLISH_ANSWER_TIMEOUT_MS);
        m.publishWaiter = {
          resolve: (v) => {
            clearTimeout(timer);
            resolve(v);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
      });
      m.session.send({ type: 'publish_offer', sdp });
      const answerSdp = await answer;
      m.publishWaiter = null;
      if (meeting !== m || m.generation !== gen || pc.signalingState === 'closed') return;
      await pc.setRemoteDescription({ type: 'answer', sdp: answerSdp });
      await flushCandidates('publish', pc);
    })
    .catch((err) => {
      m.publishWaiter = null;
      if (meeting === m && m.generation === gen) mediaFailure('publish', err);
    });
  return m.publishChain;
}

function onPublishAnswer(sdp) {
  const waiter = meeting.publishWaiter;
  meeting.publishWaiter = null;
  if (waiter) waiter.resolve(sdp);
  else console.warn('giaoban: unexpected publish_answer');
}

function ensureSubscribePc() {
  if (meeting.subscribePc) return meeting.subscribePc;
  const pc = new RTCPeerConnection(pcConfig());
  meeting.subscribePc = pc;
  watchPc(pc, 'subscribe');
  const gen = meeting.generation;
  pc.ontrack = (ev) => {
    if (!meeting || meeting.generation !== gen) return;
    const mapped = meeting.midMap.get(ev.transceiver?.mid);
    const stream = ev.streams[0];
    const participantId = stream?.id || mapped?.participantId;
    const trackId = mapped?.trackId || ev.track.id;
    if (!participantId) {
      console.warn('giaoban: received a track without a stream id', ev.track);
      return;
    }
    attachRemoteTrack(participantId, ev.track, trackId);
    if (stream && !stream.giaobanWatched) {
      stream.giaobanWatched = true;
      stream.addEventListener('removetrack', (e) => dropTrack(e.track));
    }
  };
  renderStatus();
  return pc;
}

/** Record mid → (stream id, track id) from the offer's a=msid lines. */
function learnMsids(sdp) {
  let mid = null;
  let msid = null;
  const flush = () => {
    if (mid != null && msid) meeting.midMap.set(mid, msid);
    mid = null;
    msid = null;
  };
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('m=')) flush();
    else if (line.startsWith('a=mid:')) mid = line.slice(6).trim();
    else if (line.startsWith('a=msid:')) {
      const [participantId, trackId] = line.slice(7).trim().split(/\s+/);
      msid = { participantId, trackId };
    }
  }
  flush();
}

async function onSubscribeOffer(sdp, gen) {
  if (!meeting || meeting.generation !== gen) return;
  const pc = ensureSubscribePc();
  learnMsids(sdp);
  await pc.setRemoteDescription({ type: 'offer', sdp });
  await flushCandidates('subscribe', pc);
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  if (!meeting || meeting.generation !== gen) return;
  meeting.session.send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp });
  meeting.answered();
  // A renegotiation may have re-pointed m-lines whose tracks were already attached: re-map them.
  for (const tr of pc.getTransceivers()) {
    const mapped = meeting.midMap.get(tr.mid);
    const track = tr.receiver?.track;
    if (!mapped || !track || tr.currentDirection === 'inactive' || tr.stopped) continue;
    if (remoteTrackIds.get(track) && remoteTrackIds.get(track) !== mapped.trackId) {
      attachRemoteTrack(mapped.participantId, track, mapped.trackId);
    }
  }
}

async function onServerCandidate(leg, candidate) {
  const pc = { publish: meeting.publishPc, subscribe: meeting.subscribePc, screen: meeting.screen?.pc }[leg];
  if (!pc || !pc.remoteDescription) {
    meeting.pendingCandidates[leg]?.push(candidate);
    return;
  }
  await pc.addIceCandidate(candidate).catch((err) => console.warn('giaoban: addIceCandidate', err));
}

async function flushCandidates(leg, pc) {
  const pending = (meeting.pendingCandidates[leg] || []).splice(0);
  for (const c of pending) {
    await pc.addIceCandidate(c).catch((err) => console.warn('giaoban: addIceCandidate', err));
  }
}

/** Close the connections and forget remote participants (before a rejoin, or on leave). A screen share goes on:
 * the next `joined` opens its connection again. */
function teardownMedia() {
  if (!meeting) return;
  for (const pc of [meeting.publishPc, meeting.subscribePc]) {
    if (!pc) continue;
    pc.onicecandidate = pc.onconnectionstatechange = pc.ontrack = null;
    pc.close();
  }
  meeting.publishWaiter?.reject(new Error('connection closed'));
  meeting.publishWaiter = null;
  meeting.publishPc = null;
  meeting.subscribePc = null;
  meeting.publishChain = Promise.resolve();
  meeting.subscribeChain = Promise.resolve();
  Object.assign(meeting, firstAnswerLatch());
  meeting.publishPending = false;
  closeScreenPc(meeting.screen, false);
  meeting.pendingCandidates = { publish: [], subscribe: [], screen: [] };
  meeting.midMap.clear();
  clearParticipants();
}

// ---------------------------------------------------------------------------------------------------------
// Floor, queue, banners

function applyMeetingState(state) {
  if (!meeting || !state) return;
  meeting.state = state;
  meeting.stateAt = Date.now();
  const wasHolding = meeting.holdsFloor;
  meeting.holdsFloor = !!state.floor?.some((f) => f.participant_id === meeting.selfId);
  if (meeting.holdsFloor && !wasHolding && meeting.local.audio && !meeting.local.audio.enabled) {
    // Given the floor: the hall asked for it, so its microphone opens.
    setMic(true);
  }
  if (!meeting.holdsFloor && wasHolding && meeting.screen && can().share === 'floor') {
    stopScreenShare();
    showMessage('share', 'msg.share.stopped', {}, 'info');
  }
  renderAll();
}

function renderBanner() {
  if (!meeting) return;
  const holder = meeting.state?.floor?.find((f) => f.participant_id === meeting.selfId);
  // The chair is always heard: the banner is for whoever was given the floor.
  const show = !!holder && meeting.role !== 'chair';
  ui.floorBanner.hidden = !show;
  if (!show) return;
  if (holder.remaining_ms != null) {
    ui.floorBanner.textContent = t('banner.floor.remaining', { t: clock(holder.remaining_ms - sinceState()) });
    ui.floorBanner.dataset.remaining = String(Math.max(0, holder.remaining_ms - sinceState()));
  } else {
    ui.floorBanner.textContent = t('banner.floor');
    delete ui.floorBanner.dataset.remaining;
  }
}

/** The speaking queue and the floor holders (chair, secretary), rendered by key so controls keep their state. */
function renderQueue() {
  if (!meeting || ui.panelFloor.hidden) return;
  const st = meeting.state || { queue: [], floor: [] };
  const elapsed = sinceState();
  const rows = new Map([...ui.queue.children].map((li) => [li.dataset.participantId, li]));
  const wanted = [];
  for (const q of st.queue || []) {
    let li = rows.get(q.participant_id);
    if (!li) {
      const select = el('select', { dataset: { testid: 'grant-seconds' }, className: 'grant-seconds' });
      for (const s of GRANT_CHOICES) select.append(el('option', { value: String(s) }));
      const grant = el('button', {
        type: 'button',
        className: 'primary',
        dataset: { testid: 'grant' },
        onclick: () => {
          const seconds = Number(select.value);
          const msg = { type: 'grant_floor', participant_id: q.participant_id };
          if (seconds > 0) msg.seconds = seconds;
          send(msg);
        },
      });
      li = el(
        'li',
        { dataset: { testid: 'queue-row', participantId: q.participant_id } },
        el('span', { className: 'pos' }),
        el('span', { className: 'who' }),
        el('span', { className: 'wait muted' }),
        el('span', { className: 'row-actions' }, select, grant),
      );
    }
    const idx = wanted.length;
    li.dataset.participant = q.name;
    li.querySelector('.pos').textContent = `${idx + 1}.`;
    li.querySelector('.who').textContent = q.name;
    li.querySelector('.wait').textContent = t('queue.waiting', { t: clock(q.waiting_ms + elapsed) });
    const select = li.querySelector('select');
    [...select.options].forEach((o, i) => {
      o.textContent = GRANT_CHOICES[i] ? t('grant.minutes', { n: GRANT_CHOICES[i] / 60 }) : t('grant.unlimited');
    });
    select.title = t('grant.limit');
    li.querySelector('[data-testid="grant"]').textContent = t('btn.grant');
    wanted.push(li);
  }
  syncChildren(ui.queue, wanted);
  ui.queueEmpty.hidden = wanted.length > 0;

  const frows = new Map([...ui.floorList.children].map((li) => [li.dataset.participantId, li]));
  const fwanted = [];
  for (const f of st.floor || []) {
    let li = frows.get(f.participant_id);
    if (!li) {
      li = el(
        'li',
        { dataset: { testid: 'floor-row', participantId: f.participant_id } },
        el('span', { className: 'who' }),
        el('span', { className: 'wait muted' }),
        el('span', { className: 'row-actions' }, el('button', {
          type: 'button',
          className: 'danger',
          dataset: { testid: 'revoke' },
          onclick: () => send({ type: 'revoke_floor', participant_id: f.participant_id }),
        })),
      );
    }
    li.dataset.participant = f.name;
    li.querySelector('.who').textContent = f.name;
    li.querySelector('.wait').textContent =
      f.remaining_ms != null ? t('floor.remaining', { t: clock(f.remaining_ms - elapsed) }) : '';
    li.querySelector('[data-testid="revoke"]').textContent = t('btn.revoke');
    fwanted.push(li);
  }
  syncChildren(ui.floorList, fwanted);
  ui.floorEmpty.hidden = fwanted.length > 0;
}

/** Make `parent`'s children exactly `wanted`, in order, moving nodes only where needed. */
function syncChildren(parent, wanted) {
  for (const child of [...parent.children]) if (!wanted.includes(child)) child.remove();
  wanted.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Simulcast: which camera layers to send, how large each received video is shown, videos paused by the server.

/**
 * Send the camera layers someone receives and stop those nobody receives (the server's `layers`). A rid in
 * neither list has not reached the server yet: it stays as it is, or it would never arrive.
 */
function setCameraLayers(active, paused) {
  const sender = meeting?.cameraSender;
  if (!sender) return;
  const params = sender.getParameters();
  if (!params.encodings?.length) return;
  let changed = false;
  for (const enc of params.encodings) {
    if (!enc.rid) continue;
    const on = active.includes(enc.rid) ? true : paused.includes(enc.rid) ? false : enc.active;
    if (enc.active !== on) {
      enc.active = on;
      changed = true;
    }
  }
  if (changed) sender.setParameters(params).catch((err) => console.warn('giaoban: setParameters failed', err));
}

function onVideoPaused(trackId, paused) {
  for (const p of meeting.participants.values()) {
    if (!p.tracks.has(trackId)) continue;
    p.videoPaused = paused;
    p.view.pausedFlag.hidden = !paused;
    p.view.pausedFlag.textContent = t('tile.videoPaused');
    p.view.tile.dataset.videoPaused = String(paused);
  }
  if (paused) showMessage('net', 'tile.videoPaused', {}, 'warn');
  else if (![...meeting.participants.values()].some((p) => p.videoPaused)) clearMessage('net');
}

/** Tell the server how large each received video is shown (device pixels), when that changed. */
function reportVideoSizes() {
  if (!meeting?.session) return;
  const dpr = window.devicePixelRatio || 1;
  const shown = new Map(); // track → {width, height}, the largest element showing it
  for (const video of [ui.mainVideo, ui.mainPip, ...[...meeting.participants.values()].map((p) => p.view.video)]) {
    const track = video.srcObject?.getVideoTracks?.()[0];
    if (!track) continue;
    const r = video.getBoundingClientRect();
    const visible = video.offsetParent !== null && !video.closest('[hidden]');
    const width = visible ? Math.round(r.width * dpr) : 0;
    const height = visible ? Math.round(r.height * dpr) : 0;
    const prev = shown.get(track);
    if (!prev || width > prev.width) shown.set(track, { width, height });
  }
  meeting.sentSizes = meeting.sentSizes || new Map();
  for (const p of meeting.participants.values()) {
    for (const [trackId, track] of p.received) {
      if (track.kind !== 'video' || !p.tracks.has(trackId)) continue;
      const size = shown.get(track) || { width: 0, height: 0 };
      const last = meeting.sentSizes.get(trackId);
      // Small changes do not matter to the layer choice; a tile appearing or hiding does.
      if (last && Math.abs(last.width - size.width) <= last.width * 0.1 && (last.width === 0) === (size.width === 0)) continue;
      meeting.sentSizes.set(trackId, size);
      meeting.session.send({ type: 'video_size', track_id: trackId, width: size.width, height: size.height });
    }
  }
}

/** The running clocks: queue waiting times, floor time left. */
function tick() {
  if (!meeting || !meeting.state) return;
  if ((meeting.state.queue?.length || meeting.state.floor?.length) && !ui.panelFloor.hidden) renderQueue();
  renderBanner();
}

function showUnmutePrompt() {
  ui.unmutePrompt.hidden = false;
}

function hideUnmutePrompt() {
  ui.unmutePrompt.hidden = true;
}

// ---------------------------------------------------------------------------------------------------------
// Roll call

function renderRollCall() {
  if (!meeting || ui.panelRollcall.hidden) return;
  const entries = meeting.rollCall || [];
  const present = entries.filter((e) => e.status === 'present').length;
  ui.rollcallSummary.textContent = entries.length ? t('rollcall.summary', { p: present, n: entries.length }) : '';
  const rows = new Map([...ui.rollcall.children].map((li) => [li.dataset.endpointId, li]));
  const wanted = [];
  for (const e of entries) {
    let li = rows.get(e.endpoint_id);
    if (!li) {
      const input = el('input', {
        className: 'reason-input',
        maxLength: 500,
        dataset: { testid: 'absence-reason' },
      });
      const save = el('button', { type: 'button', dataset: { testid: 'absence-save' } });
      const form = el('form', { className: 'reason-form row' }, input, save);
      const submit = (ev) => {
        ev?.preventDefault();
        send({ type: 'set_absence_reason', endpoint_id: e.endpoint_id, reason: input.value.trim() });
        input.dataset.dirty = '';
      };
      form.addEventListener('submit', submit);
      save.addEventListener('click', submit);
      input.addEventListener('input', () => {
        input.dataset.dirty = 'true';
      });
      li = el(
        'li',
        { className: 'rollcall-row', dataset: { testid: 'rollcall-row', endpointId: e.endpoint_id } },
        el(
          'div',
          { className: 'row' },
          el('span', { className: 'who' }),
          el('span', { className: 'status-badge', dataset: { testid: 'rollcall-status' } }),
        ),
        el('div', { className: 'muted small times' }),
        el('div', { className: 'muted small reason', dataset: { testid: 'rollcall-reason' } }),
        form,
      );
    }
    li.dataset.status = e.status;
    li.dataset.name = e.name;
    li.querySelector('.who').textContent = e.unit ? `${e.name} · ${e.unit}` : e.name;
    const badge = li.querySelector('.status-badge');
    badge.textContent = t(`rollcall.${e.status}`);
    badge.dataset.status = e.status;
    const times = [];
    if (e.joined_at) times.push(t('rollcall.joined', { t: timeOfDay(e.joined_at) }));
    if (e.left_at) times.push(t('rollcall.left', { t: timeOfDay(e.left_at) }));
    li.querySelector('.times').textContent = times.join(' · ');
    li.querySelector('.reason').textContent = e.reason ? `${t('rollcall.reason')}: ${e.reason}` : '';
    const form = li.querySelector('form');
    form.hidden = e.status === 'present';
    const input = form.querySelector('input');
    input.placeholder = t('rollcall.reason.placeholder');
    input.setAttribute('aria-label', `${t('rollcall.reason')} – ${e.name}`);
    if (document.activeElement !== input && !input.dataset.dirty) input.value = e.reason || '';
    form.querySelector('button').textContent = t('rollcall.save');
    wanted.push(li);
  }
  syncChildren(ui.rollcall, wanted);
}

// ---------------------------------------------------------------------------------------------------------
// Chat

function chatLine(m) {
  const mine = meeting && m.from_id === meeting.selfId;
  return el(
    'li',
    { className: mine ? 'chat-line mine' : 'chat-line', dataset: { testid: 'chat-line', from: m.from_name } },
    el('time', { className: 'muted small', dateTime: m.at, text: timeOfDay(m.at) }),
    ' ',
    el('b', { text: m.from_name }),
    el('span', { text: `: ${m.text}` }),
  );
}

function renderChat() {
  if (!meeting) return;
  ui.chatList.replaceChildren(...meeting.chat.map(chatLine));
  ui.chatList.scrollTop = ui.chatList.scrollHeight;
}

function addChat(m) {
  if (!meeting || !m) return;
  meeting.chat.push(m);
  if (meeting.chat.length > 500) meeting.chat.shift();
  ui.chatList.append(chatLine(m));
  while (ui.chatList.children.length > 500) ui.chatList.firstChild.remove();
  ui.chatList.scrollTop = ui.chatList.scrollHeight;
}

function onChatSubmit(ev) {
  ev.preventDefault();
  const text = ui.chatInput.value.trim();
  if (!text || !meeting) return;
  if (send({ type: 'chat', text: text.slice(0, 1000) })) ui.chatInput.value = '';
}

// ---------------------------------------------------------------------------------------------------------
// Server messages

function onServerMessage(msg) {
  if (!meeting) return;
  // The last server messages by type (for IT staff in the console, and the browser test's diagnostics).
  meeting.trace.push(`${Date.now() % 100000} ${msg.type}${msg.type === 'error' ? ':' + msg.code : ''}`);
  if (meeting.trace.length > 60) meeting.trace.shift();
  const gen = meeting.generation;
  switch (msg.type) {
    case 'joined': {
      // Media state was reset when this socket opened (a new server session); messages that came before
      // `joined` on this socket (the server may send a subscribe_offer first) belong to it and are kept.
      meeting.selfId = msg.participant_id;
      meeting.role = msg.role || null;
      meeting.meetingInfo = msg.meeting || null;
      if (msg.room && !meeting.room) meeting.room = msg.meeting?.title || msg.room;
      meeting.canPublish = msg.can_publish !== false;
      meeting.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
      // The server's `media.simulcast`: three camera layers, or one.
      meeting.simulcast = msg.simulcast === true;
      if (FORCE_RELAY && meeting.iceServers.length === 0) showMessage('relay', 'msg.relay.none', {}, 'warn');
      // A new server session: its consumers know no tile sizes yet.
      meeting.sentSizes = new Map();
      clearMessage('conn');
      clearMessage('server');
      for (const info of msg.participants || []) {
        if (info.id === msg.participant_id && info.name && !meeting.name) meeting.name = info.name;
      }
      if (!meeting.name && meeting.token) meeting.name = nameFromToken(meeting.token) || '';
      for (const info of msg.participants || []) addParticipant(info);
      meeting.chat = [...(msg.chat || [])];
      renderChat();
      applyMeetingState(msg.state || null);
      renderAll();
      const newGen = meeting.generation;
      // Already publishing on this socket, or about to (a repeated `joined`).
      if (meeting.publishPc || meeting.publishPending) break;
      if (meeting.canPublish) {
        // The meeting first: when others publish, their subscribe_offer (sent right after `joined`) is answered
        // before this hall's own publish connection is built. Both share the page's thread and the browser's
        // WebRTC thread, and building the publish side (tracks, simulcast encoders, its offer) first made the
        // picture of the meeting wait for it. Bounded: a missing offer delays publishing at most this long.
        const othersPublish = (msg.participants || []).some((p) => p.id !== msg.participant_id && p.tracks?.length);
        const m = meeting;
        const ready = othersPublish
          ? Promise.race([m.firstAnswer, sleep(PUBLISH_AFTER_SUBSCRIBE_MAX_MS)])
          : Promise.resolve();
        m.publishPending = true;
        ready
          .then(() => {
            m.publishPending = false;
            return publish(newGen);
          })
          .catch((err) => mediaFailure('publish', err));
        openScreenPc(); // a share that was on before a rejoin
      } else renderStatus();
      break;
    }
    case 'publish_answer':
      onPublishAnswer(msg.sdp);
      break;
    case 'screen_answer':
      onScreenAnswer(msg.sdp);
      break;
    case 'subscribe_offer':
      meeting.subscribeChain = meeting.subscribeChain
        .then(() => onSubscribeOffer(msg.sdp, gen))
        .catch((err) => mediaFailure('subscribe', err));
      break;
    case 'candidate':
      if (msg.candidate) onServerCandidate(msg.leg, msg.candidate);
      break;
    case 'participant_joined':
      addParticipant(msg.participant);
      renderMain();
      break;
    case 'participant_left':
      removeParticipant(msg.participant_id);
      break;
    case 'track_published': {
      const p = meeting.participants.get(msg.participant_id);
      if (p && msg.track) {
        p.tracks.set(msg.track.id, msg.track);
        rebuildStreams(p);
      }
      break;
    }
    case 'track_unpublished':
      removeRemoteTrackById(msg.participant_id, msg.track_id);
      break;
    case 'media_state': {
      const p = meeting.participants.get(msg.participant_id);
      if (p) {
        p.mic = !!msg.mic;
        p.camera = !!msg.camera;
        renderParticipant(p);
      }
      break;
    }
    case 'connection_state':
      console.info(`giaoban: server sees ${msg.leg} connection ${msg.state}`);
      break;
    case 'meeting_state':
      applyMeetingState(msg.state);
      break;
    case 'roll_call':
      meeting.rollCall = msg.entries || [];
      renderRollCall();
      break;
    case 'chat':
      addChat(msg.message);
      break;
    case 'muted':
      // The chair stopped forwarding our microphone: show it off; switching it on again lifts the mute.
      if (meeting.local.audio) meeting.local.audio.enabled = false;
      meeting.mutedByChair = true;
      hideUnmutePrompt();
      renderControls();
      renderSelfTile();
      sendMediaState();
      showMessage('chair', 'msg.muted', { by: msg.by || '' }, 'warn');
      break;
    case 'recording_alert':
      // The recording stopped by itself (disk full); the meeting goes on.
      showMessage('recording', 'msg.recording.failed', { reason: msg.reason || '' }, 'error');
      break;
    case 'unmute_requested':
      if (meeting.local.audio && !meeting.local.audio.enabled) showUnmutePrompt();
      break;
    case 'active_speaker':
      meeting.activeSpeaker = msg.participant_id;
      renderSelfTile();
      for (const p of meeting.participants.values()) renderParticipant(p);
      break;
    case 'connection_quality':
      meeting.quality = msg;
      renderQuality();
      break;
    case 'layers':
      if (msg.source === 'camera') setCameraLayers(msg.active || [], msg.paused || []);
      break;
    case 'video_paused':
      onVideoPaused(msg.track_id, !!msg.paused);
      break;
    case 'receiving':
      meeting.receiveOnly = Array.isArray(msg.only) ? new Set(msg.only) : null;
      ui.receiveChip.hidden = !meeting.receiveOnly;
      for (const p of meeting.participants.values()) renderParticipant(p);
      break;
    case 'pong':
      break;
    case 'error':
      onServerError(msg);
      break;
    case 'bye':
      onBye(msg);
      break;
    default:
      console.warn('giaoban: unknown server message', msg);
  }
}

/** A claim of a join link's token, for showing things before `joined` (the server checks the token). */
function claimOfToken(token, claim) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))))[claim] ?? null;
  } catch {
    return null;
  }
}

/** The display name in a join link's token (only for showing it before `joined`; the server checks the token). */
function nameFromToken(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    return JSON.parse(json).name || null;
  } catch {
    return null;
  }
}

function onServerError(msg) {
  const known = `err.${msg.code}`;
  const message = t(known) !== known ? t(known) : msg.message || '';
  console.warn('giaoban: server error', msg);
  if ((msg.code === 'media' || msg.code === 'limit_exceeded') && meeting.publishWaiter) {
    meeting.publishWaiter.reject(new Error(msg.message || 'media'));
  }
  if (!meeting.selfId) {
    // Refused join (room full, locked, invalid link, …): retrying would be refused again.
    stopHere(t('msg.server.error', { code: msg.code || '?', message }));
    return;
  }
  showMessage('server', 'msg.server.error', { code: msg.code || '?', message }, 'error');
}

function onBye(msg) {
  const reason = msg.reason || '';
  // The socket closes next. With rejoin (media connection lost, server restarting) protocol.js reconnects with
  // backoff and we join again; without it (left, removed, replaced, meeting ended) the session ends here.
  if (msg.rejoin === true) {
    showMessage('server', 'msg.bye', { reason }, 'warn');
    return;
  }
  stopHere(t('msg.bye', { reason }));
}

/** End this page's session for good and say why (join form for open rooms, a rejoin card for join links). */
function stopHere(text) {
  const { room, name, token } = meeting;
  endMeeting({ leave: false });
  if (token) {
    showEnded(text);
  } else {
    showJoinForm(room, name);
    ui.formError.textContent = text;
    ui.formError.hidden = false;
  }
}

function mediaFailure(leg, err) {
  console.error(`giaoban: ${leg} negotiation failed`, err);
  showMessage('pc', 'msg.server.error', { code: leg, message: String(err?.message || err) }, 'error');
}

function onSessionStatus({ state, delayMs, everOpened }) {
  if (!meeting) return;
  if (state === 'open') {
    // A new socket is a new session at the server: start its media from scratch.
    meeting.generation += 1;
    meeting.selfId = null;
    teardownMedia();
    meeting.wsView = 'connected';
  } else if (state === 'connecting') {
    meeting.wsView = everOpened ? 'retrying' : 'connecting';
  } else if (state === 'retrying') {
    meeting.wsView = 'retrying';
    const wasJoined = meeting.selfId !== null;
    meeting.selfId = null;
    meeting.generation += 1;
    teardownMedia();
    if (wasJoined || everOpened) showMessage('conn', 'msg.dropped', {}, 'warn');
    else showMessage('conn', 'msg.unreachable', { s: Math.max(1, Math.round(delayMs / 1000)) }, 'error');
  }
  renderStatus();
  renderControls();
}

// ---------------------------------------------------------------------------------------------------------
// Join / leave

function validField(v) {
  return typeof v === 'string' && v.trim().length > 0 && [...v.trim()].length <= MAX_FIELD_CHARS;
}

function showOnly(view) {
  ui.joinView.hidden = view !== 'join';
  ui.endedView.hidden = view !== 'ended';
  ui.meetingView.hidden = view !== 'meeting';
  ui.controls.hidden = view !== 'meeting';
  ui.status.hidden = view !== 'meeting';
  ui.roomLabel.hidden = view !== 'meeting';
  if (view !== 'meeting') {
    for (const x of [ui.meetingTitle, ui.roleChip, ui.modeChip, ui.lockChip, ui.receiveChip, ui.floorBanner, ui.unmutePrompt]) {
      x.hidden = true;
    }
    delete document.body.dataset.role;
  }
  document.body.dataset.view = view;
}

/** Join `room` as `name`, or with a signed join link's `token` (then the server names the room and the hall). */
function startMeeting(room, name, token = null) {
  room = (room || '').trim();
  name = (name || '').trim();
  meeting = newMeeting(room, name, token);
  if (token && !name) meeting.name = nameFromToken(token) || '';
  clearAllMessages();
  showOnly('meeting');
  ui.sound.hidden = true;
  ui.chatList.replaceChildren();
  ui.queue.replaceChildren();
  ui.floorList.replaceChildren();
  ui.rollcall.replaceChildren();

  const self = makeTile({ name: meeting.name, self: true });
  meeting.selfTile = self;
  ui.grid.replaceChildren(self.tile);

  // Handlers first, then the socket; the camera opens once `joined` says this role publishes.
  // The pre-meeting connection test with the same link (a separate private session; see test.js).
  const testLink = document.getElementById('test-link');
  testLink.hidden = !token || !['chair', 'secretary', 'endpoint'].includes(claimOfToken(token, 'role'));
  if (token) testLink.href = `/test?token=${encodeURIComponent(token)}`;

  const session = new Session(token ? { token } : { room, name });
  meeting.session = session;
  session.addEventListener('message', (ev) => onServerMessage(ev.detail));
  session.addEventListener('status', (ev) => onSessionStatus(ev.detail));
  session.start();
  meeting.tick = setInterval(tick, 1000);
  meeting.sizeTimer = setInterval(reportVideoSizes, VIDEO_SIZE_EVERY_MS);
  renderAll();
}

function endMeeting({ leave = true } = {}) {
  if (!meeting) return;
  const m = meeting;
  m.generation += 1;
  clearInterval(m.tick);
  clearInterval(m.sizeTimer);
  m.session?.close({ leave });
  if (m.screen) {
    for (const track of m.screen.stream.getTracks()) track.stop();
    closeScreenPc(m.screen, false);
    m.screen = null;
  }
  teardownMedia();
  for (const track of m.local.stream?.getTracks() || []) track.stop();
  if (m.selfTile) m.selfTile.video.srcObject = null;
  ui.mainVideo.srcObject = null;
  ui.mainPip.srcObject = null;
  ui.stage.hidden = true;
  ui.grid.replaceChildren();
  meeting = null;
}

function showJoinForm(room = '', name = '') {
  showOnly('join');
  ui.formError.hidden = true;
  if (room) ui.room.value = room;
  if (name) ui.name.value = name;
  if (location.search) history.replaceState(null, '', '/');
  (ui.room.value ? ui.name : ui.room).focus();
}

function showEnded(text) {
  showOnly('ended');
  ui.endedText.textContent = text;
}

function leaveMeeting() {
  if (!meeting) return;
  const { room, name, token } = meeting;
  endMeeting({ leave: true });
  clearAllMessages();
  if (token) showEnded(t('msg.left'));
  else showJoinForm(room, name);
  showMessage('left', 'msg.left', {}, 'info');
}

function onJoinSubmit(ev) {
  ev.preventDefault();
  const room = ui.room.value;
  const name = ui.name.value;
  if (!validField(room) || !validField(name)) {
    ui.formError.textContent = t('form.invalid');
    ui.formError.hidden = false;
    return;
  }
  // Keep the join link in the address bar: a reload (e.g. on a wall screen) joins again.
  const params = new URLSearchParams({ room: room.trim(), name: name.trim() });
  history.replaceState(null, '', `/?${params}`);
  startMeeting(room, name);
}

function init() {
  document.documentElement.lang = getLang();
  applyI18n(document);
  onLangChange(() => {
    applyI18n(document);
    for (const entry of messages.values()) renderMessage(entry);
    if (!ui.formError.hidden && !meeting) ui.formError.textContent = t('form.invalid');
    if (meeting) {
      for (const p of meeting.participants.values()) delete p.view.actions.dataset.key;
      renderChat();
    }
    renderAll();
  });
  ui.lang.addEventListener('click', toggleLang);
  ui.form.addEventListener('submit', onJoinSubmit);
  ui.mic.addEventListener('click', () => toggleTrack('audio'));
  ui.camera.addEventListener('click', () => toggleTrack('video'));
  ui.leave.addEventListener('click', leaveMeeting);
  ui.hand.addEventListener('click', () => {
    if (!meeting) return;
    const raised = meeting.state?.queue?.some((q) => q.participant_id === meeting.selfId);
    send({ type: raised ? 'lower_hand' : 'raise_hand' });
  });
  ui.share.addEventListener('click', () => {
    if (meeting?.screen) stopScreenShare();
    else startScreenShare();
  });
  ui.modeSelect.addEventListener('change', () => send({ type: 'set_mode', mode: ui.modeSelect.value }));
  ui.muteAll.addEventListener('click', () => send({ type: 'mute_all' }));
  ui.lock.addEventListener('click', () => send({ type: 'lock', locked: !meeting?.state?.locked }));
  ui.record.addEventListener('click', () =>
    send({ type: meeting?.state?.recording ? 'stop_recording' : 'start_recording' }));
  ui.end.addEventListener('click', () => {
    if (window.confirm(t('confirm.end'))) send({ type: 'end_meeting' });
  });
  ui.unmuteAccept.addEventListener('click', () => setMic(true));
  ui.unmuteDismiss.addEventListener('click', hideUnmutePrompt);
  ui.chatForm.addEventListener('submit', onChatSubmit);
  ui.rejoin.addEventListener('click', () => location.reload());
  ui.sound.addEventListener('click', () => {
    for (const media of document.querySelectorAll('video[data-participant]:not(#main-video), audio')) {
      media.muted = false;
      media.play().catch(() => {});
    }
    ui.sound.hidden = true;
  });
  window.addEventListener('pagehide', () => meeting?.session?.close({ leave: true }));

  const params = new URLSearchParams(location.search);
  const room = params.get('room');
  const name = params.get('name');
  const token = params.get('token');
  if (token) startMeeting(room, name, token);
  else if (validField(room) && validField(name)) startMeeting(room, name);
  else showJoinForm(room || '', name || '');
}

// A small hook for tests and for IT staff in the console. It reports state; the browser test checks real
// media (getStats, pixels) through the connections it hands out.
window.giaoban = {
  state() {
    if (!meeting) return { view: document.body.dataset.view || 'join', lang: getLang() };
    return {
      view: 'meeting',
      lang: getLang(),
      room: meeting.room,
      name: meeting.name,
      selfId: meeting.selfId,
      role: meeting.role,
      meeting: meeting.meetingInfo,
      canPublish: meeting.canPublish,
      joined: meeting.selfId !== null,
      ws: meeting.session?.state ?? null,
      publish: meeting.publishPc?.connectionState ?? null,
      screen: meeting.screen?.pc?.connectionState ?? null,
      subscribe: meeting.subscribePc?.connectionState ?? null,
      local: {
        audio: !!meeting.local.audio,
        video: !!meeting.local.video,
        mic: !!meeting.local.audio?.enabled,
        camera: !!meeting.local.video?.enabled,
      },
      meetingState: meeting.state,
      holdsFloor: meeting.holdsFloor,
      mutedByChair: meeting.mutedByChair,
      sharing: !!meeting.screen,
    };
  },
  participants() {
    if (!meeting) return [];
    return [...meeting.participants.values()].map((p) => ({
      id: p.id,
      name: p.name,
      role: p.role,
      mic: p.mic,
      camera: p.camera,
      tracks: [...p.tracks.values()],
      receiving: [...p.received.entries()].map(([id, tr]) => ({ kind: tr.kind, id })),
    }));
  },
  /** mid of the subscribe connection → {participantId, trackId}. */
  midMap: () => (meeting ? Object.fromEntries(meeting.midMap) : {}),
  trace: () => (meeting ? [...meeting.trace] : []),
  publishPc: () => meeting?.publishPc ?? null,
  screenPc: () => meeting?.screen?.pc ?? null,
  subscribePc: () => meeting?.subscribePc ?? null,
};

init();
