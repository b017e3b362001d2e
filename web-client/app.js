// The giaoban browser client: join form, meeting grid, publish and subscribe RTCPeerConnections.
// The control protocol is in docs/protocol.md; the WebSocket session (retry, keep-alive) is protocol.js.

import { Session } from './protocol.js';
import { t, applyI18n, toggleLang, onLangChange, getLang } from './i18n.js';

const MAX_FIELD_CHARS = 64;

const $ = (id) => document.getElementById(id);
const ui = {
  joinView: $('join-view'),
  form: $('join-form'),
  room: $('room'),
  name: $('name'),
  formError: $('form-error'),
  meetingView: $('meeting-view'),
  grid: $('grid'),
  empty: $('empty'),
  controls: $('controls'),
  mic: $('btn-mic'),
  camera: $('btn-camera'),
  sound: $('btn-sound'),
  leave: $('btn-leave'),
  count: $('count'),
  lang: $('lang'),
  status: $('status'),
  roomLabel: $('room-label'),
  messages: $('messages'),
  statusWs: $('status-ws'),
  statusPublish: $('status-publish'),
  statusSubscribe: $('status-subscribe'),
};

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
    /** Bumped on every (re)join and on leave: async work of an older generation stops quietly. */
    generation: 0,
    local: { stream: null, audio: null, video: null },
    mediaReady: null,
    publishPc: null,
    subscribePc: null,
    subscribeChain: Promise.resolve(),
    pendingCandidates: { publish: [], subscribe: [] },
    /** mid of the subscribe connection → {participantId, trackId}, from the offer's a=msid lines. */
    midMap: new Map(),
    /** participant id → remote participant (see addParticipant). */
    participants: new Map(),
    wsView: 'connecting',
    selfTile: null,
  };
}

/** Server-side track id of each received MediaStreamTrack. */
const remoteTrackIds = new WeakMap();

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
  const localKnown = meeting.mediaSettled === true;
  const wsOk = meeting.wsView === 'connected';
  const views = {
    ws: meeting.wsView,
    publish: !wsOk ? meeting.wsView : pcView(meeting.publishPc, !localKnown || hasLocal),
    // The server offers the subscribe connection once there is something to receive.
    subscribe: !wsOk ? meeting.wsView : meeting.subscribePc ? pcView(meeting.subscribePc) : 'idle',
  };
  if (views.subscribe === 'idle' && meeting.participants.size > 0) views.subscribe = 'connecting';
  setPill(ui.statusWs, views.ws);
  setPill(ui.statusPublish, views.publish);
  setPill(ui.statusSubscribe, views.subscribe);
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
  tile.append(video, novideo, label);
  return { tile, video, novideo, novideoText, nameEl, mic, cam };
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
}

function renderParticipant(p) {
  const stream = p.stream;
  renderTile(p.view, {
    name: p.name,
    self: false,
    mic: p.mic,
    camera: p.camera,
    hasVideo: stream.getVideoTracks().length > 0,
    hasAudio: stream.getAudioTracks().length > 0,
  });
}

function renderCount() {
  if (!meeting) return;
  const n = meeting.participants.size + 1;
  ui.count.textContent = t('meeting.count', { n });
  ui.empty.hidden = meeting.participants.size > 0;
  ui.grid.dataset.count = String(n);
}

function renderControls() {
  if (!meeting) return;
  const { audio, video } = meeting.local;
  ui.mic.disabled = !audio;
  ui.mic.textContent = t(!audio ? 'btn.mic.none' : audio.enabled ? 'btn.mic.on' : 'btn.mic.off');
  ui.mic.setAttribute('aria-pressed', String(!!audio && audio.enabled));
  ui.mic.dataset.on = String(!!audio && audio.enabled);
  ui.camera.disabled = !video;
  ui.camera.textContent = t(!video ? 'btn.camera.none' : video.enabled ? 'btn.camera.on' : 'btn.camera.off');
  ui.camera.setAttribute('aria-pressed', String(!!video && video.enabled));
  ui.camera.dataset.on = String(!!video && video.enabled);
}

function renderAll() {
  if (!meeting) return;
  ui.roomLabel.textContent = t('meeting.room', { room: meeting.room });
  renderStatus();
  renderControls();
  renderSelfTile();
  for (const p of meeting.participants.values()) renderParticipant(p);
  renderCount();
}

/** Play a remote video; if the browser blocks sound without a user gesture, play muted and offer a button. */
function playVideo(video) {
  const attempt = video.play();
  if (!attempt) return;
  attempt.catch((err) => {
    if (err.name !== 'NotAllowedError' || video.dataset.self) return;
    video.muted = true;
    video.play().catch(() => {});
    ui.sound.hidden = false;
  });
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
      mic: true,
      camera: true,
      tracks: new Map(),
      stream: new MediaStream(),
      view,
      keyframeTimer: null,
    };
    view.tile.dataset.participantId = info.id;
    // srcObject is set once the stream has a track: a <video> on an empty stream delays the page's load event.
    meeting.participants.set(info.id, p);
    ui.grid.append(view.tile);
  } else if (info.name && info.name !== p.name) {
    p.name = info.name;
    p.view.video.dataset.participant = info.name;
  }
  if (typeof info.mic === 'boolean') p.mic = info.mic;
  if (typeof info.camera === 'boolean') p.camera = info.camera;
  for (const track of info.tracks || []) p.tracks.set(track.id, track);
  renderParticipant(p);
  renderCount();
  renderStatus();
  return p;
}

function removeParticipant(id) {
  const p = meeting?.participants.get(id);
  if (!p) return;
  clearTimeout(p.keyframeTimer);
  for (const track of p.stream.getTracks()) p.stream.removeTrack(track);
  p.view.video.srcObject = null;
  p.view.tile.remove();
  meeting.participants.delete(id);
  renderCount();
  renderStatus();
}

function clearParticipants() {
  if (!meeting) return;
  for (const id of [...meeting.participants.keys()]) removeParticipant(id);
}

function attachRemoteTrack(participantId, track, trackId) {
  const p = meeting.participants.get(participantId) || addParticipant({ id: participantId, name: participantId });
  if (!p) return;
  remoteTrackIds.set(track, trackId);
  // A receiver's track object belongs to its m-line; if the server reuses the m-line for someone else, the
  // track moves: take it out of any other participant's stream first.
  for (const other of meeting.participants.values()) {
    if (other !== p && other.stream.getTracks().includes(track)) detachRemoteTrack(other, track);
  }
  for (const old of p.stream.getTracks()) {
    if (old === track) return;
    // A participant has one track of each kind: a newer one replaces an older (e.g. after re-publishing).
    if (old.kind === track.kind || remoteTrackIds.get(old) === trackId) p.stream.removeTrack(old);
  }
  p.stream.addTrack(track);
  track.addEventListener('ended', () => detachRemoteTrack(p, track));
  // Re-attach so every browser picks up the changed track set, then play.
  p.view.video.srcObject = null;
  p.view.video.srcObject = p.stream;
  playVideo(p.view.video);
  renderParticipant(p);
  if (track.kind === 'video') watchFirstFrame(p, track, trackId);
}

function detachRemoteTrack(p, track) {
  if (!p.stream.getTracks().includes(track)) return;
  p.stream.removeTrack(track);
  if (p.stream.getTracks().length === 0) p.view.video.srcObject = null;
  renderParticipant(p);
}

function removeRemoteTrackById(participantId, trackId) {
  const p = meeting?.participants.get(participantId);
  if (!p) return;
  p.tracks.delete(trackId);
  for (const track of p.stream.getTracks()) {
    if (remoteTrackIds.get(track) === trackId) p.stream.removeTrack(track);
  }
  if (p.stream.getTracks().length === 0) p.view.video.srcObject = null;
  renderParticipant(p);
}

/** If no picture arrives soon, ask the publisher for a keyframe (a few times; the server throttles). */
function watchFirstFrame(p, track, trackId, tries = 0) {
  clearTimeout(p.keyframeTimer);
  if (tries >= 3) return;
  const gen = meeting.generation;
  p.keyframeTimer = setTimeout(() => {
    if (!meeting || meeting.generation !== gen || !p.stream.getTracks().includes(track)) return;
    if (p.view.video.videoWidth > 0) return;
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
  const video = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 20, max: 30 } };
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

function sendMediaState() {
  if (!meeting || !meeting.selfId) return;
  const { audio, video } = meeting.local;
  meeting.session.send({
    type: 'media_state',
    mic: !!audio && audio.enabled,
    camera: !!video && video.enabled,
  });
}

function toggleTrack(kind) {
  if (!meeting) return;
  const track = meeting.local[kind];
  if (!track) return;
  track.enabled = !track.enabled;
  if (kind === 'audio' && track.enabled) clearMessage('chair');
  renderControls();
  renderSelfTile();
  sendMediaState();
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

function watchPc(pc, leg) {
  const gen = meeting.generation;
  pc.onicecandidate = (ev) => {
    if (meeting && meeting.generation === gen) sendCandidate(leg, ev.candidate);
  };
  pc.onconnectionstatechange = () => {
    if (!meeting || meeting.generation !== gen) return;
    renderStatus();
    if (pc.connectionState === 'connected') clearMessage('pc');
    if (pc.connectionState === 'failed') {
      // The server drops a participant whose connections fail: join again from scratch.
      console.warn(`giaoban: ${leg} connection failed, rejoining`);
      showMessage('pc', 'msg.pc.failed', {}, 'warn');
      meeting.session.reconnect();
    }
  };
}

async function publish(gen) {
  const local = await meeting.mediaReady;
  if (!meeting || meeting.generation !== gen) return;
  sendMediaState();
  const tracks = meeting.canPublish === false ? [] : [local.audio, local.video].filter(Boolean);
  if (tracks.length === 0) {
    renderStatus();
    return; // receive-only
  }
  const pc = new RTCPeerConnection();
  meeting.publishPc = pc;
  watchPc(pc, 'publish');
  for (const track of tracks) pc.addTransceiver(track, { direction: 'sendonly', streams: [local.stream] });
  renderStatus();
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (!meeting || meeting.generation !== gen) return;
  meeting.session.send({ type: 'publish_offer', sdp: pc.localDescription.sdp });
}

async function onPublishAnswer(sdp, gen) {
  const pc = meeting.publishPc;
  if (!pc || meeting.generation !== gen) return;
  await pc.setRemoteDescription({ type: 'answer', sdp });
  await flushCandidates('publish', pc);
}

function ensureSubscribePc() {
  if (meeting.subscribePc) return meeting.subscribePc;
  const pc = new RTCPeerConnection();
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
      stream.addEventListener('removetrack', (e) => {
        const p = meeting?.participants.get(participantId);
        if (p) detachRemoteTrack(p, e.track);
      });
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
}

async function onServerCandidate(leg, candidate) {
  const pc = leg === 'publish' ? meeting.publishPc : meeting.subscribePc;
  if (!pc || !pc.remoteDescription) {
    meeting.pendingCandidates[leg]?.push(candidate);
    return;
  }
  await pc.addIceCandidate(candidate).catch((err) => console.warn('giaoban: addIceCandidate', err));
}

async function flushCandidates(leg, pc) {
  const pending = meeting.pendingCandidates[leg].splice(0);
  for (const c of pending) {
    await pc.addIceCandidate(c).catch((err) => console.warn('giaoban: addIceCandidate', err));
  }
}

/** Close both connections and forget remote participants (before a rejoin, or on leave). */
function teardownMedia() {
  if (!meeting) return;
  for (const pc of [meeting.publishPc, meeting.subscribePc]) {
    if (!pc) continue;
    pc.onicecandidate = pc.onconnectionstatechange = pc.ontrack = null;
    pc.close();
  }
  meeting.publishPc = null;
  meeting.subscribePc = null;
  meeting.subscribeChain = Promise.resolve();
  meeting.pendingCandidates = { publish: [], subscribe: [] };
  meeting.midMap.clear();
  clearParticipants();
}

// ---------------------------------------------------------------------------------------------------------
// Server messages

function onServerMessage(msg) {
  if (!meeting) return;
  const gen = meeting.generation;
  switch (msg.type) {
    case 'joined': {
      meeting.generation += 1;
      teardownMedia();
      meeting.selfId = msg.participant_id;
      if (msg.room && !meeting.room) meeting.room = msg.meeting?.title || msg.room;
      meeting.canPublish = msg.can_publish !== false;
      clearMessage('conn');
      clearMessage('server');
      for (const info of msg.participants || []) {
        if (info.id === msg.participant_id && info.name && !meeting.name) meeting.name = info.name;
        addParticipant(info);
      }
      renderAll();
      const newGen = meeting.generation;
      publish(newGen).catch((err) => mediaFailure('publish', err));
      break;
    }
    case 'publish_answer':
      onPublishAnswer(msg.sdp, gen).catch((err) => mediaFailure('publish', err));
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
      break;
    case 'participant_left':
      removeParticipant(msg.participant_id);
      break;
    case 'track_published': {
      const p = meeting.participants.get(msg.participant_id);
      if (p && msg.track) p.tracks.set(msg.track.id, msg.track);
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
    case 'muted':
      // The chair stopped forwarding our microphone: show it off; switching it on again lifts the mute.
      if (meeting.local.audio) meeting.local.audio.enabled = false;
      renderControls();
      renderSelfTile();
      sendMediaState();
      showMessage('chair', 'msg.muted', { by: msg.by || '' }, 'warn');
      break;
    case 'unmute_requested':
      showMessage('chair', 'msg.unmute_requested', { by: msg.by || '' }, 'info');
      break;
    case 'pong':
    case 'meeting_state':
    case 'roll_call':
    case 'chat':
      // Not shown by this client (yet).
      break;
    case 'error':
      onServerError(msg);
      break;
    case 'bye':
      onBye(msg.reason || '');
      break;
    default:
      console.warn('giaoban: unknown server message', msg);
  }
}

function onServerError(msg) {
  const known = `err.${msg.code}`;
  const message = t(known) !== known ? t(known) : msg.message || '';
  console.warn('giaoban: server error', msg);
  if (!meeting.selfId) {
    // Refused join (room full, invalid name, …): retrying would be refused again. Back to the form.
    const room = meeting.room;
    const name = meeting.name;
    endMeeting({ leave: false });
    showJoinForm(room, name);
  }
  showMessage('server', 'msg.server.error', { code: msg.code || '?', message }, 'error');
}

function onBye(reason) {
  showMessage('server', 'msg.bye', { reason }, 'warn');
  // The socket closes next. When the session ended for a passing reason (server restarting, media connection
  // lost), protocol.js reconnects with backoff and we join again. When this hall was sent away on purpose
  // (removed, room closed or locked), the meeting ends here.
  if (!/\b(remov|kick|ban|room closed|closed the room|ended|locked)/i.test(reason)) return;
  const room = meeting.room;
  const name = meeting.name;
  endMeeting({ leave: false });
  showJoinForm(room, name);
  showMessage('server', 'msg.bye', { reason }, 'warn');
}

function mediaFailure(leg, err) {
  console.error(`giaoban: ${leg} negotiation failed`, err);
  showMessage('pc', 'msg.server.error', { code: leg, message: String(err?.message || err) }, 'error');
}

function onSessionStatus({ state, delayMs, everOpened }) {
  if (!meeting) return;
  if (state === 'open') {
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
}

// ---------------------------------------------------------------------------------------------------------
// Join / leave

function validField(v) {
  return typeof v === 'string' && v.trim().length > 0 && [...v.trim()].length <= MAX_FIELD_CHARS;
}

/** Join `room` as `name`, or with a signed join link's `token` (then the server names the room and the hall). */
function startMeeting(room, name, token = null) {
  room = (room || '').trim();
  name = (name || '').trim();
  meeting = newMeeting(room, name, token);
  clearAllMessages();
  ui.joinView.hidden = true;
  ui.meetingView.hidden = false;
  ui.controls.hidden = false;
  ui.status.hidden = false;
  ui.roomLabel.hidden = false;
  ui.sound.hidden = true;
  document.body.dataset.view = 'meeting';

  const self = makeTile({ name, self: true });
  meeting.selfTile = self;
  ui.grid.replaceChildren(self.tile);

  // Handlers first, then the socket, and only then wait for the camera: no early message is lost.
  const session = new Session(token ? { token } : { room, name });
  meeting.session = session;
  session.addEventListener('message', (ev) => onServerMessage(ev.detail));
  session.addEventListener('status', (ev) => onSessionStatus(ev.detail));
  session.start();

  const m = meeting;
  m.mediaReady = acquireMedia().then((local) => {
    if (meeting !== m) {
      for (const track of local.stream.getTracks()) track.stop();
      return local;
    }
    m.local = local;
    m.mediaSettled = true;
    if (local.stream.getTracks().length > 0) {
      self.video.srcObject = local.stream;
      playVideo(self.video);
    }
    renderAll();
    return local;
  });
  renderAll();
}

function endMeeting({ leave = true } = {}) {
  if (!meeting) return;
  const m = meeting;
  m.generation += 1;
  m.session?.close({ leave });
  teardownMedia();
  for (const track of m.local.stream?.getTracks() || []) track.stop();
  if (m.selfTile) m.selfTile.video.srcObject = null;
  ui.grid.replaceChildren();
  meeting = null;
}

function showJoinForm(room = '', name = '') {
  ui.meetingView.hidden = true;
  ui.controls.hidden = true;
  ui.status.hidden = true;
  ui.roomLabel.hidden = true;
  ui.joinView.hidden = false;
  ui.formError.hidden = true;
  document.body.dataset.view = 'join';
  if (room) ui.room.value = room;
  if (name) ui.name.value = name;
  if (location.search) history.replaceState(null, '', '/');
  (ui.room.value ? ui.name : ui.room).focus();
}

function leaveMeeting() {
  if (!meeting) return;
  const { room, name } = meeting;
  endMeeting({ leave: true });
  clearAllMessages();
  showJoinForm(room, name);
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
    if (!ui.formError.hidden) ui.formError.textContent = t('form.invalid');
    renderAll();
  });
  ui.lang.addEventListener('click', toggleLang);
  ui.form.addEventListener('submit', onJoinSubmit);
  ui.mic.addEventListener('click', () => toggleTrack('audio'));
  ui.camera.addEventListener('click', () => toggleTrack('video'));
  ui.leave.addEventListener('click', leaveMeeting);
  ui.sound.addEventListener('click', () => {
    for (const video of ui.grid.querySelectorAll('video[data-participant]')) {
      video.muted = false;
      video.play().catch(() => {});
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
    if (!meeting) return { view: 'join', lang: getLang() };
    return {
      view: 'meeting',
      lang: getLang(),
      room: meeting.room,
      name: meeting.name,
      selfId: meeting.selfId,
      joined: meeting.selfId !== null,
      ws: meeting.session?.state ?? null,
      publish: meeting.publishPc?.connectionState ?? null,
      subscribe: meeting.subscribePc?.connectionState ?? null,
      local: {
        audio: !!meeting.local.audio,
        video: !!meeting.local.video,
        mic: !!meeting.local.audio?.enabled,
        camera: !!meeting.local.video?.enabled,
      },
    };
  },
  participants() {
    if (!meeting) return [];
    return [...meeting.participants.values()].map((p) => ({
      id: p.id,
      name: p.name,
      mic: p.mic,
      camera: p.camera,
      tracks: [...p.tracks.keys()],
      receiving: p.stream.getTracks().map((tr) => ({ kind: tr.kind, id: remoteTrackIds.get(tr) ?? tr.id })),
    }));
  },
  publishPc: () => meeting?.publishPc ?? null,
  subscribePc: () => meeting?.subscribePc ?? null,
};

init();
