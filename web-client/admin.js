// The admin page (/admin?token=…): halls (endpoints), meetings, join links, attendance reports and the audit log,
// through the HTTP API in docs/protocol.md with the admin token from the page's own address.

import { t, applyI18n, toggleLang, onLangChange, getLang } from './i18n.js';

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get('token') || '';

const data = { endpoints: [], meetings: [], selected: null, links: null, attendance: null, audit: null, recordings: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

const withToken = (path) => `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;

async function api(path, { method = 'GET', body } = {}) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  let json = null;
  try {
    json = await res.json();
  } catch {
    // not JSON
  }
  if (!res.ok) throw new Error(json?.error || `HTTP ${res.status}`);
  return json;
}

// ----------------------------------------------------------------------------------------------------- messages

function showMessage(key, params = {}, kind = 'error') {
  const box = $('messages');
  const text = el('span', { className: 'message-text', text: t(key, params) });
  const close = el('button', { type: 'button', className: 'message-close', text: '×', title: t('msg.close') });
  const msg = el('div', { className: 'message', dataset: { testid: 'message', kind, key } }, text, close);
  close.addEventListener('click', () => msg.remove());
  box.replaceChildren(msg);
  if (kind !== 'error') setTimeout(() => msg.remove(), 4000);
}

const fail = (err) => showMessage('admin.error', { message: err.message || String(err) }, 'error');

// ----------------------------------------------------------------------------------------------------- formatting

function when(rfc3339) {
  if (!rfc3339) return '';
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return rfc3339;
  return d.toLocaleString(getLang() === 'vi' ? 'vi-VN' : 'en-GB', { dateStyle: 'short', timeStyle: 'short' });
}

const endpointName = (id) => data.endpoints.find((e) => e.id === id)?.name ?? id;

function table(headers, rows, testid) {
  if (rows.length === 0) return el('p', { className: 'note', text: t('admin.empty') });
  return el(
    'table',
    {},
    el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', { text: h })))),
    el('tbody', {}, ...rows.map((cells) => el('tr', { dataset: { testid } }, ...cells.map((c) => el('td', { text: c ?? '' }))))),
  );
}

// ----------------------------------------------------------------------------------------------------- rendering

function renderEndpoints() {
  $('endpoints').replaceChildren(
    ...data.endpoints.map((e) =>
      el(
        'tr',
        { dataset: { testid: 'endpoint-row', endpointId: e.id } },
        el('td', { text: e.name }),
        el('td', { text: e.unit }),
        el('td', { className: 'muted small', text: e.id }),
      ),
    ),
  );
  if (data.endpoints.length === 0) {
    $('endpoints').append(el('tr', {}, el('td', { colSpan: 3, className: 'note', text: t('admin.empty') })));
  }
  // The meeting form's host selector and invitation checkboxes.
  const host = $('meeting-host');
  const chosenHost = host.value;
  host.replaceChildren(
    el('option', { value: '', text: t('admin.m.host.none') }),
    ...data.endpoints.map((e) => el('option', { value: e.id, text: e.unit ? `${e.name} (${e.unit})` : e.name })),
  );
  host.value = chosenHost;
  const invited = $('meeting-invited');
  const checked = new Set([...invited.querySelectorAll('input:checked')].map((i) => i.value));
  invited.replaceChildren(
    ...data.endpoints.map((e) =>
      el(
        'label',
        {},
        el('input', { type: 'checkbox', value: e.id, checked: checked.has(e.id), dataset: { testid: 'invite' } }),
        el('span', { text: e.name }),
      ),
    ),
  );
}

function renderMeetings() {
  const rows = data.meetings.map((m) =>
    el(
      'tr',
      { dataset: { testid: 'meeting-row', meetingId: m.id }, className: data.selected === m.id ? 'selected' : '' },
      el('td', { text: m.title }),
      el('td', { text: when(m.starts_at) }),
      el('td', { text: t(`mode.${m.mode}`) }),
      el('td', { text: t(`admin.status.${m.status}`) !== `admin.status.${m.status}` ? t(`admin.status.${m.status}`) : m.status }),
      el(
        'td',
        {},
        el('button', {
          type: 'button',
          text: t('admin.m.open'),
          dataset: { testid: 'meeting-open' },
          onclick: () => openMeeting(m.id),
        }),
      ),
    ),
  );
  $('meetings').replaceChildren(...rows);
  if (rows.length === 0) $('meetings').append(el('tr', {}, el('td', { colSpan: 5, className: 'note', text: t('admin.empty') })));
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on a LAN): the old way.
    const area = el('textarea', { value: text });
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  button.textContent = t('admin.link.copied');
  setTimeout(() => {
    button.textContent = t('admin.link.copy');
  }, 1500);
}

function renderDetail() {
  const m = data.meetings.find((x) => x.id === data.selected);
  $('detail').hidden = !m;
  if (!m) return;
  const host = m.host_endpoint_id ? ` · ${t('admin.m.host')}: ${endpointName(m.host_endpoint_id)}` : '';
  $('detail-title').textContent = `${m.title} – ${when(m.starts_at)} · ${t(`mode.${m.mode}`)}${host}`;
  $('links-csv').href = withToken(`/api/admin/meetings/${encodeURIComponent(m.id)}/links?format=csv`);
  $('attendance-csv').href = withToken(`/api/meetings/${encodeURIComponent(m.id)}/attendance.csv`);
  $('links').replaceChildren(
    ...(data.links || []).map((l) => {
      const copyBtn = el('button', { type: 'button', text: t('admin.link.copy'), dataset: { testid: 'link-copy' } });
      copyBtn.addEventListener('click', () => copy(l.url, copyBtn));
      return el(
        'tr',
        { dataset: { testid: 'link-row', role: l.role } },
        el('td', { text: t(`role.${l.role}`) }),
        el('td', { text: l.name }),
        el('td', { text: l.unit }),
        el(
          'td',
          { className: 'row' },
          copyBtn,
          el('a', { href: l.url, target: '_blank', rel: 'noopener', text: t('admin.link.open'), dataset: { testid: 'link-open' } }),
          // The same token opens the pre-meeting connection test (publishing roles only).
          ['chair', 'secretary', 'endpoint'].includes(l.role)
            ? el('a', { href: l.url.replace('/?token=', '/test?token='), target: '_blank', rel: 'noopener', text: t('test.link'), dataset: { testid: 'link-test' } })
            : null,
        ),
      );
    }),
  );
  renderAttendance();
  renderAudit();
}

function renderAttendance() {
  const box = $('attendance');
  const a = data.attendance;
  if (!a) {
    box.replaceChildren();
    return;
  }
  const status = new Map((a.roll_call || []).map((r) => [r.endpoint_id, r]));
  const invited = table(
    [t('admin.ep.name'), t('admin.ep.unit'), t('admin.m.status'), t('rollcall.reason'), t('admin.session.joined'), t('admin.session.left')],
    (a.invitations || []).map((i) => {
      const live = status.get(i.endpoint.id);
      const st = live?.status ?? (i.first_joined_at ? 'absent' : i.absence_reason ? 'absent_with_reason' : 'absent');
      // Present now, else whether the hall attended at all, else absent (with the reason if one was recorded).
      const shown =
        st === 'present' ? t('rollcall.present') : i.first_joined_at ? t('admin.attended') : t(`rollcall.${st}`);
      return [i.endpoint.name, i.endpoint.unit, shown, live?.reason ?? i.absence_reason ?? '', when(i.first_joined_at), when(i.last_left_at)];
    }),
    'attendance-row',
  );
  const sessions = table(
    [t('admin.ep.name'), t('admin.link.role'), t('admin.session.joined'), t('admin.session.left')],
    (a.sessions || []).map((s) => [s.name, t(`role.${s.role}`) !== `role.${s.role}` ? t(`role.${s.role}`) : s.role, when(s.joined_at), when(s.left_at)]),
    'session-row',
  );
  box.replaceChildren(invited, el('h4', { text: t('admin.session.joined') + ' / ' + t('admin.session.left') }), sessions);
}

function renderAudit() {
  const box = $('audit');
  if (!data.audit) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(
    table(
      [t('admin.audit.at'), t('admin.audit.actor'), t('admin.link.role'), t('admin.audit.action'), t('admin.audit.detail'), t('admin.audit.outcome')],
      data.audit.map((e) => [
        when(e.at),
        data.endpoints.some((x) => x.id === e.actor) ? `${endpointName(e.actor)} (${e.actor})` : e.actor,
        e.role ? (t(`role.${e.role}`) !== `role.${e.role}` ? t(`role.${e.role}`) : e.role) : '',
        e.action,
        e.detail,
        e.outcome,
      ]),
      'audit-row',
    ),
  );
}

const kb = (bytes) => `${Math.max(1, Math.round((bytes || 0) / 1024))} kB`;

/** Stored recordings (newest first), each with its files as download links. */
function renderRecordings() {
  const box = $('recordings');
  const list = data.recordings?.recordings;
  if (!list) {
    box.replaceChildren();
    return;
  }
  if (list.length === 0) {
    box.replaceChildren(el('p', { className: 'note', text: t('admin.empty') }));
    return;
  }
  const now = new Set(data.recordings.recording_now || []);
  const rows = list.map((r) => {
    const m = r.manifest || {};
    const title = data.meetings.find((x) => x.id === r.meeting_id)?.title ?? m.meeting?.title ?? r.meeting_id;
    const status = now.has(r.meeting_id) && m.status === 'recording' ? 'recording' : m.status || 'unknown';
    const names = new Map((m.files || []).map((f) => [f.file, f]));
    const links = r.files.map((f) => {
      const who = names.get(f.name);
      const label = who ? `${who.name ?? who.participant_id} · ${t(`admin.rec.kind.${who.kind}`)}` : f.name;
      return el('a', {
        href: withToken(`/api/admin/recordings/${encodeURIComponent(r.meeting_id)}/${encodeURIComponent(r.started)}/${encodeURIComponent(f.name)}`),
        download: f.name,
        text: `${label} (${kb(f.bytes)})`,
        dataset: { testid: 'recording-file' },
      });
    });
    return el(
      'tr',
      { dataset: { testid: 'recording-row', status } },
      el('td', { text: title }),
      el('td', { text: when(m.started_at) || r.started }),
      el('td', { text: when(m.stopped_at) }),
      el('td', { text: t(`admin.rec.status.${status}`) + (m.error ? ` – ${m.error}` : '') }),
      el('td', { className: 'files' }, ...links.flatMap((a) => [a, el('br')])),
    );
  });
  box.replaceChildren(
    el(
      'table',
      {},
      el(
        'thead',
        {},
        el('tr', {}, ...['admin.rec.meeting', 'admin.rec.started', 'admin.rec.stopped', 'admin.m.status', 'admin.rec.files'].map((k) => el('th', { text: t(k) }))),
      ),
      el('tbody', {}, ...rows),
    ),
  );
}

function renderAll() {
  renderEndpoints();
  renderMeetings();
  renderDetail();
  renderRecordings();
}

// ----------------------------------------------------------------------------------------------------- actions

async function loadEndpoints() {
  data.endpoints = (await api('/api/admin/endpoints')).endpoints || [];
  renderEndpoints();
}

async function loadMeetings() {
  data.meetings = (await api('/api/admin/meetings')).meetings || [];
  renderMeetings();
  renderDetail();
}

async function openMeeting(id) {
  data.selected = id;
  data.links = null;
  data.attendance = null;
  data.audit = null;
  renderMeetings();
  renderDetail();
  try {
    data.links = (await api(`/api/admin/meetings/${encodeURIComponent(id)}/links`)).links || [];
    renderDetail();
    $('detail').scrollIntoView({ block: 'start' });
  } catch (err) {
    fail(err);
  }
}

async function onEndpointSubmit(ev) {
  ev.preventDefault();
  const name = $('endpoint-name').value.trim();
  const unit = $('endpoint-unit').value.trim();
  if (!name) return;
  try {
    await api('/api/admin/endpoints', { method: 'POST', body: { name, unit } });
    $('endpoint-name').value = '';
    $('endpoint-unit').value = '';
    showMessage('admin.saved', {}, 'info');
    await loadEndpoints();
  } catch (err) {
    fail(err);
  }
}

async function onMeetingSubmit(ev) {
  ev.preventDefault();
  const title = $('meeting-title').value.trim();
  const time = $('meeting-time').value;
  const when = time ? new Date(time) : new Date();
  const host = $('meeting-host').value || null;
  const invited = [...$('meeting-invited').querySelectorAll('input:checked')].map((i) => i.value).filter((id) => id !== host);
  if (!title) return;
  try {
    const m = await api('/api/admin/meetings', {
      method: 'POST',
      body: {
        title,
        starts_at: when.toISOString(),
        mode: $('meeting-mode').value,
        host_endpoint_id: host,
        invited_endpoint_ids: invited,
      },
    });
    $('meeting-title').value = '';
    showMessage('admin.saved', {}, 'info');
    await loadMeetings();
    if (m?.id) await openMeeting(m.id);
  } catch (err) {
    fail(err);
  }
}

async function showAttendance() {
  if (!data.selected) return;
  try {
    data.attendance = await api(`/api/meetings/${encodeURIComponent(data.selected)}/attendance`);
    renderAttendance();
  } catch (err) {
    fail(err);
  }
}

async function showAudit() {
  if (!data.selected) return;
  try {
    data.audit = (await api(`/api/admin/audit?meeting=${encodeURIComponent(data.selected)}&limit=200`)).entries || [];
    renderAudit();
  } catch (err) {
    fail(err);
  }
}

async function loadRecordings() {
  try {
    data.recordings = await api('/api/admin/recordings');
    renderRecordings();
  } catch (err) {
    fail(err);
  }
}

async function recordingControl(action) {
  if (!data.selected) return;
  try {
    await api(`/api/admin/meetings/${encodeURIComponent(data.selected)}/recording/${action}`, { method: 'POST' });
    showMessage(action === 'start' ? 'admin.rec.started.msg' : 'admin.rec.stopped.msg', {}, 'info');
    setTimeout(loadRecordings, 1000);
  } catch (err) {
    fail(err);
  }
}

function init() {
  document.documentElement.lang = getLang();
  applyI18n(document);
  document.title = t('admin.title');
  onLangChange(() => {
    document.title = t('admin.title');
    renderAll();
  });
  $('lang').addEventListener('click', toggleLang);
  $('endpoint-form').addEventListener('submit', onEndpointSubmit);
  $('meeting-form').addEventListener('submit', onMeetingSubmit);
  $('attendance-show').addEventListener('click', showAttendance);
  $('audit-show').addEventListener('click', showAudit);
  $('rec-start').addEventListener('click', () => recordingControl('start'));
  $('rec-stop').addEventListener('click', () => recordingControl('stop'));
  $('recordings-refresh').addEventListener('click', loadRecordings);
  // Default meeting time: the next full hour, local time.
  const next = new Date(Date.now() + 3600_000);
  next.setMinutes(0, 0, 0);
  const pad = (n) => String(n).padStart(2, '0');
  $('meeting-time').value = `${next.getFullYear()}-${pad(next.getMonth() + 1)}-${pad(next.getDate())}T${pad(next.getHours())}:00`;
  if (!token) {
    showMessage('admin.notoken', {}, 'error');
    return;
  }
  Promise.all([loadEndpoints(), loadMeetings()]).then(loadRecordings).catch(fail);
}

init();
