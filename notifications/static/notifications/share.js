/**
 * One connection per browser, shared by the tabs of this origin (docs/client.md, "Sharing").
 *
 * A Relay holds the one real NotificationClient and serves any number of tabs. It lives in a
 * SharedWorker (worker.js) where the browser has one; otherwise in the tab that holds the
 * Web Lock "notifications.leader", talking to the others over a BroadcastChannel. Every tab's
 * own client runs in "remote" mode: it receives the relay's frames and processes them as if
 * they came from its own socket, so each tab keeps its own duplicate check (its highest id),
 * toasts, badge and feed. When the leader tab closes, the lock passes to another tab, whose
 * relay connects from the lowest cursor of the tabs: missed events are replayed, and each tab
 * drops what it already has. Nothing is lost, nothing shows twice.
 */

import { NotificationClient } from "./notifications.js";

const BUFFER = 300; // recent notifications a late tab can catch up from
const GATHER_MS = 40; // a new relay waits this long for every tab to attach
const REF = /^t([A-Za-z0-9]+):([ns])(.*)$/s;

function tabId() {
  return Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
}

/** The real connection and the tabs it serves. */
export class Relay {
  #options;
  #client = null;
  #tabs = new Map(); // tab id -> {post, cursor}
  #buffer = [];
  #openTimer = null;

  /** @param {object} options NotificationClient options shared by the tabs (url, csrf, ...) */
  constructor(options = {}) {
    this.#options = options;
  }

  get tabs() {
    return this.#tabs.size;
  }

  attach(tab, info = {}, post) {
    this.#tabs.set(tab, { post, cursor: Number.isSafeInteger(info.cursor) ? info.cursor : null, info });
    const client = this.#client;
    if (!client) {
      // Wait a moment for the other tabs (after a leader change they all attach at once), so
      // the connection resumes from the oldest cursor among them.
      if (this.#openTimer === null) this.#openTimer = setTimeout(() => this.#open(), GATHER_MS);
      return;
    }
    post({ type: "state", state: client.state });
    if (client.state !== "open") return; // the next hello brings the tab up to date
    const cursor = info.cursor ?? 0;
    for (const frame of this.#buffer) {
      if (frame.id > cursor) post({ type: "frame", frame: { ...frame, replay: true }, resumed: false });
    }
    if (client.unread !== null) post({ type: "frame", frame: { type: "unread", count: client.unread } });
  }

  detach(tab) {
    this.#tabs.delete(tab);
    if (this.#tabs.size) return;
    clearTimeout(this.#openTimer);
    this.#openTimer = null;
    this.#client?.stop();
    this.#client = null;
    this.#buffer = [];
  }

  /** A frame from a tab: its `ref` is made unique to the tab and restored in the answer. */
  send(tab, frame) {
    const client = this.#client;
    const post = this.#tabs.get(tab)?.post;
    const calls = {
      // The relay's own client follows an anonymous visitor's topics again after each
      // reconnect (they last one connection on the server), and reads over the JSON API
      // when it is on the event stream (which carries nothing upstream).
      subscribe: () => client.subscribe(frame.topic, { cursor: frame.cursor }),
      unsubscribe: () => client.unsubscribe(frame.topic),
      read: () => client.markRead(frame.ids),
      read_all: () => client.markAllRead(),
    };
    if (client && post && Object.hasOwn(calls, frame.type)) {
      const call = calls[frame.type]();
      const answer = (out) => post({ type: "frame", frame: { ...out, ref: frame.ref } });
      call.then(answer, (error) => {
        const code = error?.code ?? "internal_error";
        answer(error?.frame ?? { type: "error", code, message: String(error?.message ?? error) });
      });
      return true;
    }
    const copy = { ...frame };
    if (copy.ref !== undefined) {
      copy.ref = `t${tab}:${typeof copy.ref === "number" ? "n" : "s"}${copy.ref}`;
    }
    return this.#client?.send(copy) ?? false;
  }

  #open() {
    this.#openTimer = null;
    if (!this.#tabs.size) return;
    const infos = [...this.#tabs.values()].map((tab) => tab.info);
    const cursors = infos.map((info) => info.cursor).filter(Number.isSafeInteger);
    const first = infos[0];
    const client = new NotificationClient({
      ...this.#options,
      cursor: cursors.length ? Math.min(...cursors) : undefined,
      unread: first.unread,
      user: first.user ?? null,
    });
    this.#client = client;
    client.addEventListener("frame", (event) => this.#forward(event.detail));
    client.addEventListener("state", (event) => this.#broadcast({ type: "state", state: event.detail.state }));
    client.start();
  }

  #broadcast(message) {
    for (const { post } of this.#tabs.values()) post(message);
  }

  #forward(frame) {
    if (frame.type === "pong") return;
    if (frame.type === "notification" && Number.isSafeInteger(frame.id)) {
      this.#buffer.push(frame);
      if (this.#buffer.length > BUFFER) this.#buffer.shift();
    }
    const resumed = frame.type === "hello" ? this.#client?.cursor !== null : false;
    const match = typeof frame.ref === "string" ? REF.exec(frame.ref) : null;
    for (const [tab, { post }] of this.#tabs) {
      let out = frame;
      if (match) {
        if (tab === match[1]) {
          out = { ...frame, ref: match[2] === "n" ? Number(match[3]) : match[3] };
        } else if (frame.type === "unread") {
          out = { ...frame }; // other tabs learn the count too, as other sockets would
          delete out.ref;
        } else {
          continue;
        }
      } else if (frame.ref !== undefined) {
        // An answer to the relay's own request (a keepalive, a resume, a tab's subscribe,
        // which is answered above): only what changes every tab's state goes on.
        if (frame.type !== "unread" && frame.type !== "replayed") continue;
        out = { ...frame };
        delete out.ref;
      }
      post({ type: "frame", frame: out, resumed });
    }
  }
}

/** A tab's side of a SharedWorker relay. */
export function workerRemote(workerUrl, options) {
  const worker = new SharedWorker(workerUrl, { type: "module", name: "notifications" });
  const port = worker.port;
  const tab = tabId();
  let client = null;
  port.onmessage = (event) => client?.receiveRemote(event.data);
  port.start();
  const attach = () =>
    port.postMessage({ type: "attach", tab, options, info: { cursor: client.cursor, unread: client.unread, user: client.user } });
  addEventListener("pagehide", () => port.postMessage({ type: "detach", tab }));
  addEventListener("pageshow", (event) => {
    if (event.persisted && client) attach(); // back from the back-forward cache
  });
  return {
    kind: "worker",
    attach(c) {
      client = c;
      attach();
    },
    send(frame) {
      port.postMessage({ type: "send", tab, frame });
    },
    detach() {
      port.postMessage({ type: "detach", tab });
    },
  };
}

/** A tab's side of leader election: the lock holder runs the relay for every tab. */
export function leaderRemote(options, { name = "notifications" } = {}) {
  const tab = tabId();
  const channel = new BroadcastChannel(name);
  let client = null;
  const info = () => ({ cursor: client.cursor, unread: client.unread, user: client.user });
  const toRelay = (message) => channel.postMessage({ ...message, to: "relay", tab });
  channel.onmessage = (event) => {
    const message = event.data;
    if (!message || (message.to !== tab && message.to !== "*")) return;
    if (message.type === "relay") {
      if (client) toRelay({ type: "attach", info: info() }); // a new leader: attach to it
      return;
    }
    client?.receiveRemote(message);
  };

  const lead = () => {
    const relay = new Relay(options);
    const relayChannel = new BroadcastChannel(name);
    relayChannel.onmessage = (event) => {
      const message = event.data;
      if (!message || message.to !== "relay") return;
      if (message.type === "attach") {
        relay.attach(message.tab, message.info, (out) => relayChannel.postMessage({ ...out, to: message.tab }));
      } else if (message.type === "send") {
        relay.send(message.tab, message.frame);
      } else if (message.type === "detach") {
        relay.detach(message.tab);
      }
    };
    relayChannel.postMessage({ type: "relay", to: "*" });
    document.documentElement.dataset.notificationsLeader = "";
  };
  // Held until this document goes away; the browser then grants it to the next tab waiting.
  navigator.locks.request(`${name}.leader`, () => {
    lead();
    return new Promise(() => {});
  });
  addEventListener("pagehide", () => toRelay({ type: "detach" }));
  return {
    kind: "leader",
    attach(c) {
      client = c;
      toRelay({ type: "attach", info: info() });
    },
    send(frame) {
      toRelay({ type: "send", frame });
    },
    detach() {
      toRelay({ type: "detach" });
    },
  };
}
