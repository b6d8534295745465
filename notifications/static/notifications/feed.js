/**
 * The feed that opens from the bell (docs/client.md, "The feed"): recent notifications with
 * unread ones highlighted, unread/all tabs, a topic filter, infinite scroll through the JSON
 * inbox API, mark read / unread / archive per row, mark all read, and a preferences panel.
 *
 * Without JavaScript the bell stays a link to the inbox page. With it, the bell opens this
 * panel (a non-modal dialog): Escape closes it and gives focus back to the bell; Up/Down move
 * between rows, Home/End to the first and last; Left/Right switch the tabs; Tab goes through
 * every control in order. Everything is built with textContent, never HTML strings.
 */

import { safeHref, wants } from "./notifications.js";

const LEVELS = ["info", "success", "warning", "error"];
const LEVEL_LABELS = { info: "Info", success: "Success", warning: "Warning", error: "Error" };
let instances = 0;

function h(tag, attributes = {}, text = null) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) element.setAttribute(name, value === true ? "" : value);
  }
  if (text !== null) element.textContent = text;
  return element;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : timeFormat.format(date);
}

/** "Ann", "Ann and Bob", "Ann and 24 others": who acted in a group (newest first). */
export function groupLabel(group) {
  const actors = Array.isArray(group?.actors) ? group.actors : [];
  const total = Math.max(group?.actor_count ?? 0, actors.length);
  if (!actors.length) return "";
  if (total === 1) return actors[0];
  if (total === 2 && actors.length === 2) return `${actors[0]} and ${actors[1]}`;
  const others = total - 1;
  return `${actors[0]} and ${others} other${others === 1 ? "" : "s"}`;
}

const plainClick = (event) =>
  event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey;

/**
 * Turn the bell (`[data-notifications-bell]`) into the button of a feed panel. Returns a
 * function that removes the panel and its listeners.
 */
export function bindFeed(client, { inboxUrl = null, preferencesUrl = null, unseen = 0, pageSize = 20 } = {}) {
  const bell = document.querySelector("[data-notifications-bell]");
  if (!bell) return () => {};
  const prefix = `nt-feed${instances++ || ""}`;
  const controller = new AbortController();
  const { signal } = controller;
  const on = (target, type, listener) => target.addEventListener(type, listener, { signal });

  // The new-items indicator: events nobody showed the user yet (seen is not read).
  let unseenCount = Number.isSafeInteger(unseen) ? unseen : 0;
  const dot = h("span", { class: "nt-bell__new", "data-notifications-unseen": "", hidden: true });
  bell.append(dot);
  const renderUnseen = () => {
    dot.hidden = unseenCount <= 0;
    dot.dataset.count = String(Math.max(0, unseenCount));
  };

  // The panel -------------------------------------------------------------------------------
  const panel = h("div", {
    class: "nt-feed",
    id: prefix,
    role: "dialog",
    "aria-labelledby": `${prefix}-title`,
    "data-notifications-feed": "",
    tabindex: "-1",
    hidden: true,
  });
  const head = h("div", { class: "nt-feed__head" });
  head.append(h("h2", { class: "nt-feed__title", id: `${prefix}-title` }, "Notifications"));
  const markAll = h("button", { type: "button", class: "nt-button nt-button--small", "data-feed-mark-all": "" }, "Mark all read");
  const settingsButton = h("button", {
    type: "button",
    class: "nt-button nt-button--small",
    "aria-expanded": "false",
    "aria-controls": `${prefix}-prefs`,
    "data-feed-settings": "",
  }, "Preferences");
  head.append(markAll, settingsButton);

  const tools = h("div", { class: "nt-feed__tools" });
  const tablist = h("div", { role: "tablist", "aria-label": "Which notifications", class: "nt-feed__tabs" });
  const tabs = {};
  for (const [key, label] of [["unread", "Unread"], ["all", "All"]]) {
    tabs[key] = h("button", {
      type: "button",
      role: "tab",
      id: `${prefix}-tab-${key}`,
      "aria-controls": `${prefix}-panel`,
      "aria-selected": "false",
      tabindex: "-1",
      class: "nt-feed__tab",
      "data-feed-tab": key,
    }, label);
    tablist.append(tabs[key]);
  }
  const topicLabel = h("label", { class: "nt-feed__topic", for: `${prefix}-topic` }, "Topic ");
  const topicSelect = h("select", { id: `${prefix}-topic`, "data-feed-topic": "" });
  topicSelect.append(h("option", { value: "" }, "All topics"));
  topicLabel.append(topicSelect);
  tools.append(tablist, topicLabel);

  const body = h("div", { class: "nt-feed__body", id: `${prefix}-panel`, role: "tabpanel", "aria-labelledby": `${prefix}-tab-all` });
  const list = h("ul", { class: "nt-feed__list", "aria-label": "Notifications", "data-feed-list": "" });
  const more = h("p", { class: "nt-feed__more", "data-feed-more": "", hidden: true }, "Loading…");
  const empty = h("p", { class: "nt-feed__empty", "data-feed-empty": "", hidden: true }, "Nothing here.");
  const status = h("p", { class: "nt-visually-hidden", role: "status", "aria-live": "polite" });
  body.append(list, more, empty);

  const prefs = h("form", { class: "nt-feed__prefs", id: `${prefix}-prefs`, "data-feed-prefs": "", hidden: true, "aria-label": "Notification preferences" });

  const foot = h("div", { class: "nt-feed__foot" });
  if (inboxUrl) foot.append(h("a", { href: inboxUrl, "data-feed-inbox": "" }, "Open inbox"));
  if (preferencesUrl) foot.append(h("a", { href: preferencesUrl }, "All preferences"));
  panel.append(head, tools, prefs, body, foot, status);
  (bell.closest(".nt-bell-group") ?? bell.parentElement).append(panel);

  bell.setAttribute("aria-haspopup", "dialog");
  bell.setAttribute("aria-expanded", "false");
  bell.setAttribute("aria-controls", prefix);

  // State -------------------------------------------------------------------------------------
  let tab = "unread";
  let topic = "";
  let next = null; // `before` of the next page; null with `done`: no more
  let done = false;
  let loading = null;
  let generation = 0; // a filter change makes answers of older requests stale
  let loaded = false;
  let topics = null;

  const rows = () => Array.from(list.querySelectorAll("[data-event-id]"));
  const findRow = (id) => list.querySelector(`[data-event-id="${Number(id)}"]`);
  const matches = (item) => (!topic || item.topic === topic) && (tab === "all" || !item.read);

  const renderEmpty = () => {
    empty.hidden = !(done && rows().length === 0);
    empty.textContent = tab === "unread" ? "You are all caught up." : "No notifications yet.";
  };

  const setRead = (row, read) => {
    row.classList.toggle("unread", !read);
    row.classList.toggle("read", read);
    row.dataset.read = String(read);
    const toggle = row.querySelector("[data-item-toggle-read]");
    if (toggle) {
      toggle.textContent = read ? "Mark unread" : "Mark read";
      toggle.setAttribute("aria-label", `${read ? "Mark unread" : "Mark read"}: ${row.dataset.title}`);
    }
    const state = row.querySelector("[data-item-state]");
    if (state) state.textContent = read ? "" : "Unread. ";
  };

  const renderMuted = (row) => {
    const muted = !wants({ muted_topics: client.preferences?.muted_topics ?? [] }, { topic: row.dataset.topic || null }, "toast");
    row.classList.toggle("nt-item--muted", muted);
    row.querySelector("[data-item-muted]")?.toggleAttribute("hidden", !muted);
  };

  const buildRow = (item) => {
    const level = LEVELS.includes(item.level) ? item.level : "info";
    const row = h("li", { class: "nt-item", "data-event-id": String(item.id), "data-level": level, "data-topic": item.topic ?? "" });
    row.dataset.title = item.title;
    const group = item.group && item.group.count > 1 ? item.group : null;
    if (item.group_key) row.dataset.groupKey = item.group_key;
    const href = safeHref(item.url);
    const open = href
      ? h("a", { class: "nt-item__open", href, "data-item-open": "" })
      : h("button", { class: "nt-item__open", type: "button", "data-item-open": "" });
    open.append(h("span", { class: "nt-visually-hidden", "data-item-state": "" }));
    open.append(h("span", { class: "nt-item__title" }, item.title));
    if (item.body) open.append(h("span", { class: "nt-item__body" }, item.body));
    if (group) {
      // "Ann and 24 others · 25 notifications": the group's newest row stands for all.
      const who = groupLabel(group);
      const text = `${who ? `${who} · ` : ""}${group.count} notifications${group.unread ? `, ${group.unread} unread` : ""}`;
      open.append(h("span", { class: "nt-item__group", "data-item-group": "", "data-count": String(group.count) }, text));
    }
    const meta = h("span", { class: "nt-item__meta" });
    meta.append(h("span", { class: `nt-item__level nt-item__level--${level}` }, LEVEL_LABELS[level]));
    if (item.topic) meta.append(h("span", { class: "nt-item__topic" }, `#${item.topic}`));
    meta.append(h("span", { class: "nt-item__muted", "data-item-muted": "", hidden: true }, "Muted"));
    meta.append(h("time", { datetime: item.created_at }, formatTime(item.created_at)));
    open.append(meta);
    const actions = h("span", { class: "nt-item__actions" });
    actions.append(
      h("button", { type: "button", class: "nt-item__action", "data-item-toggle-read": "" }),
      h("button", { type: "button", class: "nt-item__action", "data-item-archive": "", "aria-label": `Archive: ${item.title}` }, "Archive"),
    );
    row.append(open, actions);
    setRead(row, group ? group.unread === 0 : Boolean(item.read));
    renderMuted(row);
    return row;
  };

  /** Put a row where its id belongs (newest first); an id already shown is left alone. */
  const insertRow = (item) => {
    if (findRow(item.id)) return;
    if (item.group_key) {
      // One row per group: the newest stands for it.
      const shown = list.querySelector(`[data-group-key="${CSS.escape(item.group_key)}"]`);
      if (shown && Number(shown.dataset.eventId) > item.id) return;
      shown?.remove();
    }
    const before = rows().find((row) => Number(row.dataset.eventId) < item.id);
    list.insertBefore(buildRow(item), before ?? null);
  };

  const load = async ({ reset = false } = {}) => {
    if (reset) {
      generation += 1;
      list.replaceChildren();
      next = null;
      done = false;
      loading = null;
    }
    if (done || loading) return loading;
    const mine = generation;
    more.hidden = false;
    loading = client
      .api("", { query: { before: next, limit: pageSize, unread: tab === "unread" ? 1 : null, topic: topic || null, group: 1 } })
      .then((answer) => {
        if (mine !== generation) return;
        for (const item of answer.items) insertRow(item);
        next = answer.next;
        done = next === null;
        loaded = true;
      })
      .catch(() => {
        if (mine === generation) status.textContent = "Could not load notifications.";
      })
      .finally(() => {
        if (mine !== generation) return;
        loading = null;
        more.hidden = done;
        renderEmpty();
        // A short first page may not fill the panel: keep going while the end is in view.
        if (!done && isVisible(more)) load();
      });
    return loading;
  };

  const isVisible = (element) => {
    if (panel.hidden || element.hidden) return false;
    const box = element.getBoundingClientRect();
    const view = body.getBoundingClientRect();
    return box.top < view.bottom && box.bottom > view.top;
  };

  const observer = typeof IntersectionObserver === "function"
    ? new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) load();
    }, { root: body, rootMargin: "0px 0px 120px 0px" })
    : null;
  observer?.observe(more);
  on(body, "scroll", () => {
    if (!observer && body.scrollTop + body.clientHeight >= body.scrollHeight - 120) load();
  });

  const selectTab = (key, { focus = false } = {}) => {
    tab = key;
    for (const [name, button] of Object.entries(tabs)) {
      const selected = name === key;
      button.setAttribute("aria-selected", String(selected));
      button.tabIndex = selected ? 0 : -1;
    }
    body.setAttribute("aria-labelledby", tabs[key].id);
    if (focus) tabs[key].focus();
    load({ reset: true });
  };

  const loadTopics = async () => {
    if (topics) return topics;
    try {
      topics = (await client.api("/topics")).topics;
    } catch {
      return [];
    }
    for (const { slug, name } of topics) topicSelect.append(h("option", { value: slug }, name));
    return topics;
  };

  // Preferences panel ------------------------------------------------------------------------
  const renderPrefs = async () => {
    const current = client.preferences ?? (await client.api("/preferences").catch(() => null));
    if (!current) return;
    client.preferences ??= current;
    const all = await loadTopics();
    const group = (legend, name, options, checked) => {
      const fieldset = h("fieldset", { class: "nt-feed__fieldset" });
      fieldset.append(h("legend", {}, legend));
      for (const [value, label] of options) {
        const id = `${prefix}-${name}-${value}`;
        const box = h("input", { type: "checkbox", id, name, value, checked: checked.includes(value) });
        const wrap = h("span", { class: "nt-check" });
        wrap.append(box, h("label", { for: id }, label));
        fieldset.append(wrap);
      }
      return fieldset;
    };
    const levels = LEVELS.map((level) => [level, LEVEL_LABELS[level]]);
    prefs.replaceChildren(
      group("Show a toast for", "toast_levels", levels, current.toast_levels ?? LEVELS),
      group("Desktop notifications for", "desktop_levels", levels, current.desktop_levels ?? LEVELS),
    );
    if (all.length) {
      prefs.append(group("Mute topics", "muted_topics", all.map((t) => [t.slug, t.name]), current.muted_topics ?? []));
    }
    prefs.append(h("p", { class: "nt-feed__hint" }, "Muted topics make no toast or desktop notification; they stay in your inbox."));
  };
  on(prefs, "change", async () => {
    const values = (name) => Array.from(prefs.querySelectorAll(`input[name="${name}"]:checked`), (box) => box.value);
    const body = { toast_levels: values("toast_levels"), desktop_levels: values("desktop_levels") };
    if (prefs.querySelector('input[name="muted_topics"]')) body.muted_topics = values("muted_topics");
    try {
      const answer = await client.api("/preferences", { method: "PATCH", body });
      client.preferences = answer;
      for (const row of rows()) renderMuted(row);
      status.textContent = "Preferences saved.";
    } catch {
      status.textContent = "Could not save the preferences.";
    }
  });
  on(settingsButton, "click", async () => {
    const show = prefs.hidden;
    if (show) await renderPrefs();
    prefs.hidden = !show;
    settingsButton.setAttribute("aria-expanded", String(show));
    if (show) prefs.querySelector("input")?.focus();
  });

  // Open and close -------------------------------------------------------------------------
  const markSeen = () => {
    unseenCount = 0;
    renderUnseen();
    client.markSeen(client.lastId || null).catch(() => {});
  };

  const open = () => {
    if (!panel.hidden) return;
    panel.hidden = false;
    bell.setAttribute("aria-expanded", "true");
    if (!loaded) {
      loadTopics();
      selectTab(tab);
    }
    markSeen();
    panel.focus();
  };
  const close = ({ focusBell = true } = {}) => {
    if (panel.hidden) return;
    panel.hidden = true;
    bell.setAttribute("aria-expanded", "false");
    if (focusBell) bell.focus();
  };

  on(bell, "click", (event) => {
    if (!plainClick(event)) return; // a new tab still opens the inbox page
    event.preventDefault();
    if (panel.hidden) open();
    else close();
  });
  on(document, "click", (event) => {
    if (!panel.hidden && !panel.contains(event.target) && !bell.contains(event.target)) close({ focusBell: false });
  });

  // Keyboard -------------------------------------------------------------------------------
  const openers = () => Array.from(list.querySelectorAll("[data-item-open]"));
  on(panel, "keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close();
      return;
    }
    if (event.target.getAttribute("role") === "tab" && (event.key === "ArrowRight" || event.key === "ArrowLeft")) {
      event.preventDefault();
      selectTab(tab === "all" ? "unread" : "all", { focus: true });
      return;
    }
    if (!["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key)) return;
    if (event.target.tagName === "SELECT" || event.target.type === "checkbox") return;
    const items = openers();
    if (!items.length) return;
    event.preventDefault();
    const row = event.target.closest?.("[data-event-id]");
    const index = row ? items.indexOf(row.querySelector("[data-item-open]")) : -1;
    let target;
    if (event.key === "Home") target = 0;
    else if (event.key === "End") target = items.length - 1;
    else if (event.key === "ArrowDown") target = Math.min(index + 1, items.length - 1);
    else target = Math.max(index - 1, 0);
    items[target].focus();
    if (target === items.length - 1) load(); // the end of what is loaded: fetch more
  });
  on(bell, "keydown", (event) => {
    if (event.key === "Escape" && !panel.hidden) {
      event.preventDefault();
      close();
    }
  });

  // Row actions -------------------------------------------------------------------------------
  /** Mark a row read: its event, or every event of its group. */
  const readRow = (row) => {
    const key = row.dataset.groupKey;
    if (key && row.querySelector("[data-item-group]")) {
      return client.api("/read", { method: "POST", body: { group_key: key } }).then(() => refreshGroup(key));
    }
    return client.markRead([Number(row.dataset.eventId)]);
  };

  /** Read one group's row again (its counts changed): the newest event stands for it. */
  const refreshGroup = (key) =>
    client
      .api("", { query: { group: 1, group_key: key, limit: 1, unread: tab === "unread" ? 1 : null, topic: topic || null } })
      .then((answer) => {
        list.querySelector(`[data-group-key="${CSS.escape(key)}"]`)?.remove();
        for (const item of answer.items) insertRow(item);
        renderEmpty();
      });

  on(list, "click", async (event) => {
    const row = event.target.closest?.("[data-event-id]");
    if (!row) return;
    const id = Number(row.dataset.eventId);
    if (event.target.closest("[data-item-open]")) {
      if (!plainClick(event)) return;
      event.preventDefault();
      const href = event.target.closest("a[href]")?.href ?? null;
      if (row.dataset.read !== "true") {
        setRead(row, true);
        await Promise.race([readRow(row).catch(() => null), new Promise((r) => setTimeout(r, 1500))]);
      }
      if (href) location.assign(href);
    } else if (event.target.closest("[data-item-toggle-read]")) {
      const read = row.dataset.read !== "true";
      setRead(row, read);
      (read ? readRow(row) : client.markUnread([id])).catch(() => setRead(row, !read));
    } else if (event.target.closest("[data-item-archive]")) {
      const items = openers();
      const index = items.indexOf(row.querySelector("[data-item-open]"));
      row.remove();
      renderEmpty();
      (items[index + 1] ?? items[index - 1] ?? panel).focus();
      status.textContent = "Archived.";
      const key = row.dataset.groupKey;
      const request = key
        ? client.api("/archive", { method: "POST", body: { group_key: key } })
        : client.archive([id]);
      request.catch(() => load({ reset: true }));
    }
  });
  on(markAll, "click", () => {
    for (const row of rows()) setRead(row, true);
    client.markAllRead().catch(() => client.api("/read", { method: "POST", body: { all: true } }));
  });
  on(tablist, "click", (event) => {
    const button = event.target.closest("[data-feed-tab]");
    if (button && button.dataset.feedTab !== tab) selectTab(button.dataset.feedTab);
  });
  on(topicSelect, "change", () => {
    topic = topicSelect.value;
    load({ reset: true });
  });

  // Live updates (every tab: the inbox extension's frames) ------------------------------
  on(client, "notification", (event) => {
    const frame = event.detail;
    if (frame.read !== true && frame.replay !== true) {
      unseenCount += 1;
      if (!panel.hidden) markSeen();
      renderUnseen();
    }
    if (loaded && matches(frame)) {
      if (frame.group_key) {
        refreshGroup(frame.group_key).catch(() => {}); // the count stays live
      } else {
        insertRow({ ...frame, read: Boolean(frame.read) });
        renderEmpty();
      }
    }
  });
  on(client, "read_state", (event) => {
    const { ids, read, through } = event.detail;
    for (const row of rows()) {
      const id = Number(row.dataset.eventId);
      if ((Array.isArray(ids) && ids.includes(id)) || (Number.isSafeInteger(through) && id <= through)) {
        setRead(row, read !== false);
      }
    }
    if (read === false && loaded && !panel.hidden) load({ reset: true }); // an unread row may belong in the list now
  });
  on(client, "unread", (event) => {
    if (event.detail.count === 0) for (const row of rows()) setRead(row, true);
  });
  on(client, "archived", (event) => {
    const { ids, archived } = event.detail;
    if (archived) {
      for (const id of ids ?? []) findRow(id)?.remove();
      renderEmpty();
    } else if (loaded) {
      load({ reset: true });
    }
  });
  on(client, "seen", (event) => {
    if (event.detail.through >= client.lastId) {
      unseenCount = 0;
      renderUnseen();
    } else {
      client.api("/count").then((answer) => {
        unseenCount = answer.unseen ?? 0;
        renderUnseen();
      }, () => {});
    }
  });
  on(client, "preferences", () => {
    for (const row of rows()) renderMuted(row);
    if (!prefs.hidden) renderPrefs();
  });

  renderUnseen();
  return () => {
    controller.abort();
    observer?.disconnect();
    panel.remove();
    dot.remove();
  };
}
