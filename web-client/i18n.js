// UI strings, Vietnamese first, English second. The chosen language persists in localStorage.
// Elements carrying data-i18n="key" get their text from the table; data-i18n-placeholder and
// data-i18n-title fill those attributes instead.

const STORAGE_KEY = 'giaoban.lang';

export const STRINGS = {
  vi: {
    'app.title': 'Giao ban trực tuyến',
    'lang.switch': 'English',
    'lang.switch.title': 'Switch to English',
    'form.heading': 'Tham gia cuộc họp',
    'form.room': 'Phòng họp',
    'form.room.placeholder': 'ví dụ: giao-ban-tuan',
    'form.name': 'Tên điểm cầu',
    'form.name.placeholder': 'ví dụ: UBND xã Tân Phú',
    'form.join': 'Tham gia',
    'form.invalid': 'Vui lòng nhập phòng họp và tên điểm cầu (tối đa 64 ký tự).',
    'form.hint': 'Đường dẫn tham gia nhanh: /?room=PHÒNG&name=TÊN',
    'meeting.room': 'Phòng họp: {room}',
    'meeting.self': '{name} (bạn)',
    'meeting.empty': 'Đang chờ các điểm cầu khác tham gia…',
    'meeting.count': '{n} điểm cầu',
    'btn.mic.on': 'Micro: Bật',
    'btn.mic.off': 'Micro: Tắt',
    'btn.mic.none': 'Micro: Không có',
    'btn.camera.on': 'Camera: Bật',
    'btn.camera.off': 'Camera: Tắt',
    'btn.camera.none': 'Camera: Không có',
    'btn.leave': 'Rời cuộc họp',
    'btn.sound': 'Nhấn để bật âm thanh',
    'tile.mic.on': 'Micro bật',
    'tile.mic.off': 'Micro tắt',
    'tile.camera.on': 'Camera bật',
    'tile.camera.off': 'Camera tắt',
    'tile.novideo': 'Không có hình',
    'status.ws': 'Máy chủ',
    'status.publish': 'Gửi',
    'status.subscribe': 'Nhận',
    'state.idle': 'Chưa kết nối',
    'state.connecting': 'Đang kết nối…',
    'state.connected': 'Đã kết nối',
    'state.retrying': 'Mất kết nối – đang thử lại…',
    'state.none': 'Không gửi',
    'state.closed': 'Đã đóng',
    'msg.unreachable': 'Không kết nối được máy chủ. Đang thử lại sau {s} giây…',
    'msg.dropped': 'Mất kết nối với máy chủ – đang thử lại…',
    'msg.media.denied': 'Không được phép dùng camera/micro. Bạn tham gia ở chế độ chỉ xem và nghe.',
    'msg.media.nodevice': 'Không tìm thấy camera và micro. Bạn tham gia ở chế độ chỉ xem và nghe.',
    'msg.media.nocamera': 'Không dùng được camera ({reason}). Chỉ gửi âm thanh.',
    'msg.media.nomic': 'Không dùng được micro ({reason}). Chỉ gửi hình ảnh.',
    'msg.media.unsupported': 'Trình duyệt không hỗ trợ camera/micro (cần HTTPS). Bạn tham gia ở chế độ chỉ xem và nghe.',
    'msg.media.error': 'Không mở được camera/micro ({reason}). Bạn tham gia ở chế độ chỉ xem và nghe.',
    'msg.server.error': 'Máy chủ báo lỗi ({code}): {message}',
    'msg.bye': 'Máy chủ đã kết thúc phiên: {reason}',
    'msg.pc.failed': 'Kết nối hình/tiếng bị lỗi – đang kết nối lại…',
    'msg.left': 'Bạn đã rời cuộc họp.',
    'msg.close': 'Đóng',
    'msg.muted': 'Chủ trì đã tắt micro của bạn. Bật lại micro khi được phép phát biểu.',
    'msg.unmute_requested': 'Chủ trì đề nghị bạn bật micro.',
    'err.room_full': 'Phòng họp đã đầy.',
    'err.shutting_down': 'Máy chủ đang dừng.',
    'err.unauthorized': 'Cần đường dẫn tham gia hợp lệ (mã mời sai, hết hạn hoặc phòng họp không mở tự do).',
    'err.forbidden': 'Bạn không có quyền thực hiện thao tác này.',
    'err.meeting_locked': 'Cuộc họp đã bị khóa.',
    'err.meeting_ended': 'Cuộc họp đã kết thúc.',
    'err.removed': 'Điểm cầu đã bị mời ra khỏi cuộc họp.',
  },
  en: {
    'app.title': 'Online briefing',
    'lang.switch': 'Tiếng Việt',
    'lang.switch.title': 'Chuyển sang tiếng Việt',
    'form.heading': 'Join the meeting',
    'form.room': 'Meeting room',
    'form.room.placeholder': 'e.g. weekly-briefing',
    'form.name': 'Hall name',
    'form.name.placeholder': 'e.g. Tan Phu commune',
    'form.join': 'Join',
    'form.invalid': 'Please enter a meeting room and a hall name (at most 64 characters).',
    'form.hint': 'Direct join link: /?room=ROOM&name=NAME',
    'meeting.room': 'Room: {room}',
    'meeting.self': '{name} (you)',
    'meeting.empty': 'Waiting for other halls to join…',
    'meeting.count': '{n} halls',
    'btn.mic.on': 'Mic: On',
    'btn.mic.off': 'Mic: Off',
    'btn.mic.none': 'Mic: None',
    'btn.camera.on': 'Camera: On',
    'btn.camera.off': 'Camera: Off',
    'btn.camera.none': 'Camera: None',
    'btn.leave': 'Leave meeting',
    'btn.sound': 'Click to enable sound',
    'tile.mic.on': 'Mic on',
    'tile.mic.off': 'Mic off',
    'tile.camera.on': 'Camera on',
    'tile.camera.off': 'Camera off',
    'tile.novideo': 'No video',
    'status.ws': 'Server',
    'status.publish': 'Send',
    'status.subscribe': 'Receive',
    'state.idle': 'Not connected',
    'state.connecting': 'Connecting…',
    'state.connected': 'Connected',
    'state.retrying': 'Connection lost – retrying…',
    'state.none': 'Not sending',
    'state.closed': 'Closed',
    'msg.unreachable': 'Cannot reach the server. Retrying in {s} s…',
    'msg.dropped': 'Lost the connection to the server – retrying…',
    'msg.media.denied': 'Camera/microphone permission denied. You joined receive-only (watch and listen).',
    'msg.media.nodevice': 'No camera or microphone found. You joined receive-only (watch and listen).',
    'msg.media.nocamera': 'Camera unavailable ({reason}). Sending audio only.',
    'msg.media.nomic': 'Microphone unavailable ({reason}). Sending video only.',
    'msg.media.unsupported': 'This browser offers no camera/microphone here (HTTPS needed). You joined receive-only.',
    'msg.media.error': 'Could not open camera/microphone ({reason}). You joined receive-only.',
    'msg.server.error': 'Server error ({code}): {message}',
    'msg.bye': 'The server ended the session: {reason}',
    'msg.pc.failed': 'Media connection failed – reconnecting…',
    'msg.left': 'You left the meeting.',
    'msg.close': 'Close',
    'msg.muted': 'The chair muted your microphone. Switch it on again when you are given the floor.',
    'msg.unmute_requested': 'The chair asks you to switch your microphone on.',
    'err.room_full': 'The meeting room is full.',
    'err.shutting_down': 'The server is shutting down.',
    'err.unauthorized': 'A valid join link is needed (token wrong or expired, or the room is not open).',
    'err.forbidden': 'You are not allowed to do this.',
    'err.meeting_locked': 'The meeting is locked.',
    'err.meeting_ended': 'The meeting has ended.',
    'err.removed': 'This hall was removed from the meeting.',
  },
};

let current = loadLang();
const listeners = new Set();

function loadLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && STRINGS[saved]) return saved;
  } catch {
    // localStorage may be unavailable (privacy mode); Vietnamese is the default.
  }
  return 'vi';
}

export function getLang() {
  return current;
}

export function setLang(lang) {
  if (!STRINGS[lang] || lang === current) return;
  current = lang;
  try {
    localStorage.setItem(STORAGE_KEY, lang);
  } catch {
    // Not persisted; the switch still applies to this page.
  }
  document.documentElement.lang = lang;
  applyI18n(document);
  for (const fn of listeners) fn(lang);
}

export function toggleLang() {
  setLang(current === 'vi' ? 'en' : 'vi');
}

/** Run `fn` whenever the language changes (to re-render dynamic text). */
export function onLangChange(fn) {
  listeners.add(fn);
}

/** The string for `key` in the current language, with `{name}` placeholders filled from `params`. */
export function t(key, params = {}) {
  const table = STRINGS[current] || STRINGS.vi;
  const template = table[key] ?? STRINGS.vi[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** Fill every element under `root` that names a string key. */
export function applyI18n(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  if (root === document) document.title = t('app.title');
}
