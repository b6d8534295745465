/**
 * Browser client for the notifications WebSocket (PROTOCOL.md, version 1). A no-build ES module.
 *
 *   <script id="notifications-config" type="application/json">{"cursor": 41, "unread": 2}</script>
 *   <script type="module" src="/static/notifications/notifications.js"></script>
 *
 * With that config element on the page (the `{% notifications_client %}` tag renders it), the
 * module starts a client, binds the bell badge, the state indicator and the toasts, and exposes
 * the client as `window.notifications`. Add `data-autostart="false"` to the config element to
 * start it yourself with `new NotificationClient(...)` and `bindUI(client)`.
 *
 * Delivery rules this file relies on (from the protocol): `hello` comes first; when the URL
 * carries `?cursor=N`, the events missed since N follow in ascending id order and then
 * `replayed`; ids on one connection strictly increase. Resuming from the highest id received
 * therefore loses nothing and, with the id check below, shows nothing twice.
 */

import { bindFeed } from "./feed.js";
import { leaderRemote, workerRemote } from "./share.js";

const SUBPROTOCOL = "notifications.v1";
const LEVELS = new Set(["info", "success", "warning", "error"]);
const STATE_LABELS = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};
const DESKTOP_PREF_KEY = "notifications.desktop";
// Per tab (sessionStorage): the highest notification id this tab has already handled.
const SEEN_KEY = "notifications.seen";

const DEFAULTS = {
  backoffBase: 500, // ms; the first retry waits up to this long
  backoffCap: 15000, // ms; no retry waits longer
  stableAfter: 10000, // ms a connection must stay up before the backoff starts over
  pingAfter: 25000, // ms of silence before a keepalive ping
  pongTimeout: 10000, // ms to wait for any frame after a ping before giving the socket up
  connectTimeout: 15000, // ms to wait for `hello` after opening a socket
  requestTimeout: 10000, // ms to wait for the answer to markRead() and friends
  // Server-Sent Events fallback (where a proxy refuses WebSocket upgrades):
  wsFailuresBeforeFallback: 2, // WebSocket attempts in a row that die before `hello`
  wsRetryAfter: 300000, // ms on SSE before trying WebSocket again
};
// Frames of the inbox extension (`?ext=inbox`, docs/client.md), each re-emitted as an event.
const EXTENSION_FRAMES = new Set(["read_state", "seen", "archived", "preferences"]);

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/notifications/`;
}

/** The ids of a list that are non-negative safe integers, or null if any is not. */
function toIds(ids) {
  const list = Array.from(ids ?? [], Number);
  return list.every((id) => Number.isSafeInteger(id) && id >= 0) ? list : null;
}

/** A non-negative integer, or null. */
function toCount(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : null;
}

/** A link target that is safe to put in an href: http(s) only, resolved against the page. */
export function safeHref(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const resolved = new URL(url, location.href);
    return resolved.protocol === "http:" || resolved.protocol === "https:" ? resolved.href : null;
  } catch {
    return null;
  }
}

/** The rejection of a request the server answered with an `error` frame (or never answered). */
export class NotificationError extends Error {
  constructor(code, message, frame = null) {
    super(message);
    this.name = "NotificationError";
    this.code = code;
    this.frame = frame;
  }
}

/**
 * One WebSocket per tab, kept open: reconnects with exponential backoff and full jitter,
 * resumes from the highest id it has seen, and detects dead sockets with a keepalive.
 *
 * Events (CustomEvent, dispatched on the client):
 *   state          {state}            "connecting" | "open" | "reconnecting" | "closed"
 *   hello          the hello frame
 *   notification   the notification frame (never a duplicate; replayed ones included)
 *   unread         {count, frame}     count is null for anonymous visitors
 *   replayed       the replayed frame
 *   reload-needed  the replayed frame  (the replay was cut short: reload the inbox over HTTP)
 *   subscribed / unsubscribed          the answer frame
 *   error-frame    the error frame
 *   frame          every frame received, before the specific event
 *   disconnect     {code, reason}     the socket closed (a reconnect may follow)
 *   read_state / seen / archived / preferences   the inbox extension's frames (docs/client.md)
 *   transport      {transport}        "websocket" | "sse" (the fallback) | "shared"
 *
 * With `options.remote`, the client opens no connection itself: it mirrors one that a
 * SharedWorker or the leader tab holds (share.js), processing the same frames the same way.
 */
export class NotificationClient extends EventTarget {
  #url;
  #options;
  #ws = null;
  #state = "closed";
  #stopped = true;
  // Resume point: every event id up to it has been delivered or is not for us.
  #cursor;
  // The cursor the page was rendered with (null when none was given).
  #pageCursor;
  // Highest notification id dispatched; anything at or below it is a duplicate.
  #lastId;
  #unread;
  #user;
  #sentCursor = null; // the cursor in the URL of the current socket
  #helloCursor = null;
  #replaying = false;
  #attempt = 0;
  #lastReceived = 0;
  #timers = { reconnect: null, idle: null, deadline: null, stable: null, retryWs: null };
  #pending = new Map();
  #nextRef = 1;
  #topics = new Set();
  #windowListeners = null;
  #remote = null; // {attach(client, info), send(frame), detach()} when another context connects
  #transport = "websocket";
  #wsFailures = 0;
  #sse = null;
  #sseUrl;
  #extensions;
  #language;
  #api;
  #csrf;

  /**
   * @param {object} [options]
   * @param {string} [options.url] WebSocket URL (default: /ws/notifications/ on this host, wss: on https pages)
   * @param {number} [options.cursor] newest event id the page already reflects
   * @param {number|null} [options.unread] unread count rendered into the page (null: anonymous)
   * @param {boolean} [options.desktop] show desktop notifications when the tab is hidden
   * @param {string|null} [options.user] username the page was rendered for
   */
  constructor(options = {}) {
    super();
    this.#url = options.url || defaultUrl();
    this.#cursor = toCount(options.cursor);
    this.#pageCursor = this.#cursor;
    this.#lastId = this.#cursor ?? 0;
    this.#unread = toCount(options.unread);
    this.#user = options.user ?? null;
    this.desktop = Boolean(options.desktop);
    this.#remote = options.remote ?? null;
    if (this.#remote) this.#transport = "shared";
    this.#sseUrl = options.sseUrl || "/sse/notifications/";
    this.#api = options.api || "/api/v1/inbox";
    this.#csrf = options.csrf ?? null;
    this.#extensions = Array.isArray(options.extensions) ? options.extensions : ["inbox"];
    this.#language = typeof options.language === "string" ? options.language : null;
    this.#options = { ...DEFAULTS, noFallback: options.fallback === false };
    for (const key of Object.keys(DEFAULTS)) {
      if (Number.isFinite(options[key]) && options[key] >= 0) this.#options[key] = options[key];
    }
  }

  get state() {
    return this.#state;
  }

  /** Where the next connection resumes from (null until known). */
  get cursor() {
    return this.#cursor;
  }

  /** The cursor the page was rendered with (null when none was given). */
  get pageCursor() {
    return this.#pageCursor;
  }

  /** Highest notification id received so far. */
  get lastId() {
    return this.#lastId;
  }

  /** Unread count; null for anonymous visitors. */
  get unread() {
    return this.#unread;
  }

  /** Username the server knows this socket as (from `hello`; before that, from the options). */
  get user() {
    return this.#user;
  }

  /** "websocket", "sse" (the fallback) or "shared" (mirroring another context's connection). */
  get transport() {
    return this.#transport;
  }

  /** The options this client was made with that a relay needs to open the same connection. */
  get connectionOptions() {
    return { url: this.#url, sseUrl: this.#sseUrl, extensions: this.#extensions, language: this.#language };
  }

  /** True between `hello` and `replayed` of a connection that resumed from a cursor. */
  get replaying() {
    return this.#replaying;
  }

  /** Open the connection (idempotent). */
  start() {
    if (!this.#stopped) return;
    this.#stopped = false;
    if (this.#remote) {
      this.#setState("connecting");
      this.#remote.attach(this, { cursor: this.#cursor, unread: this.#unread, user: this.#user });
      return;
    }
    this.#listenToWindow();
    this.#connect("connecting");
  }

  /** A message from the context that holds the connection (share.js); remote mode only. */
  receiveRemote(message) {
    if (!this.#remote || this.#stopped || !message) return;
    if (message.type === "state") {
      this.#setState(message.state);
      if (message.state !== "open") this.#replaying = false;
    } else if (message.type === "frame") {
      this.#sentCursor = message.resumed ? this.#cursor : null;
      this.#receive(message.frame);
    }
  }

  /** Close the connection for good (until start() is called again). */
  stop() {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#remote) {
      this.#remote.detach(this);
      this.#setState("closed");
      return;
    }
    this.#unlistenToWindow();
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = null;
    const ws = this.#ws;
    this.#dropSocket(); // closes an event stream too
    if (ws) {
      try {
        ws.close(1000, "client stopped");
      } catch {
        // already closing
      }
    }
    this.#setState("closed");
  }

  /** Send one frame as is. Returns false (and sends nothing) when the socket is not open. */
  send(frame) {
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") {
      throw new TypeError("a frame is an object with a string `type`");
    }
    if (this.#remote) {
      if (this.#state !== "open") return false;
      return this.#remote.send(frame) !== false;
    }
    const ws = this.#ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** Mark events read. Resolves with the `unread` answer; rejects when not connected. */
  markRead(ids) {
    const list = toIds(ids);
    if (list === null) return Promise.reject(new TypeError("ids must be non-negative integers"));
    return this.#request({ type: "read", ids: list });
  }

  /**
   * A call of the JSON inbox API (`/api/v1/inbox` + path) with the session and CSRF token.
   * Resolves with the decoded answer; rejects with a NotificationError (code from the body).
   */
  async api(path = "", { method = "GET", body = undefined, query = undefined } = {}) {
    const url = new URL(this.#api + path, location.href);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== null && value !== undefined && value !== false) url.searchParams.set(key, String(value));
    }
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && this.#csrf) headers["X-CSRFToken"] = this.#csrf;
    const response = await fetch(url.href, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = answer.error ?? {};
      throw new NotificationError(error.code ?? `http_${response.status}`, error.message ?? response.statusText, answer);
    }
    if (Number.isSafeInteger(answer.unread) && this.#unread !== null) this.#setUnread(answer.unread, null);
    return answer;
  }

  /** Mark events unread again (also ones read by "mark all read"). Resolves with `{unread}`. */
  markUnread(ids) {
    const list = toIds(ids);
    if (list === null) return Promise.reject(new TypeError("ids must be non-negative integers"));
    return this.api("/unread", { method: "POST", body: { ids: list } });
  }

  /** Archive events (out of the feed, still in the inbox history; also marks them read). */
  archive(ids, { archived = true } = {}) {
    const list = toIds(ids);
    if (list === null) return Promise.reject(new TypeError("ids must be non-negative integers"));
    return this.api(archived ? "/archive" : "/unarchive", { method: "POST", body: { ids: list } });
  }

  /** The feed was shown up to `through` (default: the newest event): clears "new". */
  markSeen(through = null) {
    const body = toCount(through) === null ? {} : { through };
    return this.api("/seen", { method: "POST", body });
  }

  /** Mark everything read. Resolves with the `unread` answer. */
  markAllRead() {
    return this.#request({ type: "read_all" });
  }

  /**
   * Follow a topic; resolves with `subscribed`. With `cursor`, the topic's events after it are
   * replayed first. Topics followed by an anonymous visitor last for the connection only, so
   * the client follows them again after each reconnect.
   */
  subscribe(slug, { cursor } = {}) {
    const frame = { type: "subscribe", topic: slug };
    if (toCount(cursor) !== null) frame.cursor = cursor;
    this.#topics.add(slug);
    return this.#request(frame).catch((error) => {
      if (error instanceof NotificationError && error.frame) this.#topics.delete(slug);
      throw error;
    });
  }

  /** Stop following a topic; resolves with `unsubscribed`. */
  unsubscribe(slug) {
    this.#topics.delete(slug);
    return this.#request({ type: "unsubscribe", topic: slug });
  }

  // Connection ---------------------------------------------------------------------------

  #connect(state) {
    this.#setState(state);
    if (this.#transport === "sse") {
      this.#connectSse();
      return;
    }
    const url = new URL(this.#url, location.href);
    // Relative or http(s) URLs: the WebSocket constructor of older browsers wants ws(s).
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    this.#setQuery(url);

    let ws;
    try {
      ws = new WebSocket(url.href, SUBPROTOCOL);
    } catch (error) {
      // A malformed URL will not fix itself: give up instead of retrying forever.
      console.error("notifications: cannot open", url.href, error);
      this.#stopped = true;
      this.#setState("closed");
      return;
    }
    this.#ws = ws;
    this.#helloCursor = null;
    this.#replaying = false;
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#receive(event.data);
    };
    ws.onclose = (event) => this.#onClose(ws, event);
    // A socket can hang in the handshake (a dead server, a captive portal): give it a deadline.
    this.#timers.deadline = setTimeout(() => this.#giveUp(ws), this.#options.connectTimeout);
  }

  /** Cursor, topics and extensions in the query of a WebSocket or SSE URL. */
  #setQuery(url) {
    this.#sentCursor = this.#cursor;
    if (this.#sentCursor !== null) url.searchParams.set("cursor", String(this.#sentCursor));
    else url.searchParams.delete("cursor");
    // An anonymous visitor's topics last for one connection: name them on connect so that
    // the server follows them before it replays, and the replay covers them in id order.
    // (A signed-in user's are stored by the server.)
    url.searchParams.delete("topic");
    if (this.#user === null) for (const topic of this.#topics) url.searchParams.append("topic", topic);
    url.searchParams.delete("ext");
    for (const name of this.#extensions) url.searchParams.append("ext", name);
    // The user's language preference; without it the server reads Accept-Language.
    if (this.#language) url.searchParams.set("lang", this.#language);
    else url.searchParams.delete("lang");
  }

  /** The fallback: the same frames as `data:` lines of an EventSource (docs/client.md). */
  #connectSse() {
    const url = new URL(this.#sseUrl, location.href);
    this.#setQuery(url);
    let source;
    try {
      source = new EventSource(url.href, { withCredentials: true });
    } catch (error) {
      console.error("notifications: cannot open", url.href, error);
      this.#transport = "websocket";
      this.#scheduleReconnect();
      return;
    }
    this.#sse = source;
    this.#helloCursor = null;
    this.#replaying = false;
    source.onmessage = (event) => {
      if (source === this.#sse) this.#receive(event.data);
    };
    // EventSource retries by itself, without our cursor: close it and reconnect our way.
    source.onerror = () => {
      if (source !== this.#sse) return;
      this.#dropSocket();
      this.#emit("disconnect", { code: 0, reason: "event stream failed" });
      if (!this.#stopped) this.#scheduleReconnect();
    };
    this.#timers.deadline = setTimeout(() => this.#giveUp(null), this.#options.connectTimeout);
  }

  /** Whether to move to SSE after a WebSocket that closed before `hello`. */
  #countWsFailure(gotHello) {
    if (this.#transport !== "websocket") return;
    this.#wsFailures = gotHello ? 0 : this.#wsFailures + 1;
    if (
      this.#options.noFallback ||
      typeof EventSource !== "function" ||
      this.#wsFailures < this.#options.wsFailuresBeforeFallback
    ) {
      return;
    }
    this.#setTransport("sse");
    this.#attempt = 0;
  }

  #setTransport(transport) {
    if (transport === this.#transport) return;
    this.#transport = transport;
    this.#emit("transport", { transport });
  }

  #onClose(ws, event) {
    if (ws !== this.#ws) return;
    this.#countWsFailure(this.#helloCursor !== null);
    this.#dropSocket();
    this.#emit("disconnect", { code: event.code, reason: event.reason });
    if (this.#stopped) this.#setState("closed");
    else this.#scheduleReconnect();
  }

  /** Abandon a socket that stopped answering: do not wait for its closing handshake. */
  #giveUp(ws) {
    if (ws === null) {
      // The event stream: nothing came in time.
      if (!this.#sse) return;
      this.#dropSocket();
    } else {
      if (ws !== this.#ws) return;
      this.#countWsFailure(this.#helloCursor !== null);
      this.#dropSocket();
      try {
        ws.close(4000, "keepalive timeout");
      } catch {
        // already closing
      }
    }
    this.#emit("disconnect", { code: 4000, reason: "keepalive timeout" });
    if (!this.#stopped) this.#scheduleReconnect();
  }

  /** Forget the current socket and everything tied to it. */
  #dropSocket() {
    const ws = this.#ws;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
    }
    this.#ws = null;
    if (this.#sse) {
      this.#sse.onmessage = null;
      this.#sse.onerror = null;
      this.#sse.close();
      this.#sse = null;
    }
    clearTimeout(this.#timers.retryWs);
    this.#timers.retryWs = null;
    this.#replaying = false;
    for (const key of ["idle", "deadline", "stable"]) {
      clearTimeout(this.#timers[key]);
      this.#timers[key] = null;
    }
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(new NotificationError("disconnected", "the connection closed before the answer"));
    }
    this.#pending.clear();
  }

  #scheduleReconnect() {
    this.#setState("reconnecting");
    clearTimeout(this.#timers.reconnect);
    // Full jitter (a random delay in [0, min(cap, base * 2^attempt)]) spreads the reconnects
    // of many tabs after a server restart instead of having them arrive in waves.
    const ceiling = Math.min(
      this.#options.backoffCap,
      this.#options.backoffBase * 2 ** Math.min(this.#attempt, 30),
    );
    const delay = Math.random() * ceiling;
    this.#attempt += 1;
    this.#timers.reconnect = setTimeout(() => {
      this.#timers.reconnect = null;
      this.#connect("reconnecting");
    }, delay);
  }

  /** The network is back or the tab is visible again: check on the connection now. */
  #wake() {
    if (this.#stopped) return;
    if (this.#timers.reconnect !== null) {
      clearTimeout(this.#timers.reconnect);
      this.#timers.reconnect = null;
      this.#attempt = 0;
      this.#connect("reconnecting");
    } else if (
      this.#state === "open" &&
      Date.now() - this.#lastReceived >= this.#options.pingAfter
    ) {
      // After a laptop sleep the socket may look open but be dead: probe it at once.
      this.#probe();
    }
  }

  #listenToWindow() {
    if (typeof window === "undefined") return; // in a SharedWorker: no window to watch
    const wake = () => this.#wake();
    const onVisibility = () => {
      if (!document.hidden) this.#wake();
    };
    const onOffline = () => {
      if (this.#state === "open") this.#probe();
    };
    this.#windowListeners = [
      [window, "online", wake],
      [window, "offline", onOffline],
      [window, "pageshow", wake],
      [document, "visibilitychange", onVisibility],
    ];
    for (const [target, type, listener] of this.#windowListeners) {
      target.addEventListener(type, listener);
    }
  }

  #unlistenToWindow() {
    for (const [target, type, listener] of this.#windowListeners ?? []) {
      target.removeEventListener(type, listener);
    }
    this.#windowListeners = null;
  }

  // Keepalive: ping only after 25 s of silence, so a busy socket sends no extra frames.

  #touch() {
    this.#lastReceived = Date.now();
    clearTimeout(this.#timers.deadline);
    this.#timers.deadline = null;
    clearTimeout(this.#timers.idle);
    this.#timers.idle = setTimeout(() => this.#probe(), this.#options.pingAfter);
  }

  #probe() {
    const ws = this.#ws;
    if (!ws || this.#timers.deadline !== null) return;
    if (!this.send({ type: "ping" })) return;
    // Any frame counts as the answer (#touch clears the deadline).
    this.#timers.deadline = setTimeout(() => this.#giveUp(ws), this.#options.pongTimeout);
  }

  // Frames -------------------------------------------------------------------------------

  /** One frame from the connection (text) or from the context that holds it (an object). */
  #receive(data) {
    if (!this.#remote) this.#touch();
    let frame = data;
    if (typeof data === "string") {
      try {
        frame = JSON.parse(data);
      } catch {
        console.warn("notifications: ignoring a frame that is not JSON");
        return;
      }
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    this.#emit("frame", frame);
    switch (frame.type) {
      case "hello":
        this.#onHello(frame);
        break;
      case "notification":
        this.#onNotification(frame);
        break;
      case "replayed":
        this.#onReplayed(frame);
        break;
      case "unread":
        this.#setUnread(toCount(frame.count), frame);
        break;
      case "subscribed":
      case "unsubscribed":
        this.#emit(frame.type, frame);
        break;
      case "error":
        this.#emit("error-frame", frame);
        break;
      default:
        // The inbox extension's frames; pong, and frame types added later, are ignored.
        if (EXTENSION_FRAMES.has(frame.type)) this.#emit(frame.type, frame);
        break;
    }
    this.#answer(frame);
  }

  #onHello(frame) {
    this.#user = typeof frame.user === "string" ? frame.user : null;
    this.#helloCursor = toCount(frame.cursor) ?? 0;
    if (this.#sentCursor === null) {
      // Nothing to replay: the stream starts at hello.cursor for this client.
      this.#cursor = Math.max(this.#cursor ?? 0, this.#helloCursor);
    } else {
      // Missed events follow; advance only after `replayed`, so that a connection lost
      // mid-replay resumes from the last event actually received.
      this.#replaying = true;
    }
    clearTimeout(this.#timers.stable);
    this.#timers.stable = setTimeout(() => {
      this.#attempt = 0;
    }, this.#options.stableAfter);
    if (this.#transport === "sse" && !this.#remote) {
      // Try WebSocket again later: the proxy may have been fixed, or the network changed.
      clearTimeout(this.#timers.retryWs);
      this.#timers.retryWs = setTimeout(() => {
        if (!this.#sse) return;
        this.#dropSocket();
        this.#setTransport("websocket");
        this.#wsFailures = this.#options.wsFailuresBeforeFallback - 1; // one failure: SSE again
        this.#connect("reconnecting");
      }, this.#options.wsRetryAfter);
    }
    this.#setState("open");
    this.#emit("hello", frame);
    this.#setUnread(frame.unread === null ? null : toCount(frame.unread), frame, { force: true });
  }

  #onNotification(frame) {
    const id = toCount(frame.id);
    if (id === null || id <= this.#lastId) return; // a duplicate, or older than the page
    this.#lastId = id;
    this.#cursor = Math.max(this.#cursor ?? 0, id);
    this.#emit("notification", frame);
    // A live notification nobody has read is one more unread (the protocol sends it before
    // any `unread` frame it causes). Replayed ones are already in hello.unread.
    if (frame.replay !== true && frame.read !== true && this.#unread !== null) {
      this.#setUnread(this.#unread + 1, null);
    }
  }

  #onReplayed(frame) {
    this.#replaying = false;
    this.#cursor = Math.max(this.#cursor ?? 0, this.#lastId, this.#helloCursor ?? 0);
    this.#emit("replayed", frame);
    // The server sends at most REPLAY_LIMIT events; the rest is only in the inbox. The cursor
    // still advances: the page is told to reload rather than replaying the backlog again.
    if (frame.complete === false) this.#emit("reload-needed", frame);
  }

  #setUnread(count, frame, { force = false } = {}) {
    if (count === this.#unread && !force) return;
    this.#unread = count;
    this.#emit("unread", { count, frame });
  }

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("state", { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // Requests: frames whose answer carries the same `ref`.

  #request(frame) {
    if (this.#transport === "sse" && this.#sse && (frame.type === "read" || frame.type === "read_all")) {
      // An event stream carries nothing upstream: reads go over the JSON API.
      const body = frame.type === "read" ? { ids: frame.ids } : { all: true };
      return this.api("/read", { method: "POST", body }).then((answer) => ({ type: "unread", count: answer.unread }));
    }
    const ref = `c${this.#nextRef++}`;
    return new Promise((resolve, reject) => {
      if (!this.send({ ...frame, ref })) {
        reject(new NotificationError("not_connected", "the notification socket is not open"));
        return;
      }
      const timer = setTimeout(() => {
        this.#pending.delete(ref);
        reject(new NotificationError("timeout", `no answer to ${frame.type}`));
      }, this.#options.requestTimeout);
      this.#pending.set(ref, { resolve, reject, timer });
    });
  }

  #answer(frame) {
    if (frame.ref === undefined || !this.#pending.has(frame.ref)) return;
    const { resolve, reject, timer } = this.#pending.get(frame.ref);
    this.#pending.delete(frame.ref);
    clearTimeout(timer);
    if (frame.type === "error") reject(new NotificationError(frame.code, frame.message, frame));
    else resolve(frame);
  }
}

// UI -----------------------------------------------------------------------------------------

function h(tag, attributes = {}, text = null) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) element.setAttribute(name, value);
  }
  if (text !== null) element.textContent = text;
  return element;
}

function readStorage(storage, key) {
  try {
    return window[storage].getItem(key);
  } catch {
    return null; // storage disabled (privacy settings, sandboxed frames)
  }
}

function writeStorage(storage, key, value) {
  try {
    window[storage].setItem(key, value);
  } catch {
    // not persisted; harmless
  }
}

const desktopSupported = () => typeof window.Notification === "function";

const MAX_ACTIONS = 3;

/**
 * The action buttons a notification asks for in `data.actions` ([{label, url}], docs/client.md):
 * at most three, each with a non-empty label of at most 40 characters and an http(s) or
 * relative url. Anything else is left out.
 */
/**
 * The DOM of one toast, without behaviour: the element, the links or buttons that open the
 * notification (each with its target, for the caller to wire), and the close button. bindUI's
 * toasts and the admin composer's preview (console.js) both draw with it, so the preview is
 * the real markup. Text goes in with textContent only.
 */
export function toastElement({ id = null, level = "info", title, body = "", url = "", linkText = "Open", data = null, read = true }) {
  const kind = LEVELS.has(level) ? level : "info";
  const toast = h("div", {
    class: `nt-toast nt-toast--${kind}`,
    role: "status",
    "aria-atomic": "true",
    "data-notification-id": id,
    "data-level": kind,
  });
  const content = h("div", { class: "nt-toast__content" });
  const href = safeHref(url);
  const titleLine = h("p", { class: "nt-toast__title" });
  const openers = [];
  if (id !== null && (href || read === false)) {
    // The title opens the notification and marks it read (a button when there is no link).
    const opener = href
      ? h("a", { class: "nt-toast__open", href }, title)
      : h("button", { class: "nt-toast__open", type: "button" }, title);
    openers.push([opener, href]);
    titleLine.append(opener);
  } else {
    titleLine.textContent = title;
  }
  content.append(titleLine);
  if (body) content.append(h("p", { class: "nt-toast__body" }, body));
  const actions = id === null ? [] : toastActions(data);
  if (actions.length) {
    const row = h("div", { class: "nt-toast__actions" });
    for (const action of actions) {
      const link = h("a", { class: "nt-toast__action", href: action.href }, action.label);
      openers.push([link, action.href]);
      row.append(link);
    }
    content.append(row);
  } else if (href && id === null) {
    content.append(h("a", { class: "nt-toast__link", href }, linkText));
  }
  const close = h("button", {
    class: "nt-toast__close",
    type: "button",
    "aria-label": "Dismiss notification",
  }, "×");
  toast.append(content, close);
  return { toast, openers, close };
}

export function toastActions(data) {
  const actions = data && Array.isArray(data.actions) ? data.actions : [];
  const valid = [];
  for (const action of actions) {
    if (!action || typeof action !== "object" || typeof action.label !== "string") continue;
    const label = action.label.trim();
    const href = safeHref(action.url);
    if (!label || label.length > 40 || !href) continue;
    valid.push({ label, href });
    if (valid.length === MAX_ACTIONS) break;
  }
  return valid;
}

/** Whether the user's preferences let this notification interrupt as `kind` (toast/desktop). */
export function wants(preferences, frame, kind) {
  if (!preferences) return true;
  if (frame.topic && (preferences.muted_topics ?? []).includes(frame.topic)) return false;
  const levels = preferences[`${kind}_levels`];
  return !Array.isArray(levels) || levels.includes(frame.level);
}

/** Mark read (when it is an unread notification), then follow the link: a toast's click. */
async function openNotification(client, id, href) {
  if (id !== null && client.unread !== null) {
    // Wait for the mark a little, so the page we go to counts it; never block navigation.
    await Promise.race([client.markRead([id]).catch(() => null), new Promise((r) => setTimeout(r, 1500))]);
  }
  if (href) location.assign(href);
}

/** Whether the user opted in to desktop notifications in this browser. */
export function desktopPreference() {
  return readStorage("localStorage", DESKTOP_PREF_KEY) === "on";
}

function requestPermission() {
  // Older Safari takes a callback instead of returning a promise.
  return new Promise((resolve) => {
    const result = Notification.requestPermission(resolve);
    if (result && typeof result.then === "function") result.then(resolve);
  });
}

/**
 * Bind the page to a client: badges, state indicators, toasts, the desktop opt-in button and
 * forms marked `data-notifications-async`. Returns a function that unbinds everything.
 */
export function bindUI(client, { inboxUrl = null, toastTimeout = 6000, maxToasts = 5 } = {}) {
  const controller = new AbortController();
  const { signal } = controller;
  const on = (target, type, listener) => target.addEventListener(type, listener, { signal });

  // Bell badges: every [data-notifications-badge] on the page shows the same count.
  const renderBadges = (count) => {
    const shown = Number.isSafeInteger(count) && count > 0;
    for (const badge of document.querySelectorAll("[data-notifications-badge]")) {
      badge.textContent = shown ? String(count) : "";
      badge.hidden = !shown;
      badge.dataset.count = shown ? String(count) : "0";
    }
    for (const bell of document.querySelectorAll("[data-notifications-bell]")) {
      bell.setAttribute("aria-label", shown ? `Inbox, ${count} unread` : "Inbox");
    }
  };

  const renderState = (state) => {
    for (const element of document.querySelectorAll("[data-notifications-state]")) {
      element.dataset.state = state;
      element.textContent = STATE_LABELS[state] ?? state;
      element.title = `Live updates: ${STATE_LABELS[state] ?? state}`;
    }
  };

  // Toasts ---------------------------------------------------------------------------------

  const container = () => {
    let element = document.querySelector("[data-notifications-toasts]");
    if (!element) {
      element = h("div", { class: "nt-toasts", "data-notifications-toasts": "" });
      document.body.append(element);
    }
    // The container is the live region: it exists before the toasts are added to it, which
    // screen readers need to announce them.
    if (!element.hasAttribute("aria-live")) element.setAttribute("aria-live", "polite");
    if (!element.hasAttribute("aria-label")) element.setAttribute("aria-label", "Notifications");
    element.classList.add("nt-toasts");
    return element;
  };

  // Toasts sit below the site header, never over it (its bell, state and sign-out stay
  // usable): their top follows the header's bottom edge while the page scrolls.
  const header = document.querySelector("[data-notifications-header]") ?? document.querySelector("body > header, header");
  let placed = false;
  const place = () => {
    placed = false;
    const stack = document.querySelector("[data-notifications-toasts]");
    if (!stack || !header) return;
    const bottom = Math.max(0, header.getBoundingClientRect().bottom);
    stack.style.setProperty("--nt-toast-top", `${Math.round(bottom) + 8}px`);
  };
  const schedulePlace = () => {
    if (!placed) {
      placed = true;
      requestAnimationFrame(place);
    }
  };
  on(window, "scroll", schedulePlace);
  on(window, "resize", schedulePlace);

  const showToast = (frame) => {
    const { id = null } = frame;
    const { toast, openers, close } = toastElement(frame);
    for (const [opener, target] of openers) {
      opener.addEventListener("click", (event) => {
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
        event.preventDefault();
        dismiss();
        openNotification(client, id, target);
      });
    }

    // Auto-dismiss, but not while the pointer or focus is on the toast, nor while the tab is
    // hidden (the user would never see it).
    let remaining = toastTimeout;
    let startedAt = 0;
    let timer = null;
    const holds = new Set();
    const dismiss = () => {
      clearTimeout(timer);
      toast.remove();
    };
    const pause = (reason) => {
      holds.add(reason);
      if (timer !== null) {
        clearTimeout(timer);
        timer = null;
        remaining -= Date.now() - startedAt;
      }
    };
    const resume = (reason) => {
      holds.delete(reason);
      if (holds.size === 0 && timer === null && toast.isConnected) {
        startedAt = Date.now();
        timer = setTimeout(dismiss, Math.max(remaining, 1000));
      }
    };
    close.addEventListener("click", dismiss);
    toast.addEventListener("mouseenter", () => pause("hover"));
    toast.addEventListener("mouseleave", () => resume("hover"));
    toast.addEventListener("focusin", () => pause("focus"));
    toast.addEventListener("focusout", (event) => {
      if (!toast.contains(event.relatedTarget)) resume("focus");
    });

    const stack = container();
    place();
    stack.prepend(toast); // newest on top
    while (stack.children.length > maxToasts) stack.lastElementChild.remove();
    if (document.hidden) {
      pause("hidden");
      document.addEventListener("visibilitychange", function onVisible() {
        if (document.hidden) return;
        document.removeEventListener("visibilitychange", onVisible);
        resume("hidden");
      });
    } else {
      resume("start");
    }
    return toast;
  };

  const showDesktop = (frame) => {
    const { id = null, title, body = "", url = "" } = frame;
    if (!client.desktop || !document.hidden || !desktopSupported()) return;
    if (id !== null && !wants(client.preferences, frame, "desktop")) return;
    if (Notification.permission !== "granted") return;
    try {
      // The tag makes the system replace, not stack, the copies other hidden tabs show.
      const notice = new Notification(title, { body, tag: id === null ? undefined : `nt-${id}` });
      const href = safeHref(url);
      notice.onclick = () => {
        window.focus();
        if (href) location.assign(href);
        notice.close();
      };
    } catch {
      // Some mobile browsers only allow notifications from a service worker.
    }
  };

  const present = (frame) => {
    if (frame.id === undefined || wants(client.preferences, frame, "toast")) showToast(frame);
    showDesktop(frame);
  };

  const presentSummary = (count) => {
    const summary = {
      level: "info",
      title: `${count} more notification${count === 1 ? "" : "s"} while you were away`,
      url: inboxUrl ?? "",
      linkText: "Open inbox",
    };
    present(summary);
  };

  // Toast rule. A live notification always toasts unless it was already read (in another tab,
  // say). A replayed one toasts only when it is newer than what this tab has already shown:
  // ids at or below the cursor the page was rendered with (or below what this tab handled on
  // an earlier page, which matters when the back button re-runs a cached page) are reflected
  // in the page already - its inbox rows and badge - so toasting them would repeat old news.
  // Ids above it arrived while this page had no socket (between the render and the first
  // connect, or during a network drop, a sleep or a server restart): the user has not seen
  // them, so they toast. The client itself already drops ids at or below the page cursor.
  const seenByTab = Number(readStorage("sessionStorage", SEEN_KEY)) || 0;
  const toastFloor = Math.max(client.pageCursor ?? 0, seenByTab);
  const shouldToast = (frame) =>
    frame.read !== true && (frame.replay !== true || frame.id > toastFloor);

  // A replay after a long absence can hold hundreds of events: show the newest few and one
  // summary instead of a wall of toasts.
  const REPLAY_TOASTS = 3;
  let batch = [];
  const flushBatch = () => {
    const shown = batch.slice(-REPLAY_TOASTS);
    const more = batch.length - shown.length;
    batch = [];
    if (more > 0) presentSummary(more);
    for (const frame of shown) present(frame);
  };

  on(client, "notification", (event) => {
    const frame = event.detail;
    writeStorage("sessionStorage", SEEN_KEY, String(Math.max(seenByTab, client.lastId)));
    if (!shouldToast(frame)) return;
    if (frame.replay === true && client.replaying) batch.push(frame);
    else present(frame);
  });
  on(client, "replayed", flushBatch);
  on(client, "reload-needed", () => {
    showToast({
      level: "warning",
      title: "Some notifications could not be replayed",
      body: "Your inbox has all of them.",
      url: inboxUrl ?? "",
      linkText: "Open inbox",
    });
  });
  on(client, "unread", (event) => renderBadges(event.detail.count));
  on(client, "state", (event) => {
    renderState(event.detail.state);
    if (event.detail.state !== "open" && batch.length) flushBatch(); // a replay cut short
  });

  // Desktop opt-in button --------------------------------------------------------------------

  const renderOptIn = () => {
    for (const button of document.querySelectorAll("[data-notifications-desktop-optin]")) {
      if (!desktopSupported()) {
        button.hidden = true;
        button.dataset.desktopState = "unsupported";
        continue;
      }
      button.hidden = false;
      const permission = Notification.permission;
      const enabled = client.desktop && permission === "granted";
      button.dataset.desktopState = permission === "denied" ? "denied" : enabled ? "on" : "off";
      button.disabled = permission === "denied";
      button.setAttribute("aria-pressed", String(enabled));
      button.textContent =
        permission === "denied"
          ? "Desktop notifications are blocked in this browser"
          : enabled
            ? "Turn off desktop notifications"
            : "Turn on desktop notifications";
    }
  };
  on(document, "click", async (event) => {
    const button = event.target.closest?.("[data-notifications-desktop-optin]");
    if (!button || !desktopSupported()) return;
    if (client.desktop && Notification.permission === "granted") {
      client.desktop = false;
    } else {
      client.desktop = (await requestPermission()) === "granted";
    }
    writeStorage("localStorage", DESKTOP_PREF_KEY, client.desktop ? "on" : "off");
    renderOptIn();
  });

  // Async forms: posting them in the background keeps this page, its socket and the toast
  // that the action causes. Without JavaScript, or while not live, they submit normally.
  on(document, "submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.matches("[data-notifications-async]")) return;
    if (event.defaultPrevented || client.state !== "open") return;
    event.preventDefault();
    const buttons = form.querySelectorAll("button, input[type=submit]");
    for (const button of buttons) button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: (form.getAttribute("method") || "post").toUpperCase(),
        body: new FormData(form),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        showToast({ level: "error", title: answer.error || `Request failed (${response.status})` });
      } else {
        form.reset();
        form.dispatchEvent(new CustomEvent("notifications:submitted", { bubbles: true, detail: answer }));
      }
    } catch {
      form.submit(); // network trouble: fall back to a normal post
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  });

  renderBadges(client.unread);
  renderState(client.state);
  renderOptIn();
  return () => controller.abort();
}

/**
 * Create, bind and start the client from `<script id="notifications-config">`, expose it as
 * `window.notifications` and announce it with a `notifications:ready` event on document.
 * Calling it again returns the same client.
 */
export function autostart(overrides = {}) {
  if (window.notifications instanceof NotificationClient) return window.notifications;
  let config = {};
  const element = document.getElementById("notifications-config");
  if (element) {
    try {
      config = JSON.parse(element.textContent) ?? {};
    } catch (error) {
      console.error("notifications: the config is not valid JSON", error);
    }
  }
  // What the connection needs, wherever it is held (this tab, a SharedWorker, the leader tab).
  const connection = {
    url: config.url || undefined,
    sseUrl: config.sse || undefined,
    csrf: config.csrf ?? null,
    language: config.language ?? null,
    ...(window.notificationsOptions ?? {}),
  };
  const client = new NotificationClient({
    ...connection,
    cursor: config.cursor,
    unread: config.unread,
    user: config.user ?? null,
    desktop: desktopPreference(),
    remote: shareConnection(config.share ?? "auto", connection),
    ...overrides,
  });
  client.preferences = config.preferences ?? null;
  client.addEventListener("preferences", (event) => {
    const { muted_topics, toast_levels, desktop_levels } = event.detail;
    client.preferences = { muted_topics, toast_levels, desktop_levels };
  });
  bindUI(client, { inboxUrl: config.inbox ?? null });
  if (config.user) {
    bindFeed(client, {
      inboxUrl: config.inbox ?? null,
      preferencesUrl: config.preferences_url ?? null,
      unseen: config.unseen ?? 0,
    });
  }
  window.notifications = client;
  // Announce before starting, so listeners are in place before the first frame.
  document.dispatchEvent(new CustomEvent("notifications:ready", { detail: { client } }));
  client.start();
  return client;
}

/**
 * Where this tab's connection lives: `"auto"` (a SharedWorker where there is one, else leader
 * election over BroadcastChannel and Web Locks, else this tab), `"worker"`, `"leader"` or
 * `"none"` (one connection per tab). Returns the remote for NotificationClient, or null.
 */
function shareConnection(mode, connection) {
  try {
    if ((mode === "auto" || mode === "worker") && typeof SharedWorker === "function") {
      return workerRemote(new URL("./worker.js", import.meta.url), connection);
    }
    if (
      (mode === "auto" || mode === "leader") &&
      typeof BroadcastChannel === "function" &&
      navigator.locks?.request
    ) {
      return leaderRemote(connection);
    }
  } catch (error) {
    console.warn("notifications: cannot share the connection; this tab opens its own", error);
  }
  return null;
}

function autostartFromPage() {
  const element = document.getElementById("notifications-config");
  if (element && element.dataset.autostart !== "false") autostart();
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", autostartFromPage, { once: true });
  } else {
    autostartFromPage();
  }
}
