// The WebSocket control session (docs/protocol.md), apart from the UI.
//
// A Session connects to ws(s)://<host>/ws, sends `join` on every (re)connection, keeps the socket alive with
// `ping` every 20 s and reconnects with exponential backoff when the server is unreachable or the socket
// drops. A rejoin with a join link's token resumes the same participant (the server keeps a meeting member whose
// connection dropped for a while); the app rebuilds its media connections on each `joined`.
//
// Events (EventTarget, each a CustomEvent with `detail`):
//   status   {state: 'connecting'|'open'|'retrying'|'closed', attempt, delayMs, everOpened}
//   message  the parsed server message (also dispatched as `msg:<type>`)

export const PING_INTERVAL_MS = 20_000;
/** Reconnect if nothing at all arrived for this long (pongs included). */
export const SILENCE_TIMEOUT_MS = 50_000;
const BACKOFF_MIN_MS = 500;
/** A hall whose link came back should not wait long for the next attempt (2 s between attempts at most). */
const BACKOFF_MAX_MS = 2_000;
/**
 * An attempt whose socket has not opened by then is given up and made again: while the link is down the TCP
 * handshake's own retries back off (SYNs 1, 2, 4, 8 s apart), so a fresh attempt reaches a link that came back sooner.
 */
export const CONNECT_TIMEOUT_MS = 4_000;
const STABLE_AFTER_MS = 10_000;

export function wsUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

export class Session extends EventTarget {
  constructor({ url = wsUrl(), room, name, token } = {}) {
    super();
    this.url = url;
    this.room = room;
    this.name = name;
    this.token = token;
    this.ws = null;
    this.state = 'idle';
    this.attempt = 0; // attempts since the socket last stayed open for STABLE_AFTER_MS
    this.everOpened = false;
    this.stopped = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.stableTimer = null;
    this.connectTimer = null;
    this.lastHeard = 0;
  }

  /** Open the socket (and keep it open until close()). */
  start() {
    this.stopped = false;
    this.#open();
  }

  /** Send one client message; returns false when the socket is not open (the message is dropped). */
  send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Drop the current socket and reconnect after the backoff (e.g. after the media connections failed). */
  reconnect() {
    if (this.stopped) return;
    const ws = this.ws;
    this.#detach();
    if (ws) {
      try {
        ws.close(4000, 'reconnect');
      } catch {
        // already closing
      }
    }
    this.#scheduleRetry();
  }

  /** Leave for good: optionally send `leave`, then close without reconnecting. */
  close({ leave = true } = {}) {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN && leave) ws.send(JSON.stringify({ type: 'leave' }));
    this.#detach();
    if (ws) {
      try {
        ws.close(1000, 'leave');
      } catch {
        // already closing
      }
    }
    this.#setState('closed');
  }

  #open() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.#setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.warn('giaoban: cannot create WebSocket', err);
      this.#scheduleRetry();
      return;
    }
    this.ws = ws;
    this.connectTimer = setTimeout(() => {
      if (ws !== this.ws || ws.readyState !== WebSocket.CONNECTING) return;
      console.info('giaoban: socket not open in time, trying again');
      this.#detach();
      try {
        ws.close();
      } catch {
        // already closing
      }
      this.#scheduleRetry();
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      if (ws !== this.ws) return;
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
      // Back off again from the start only once the socket has stayed up a while: a server that accepts and
      // then drops at once (e.g. refusing with `bye`) must not be hammered.
      this.stableTimer = setTimeout(() => {
        this.attempt = 0;
      }, STABLE_AFTER_MS);
      this.everOpened = true;
      this.lastHeard = Date.now();
      this.#setState('open');
      // A signed join link's token names the meeting and the hall; without one, an open room by name.
      const join = this.token ? { type: 'join', token: this.token } : { type: 'join', room: this.room, name: this.name };
      ws.send(JSON.stringify(join));
      this.pingTimer = setInterval(() => this.#keepAlive(), PING_INTERVAL_MS);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('giaoban: ignoring non-JSON frame', ev.data);
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      this.dispatchEvent(new CustomEvent('message', { detail: msg }));
      this.dispatchEvent(new CustomEvent(`msg:${msg.type}`, { detail: msg }));
    };
    ws.onerror = () => {
      // A close event always follows; retrying happens there.
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.#detach();
      if (this.stopped) return;
      console.info(`giaoban: socket closed (code ${ev.code}${ev.reason ? ', ' + ev.reason : ''})`);
      this.#scheduleRetry();
    };
  }

  #keepAlive() {
    if (Date.now() - this.lastHeard > SILENCE_TIMEOUT_MS) {
      console.warn('giaoban: server silent, reconnecting');
      this.reconnect();
      return;
    }
    this.send({ type: 'ping' });
  }

  #detach() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    clearTimeout(this.connectTimer);
    this.connectTimer = null;
    clearTimeout(this.stableTimer);
    this.stableTimer = null;
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onerror = this.ws.onclose = null;
    }
    this.ws = null;
  }

  #scheduleRetry() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delayMs = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this.#setState('retrying', { delayMs });
    this.retryTimer = setTimeout(() => this.#open(), delayMs);
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(
      new CustomEvent('status', {
        detail: { state, attempt: this.attempt, everOpened: this.everOpened, ...extra },
      }),
    );
  }
}
