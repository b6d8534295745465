/**
 * Live inbox: new notifications appear at the top of `[data-inbox-list]`, and the "mark read"
 * and "mark all read" forms go over the socket when it is open. Without JavaScript, or while
 * the socket is down, the page is a plain server-rendered list whose forms post normally.
 *
 * It talks to the client that notifications.js exposes as `window.notifications` (it does not
 * import that module: with hashed static file names an import could load a second copy).
 */

const LEVEL_LABELS = { info: "Info", success: "Success", warning: "Warning", error: "Error" };

function h(tag, attributes = {}, text = null) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) element.setAttribute(name, value);
  }
  if (text !== null) element.textContent = text;
  return element;
}

function safeHref(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const resolved = new URL(url, location.href);
    return resolved.protocol === "http:" || resolved.protocol === "https:" ? resolved.href : null;
  } catch {
    return null;
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** Show a <time datetime> in the reader's time zone (the server renders UTC). */
function localizeTime(element) {
  const date = new Date(element.dateTime);
  if (!Number.isNaN(date.getTime())) element.textContent = timeFormat.format(date);
}

function whenClient(callback) {
  if (window.notifications) callback(window.notifications);
  else {
    document.addEventListener("notifications:ready", (event) => callback(event.detail.client), {
      once: true,
    });
  }
}

function setup(inbox) {
  const list = inbox.querySelector("[data-inbox-list]");
  const notice = inbox.querySelector("[data-inbox-notice]");
  const pageNumber = Number(list.dataset.inboxPage) || 1;
  // Per-row form parts, taken from the server-rendered page so that new rows match it.
  const markReadUrl = list.dataset.markReadUrl; // the URL for event id 0
  const csrfToken = inbox.querySelector("input[name=csrfmiddlewaretoken]")?.value ?? "";

  for (const time of list.querySelectorAll("time[datetime]")) localizeTime(time);

  const rows = () => list.querySelectorAll("[data-event-id]");
  const findRow = (id) =>
    Array.from(rows()).find((row) => Number(row.dataset.eventId) === id) ?? null;

  /** The same markup as the server-rendered row in notifications/inbox.html. */
  const buildRow = (frame) => {
    const level = frame.level in LEVEL_LABELS ? frame.level : "info";
    const row = h("li", {
      class: `nt-row ${frame.read ? "read" : "unread"}`,
      "data-event-id": String(frame.id),
      "data-level": level,
    });
    row.append(h("span", { class: `nt-level nt-level--${level}` }, LEVEL_LABELS[level]));

    const main = h("div", { class: "nt-row__main" });
    const title = h("p", { class: "nt-row__title" });
    const href = safeHref(frame.url);
    if (href) title.append(h("a", { href }, frame.title));
    else title.textContent = frame.title;
    main.append(title);
    if (frame.body) main.append(h("p", { class: "nt-row__body" }, frame.body));
    const meta = h("p", { class: "nt-row__meta" });
    if (frame.topic) {
      meta.append(h("span", { class: "nt-row__topic", "data-topic": frame.topic }, `#${frame.topic}`));
    }
    const time = h("time", { datetime: frame.created_at });
    localizeTime(time);
    meta.append(time);
    main.append(meta);
    row.append(main);

    if (!frame.read && markReadUrl) {
      const index = markReadUrl.lastIndexOf("/0/");
      const action =
        index >= 0
          ? `${markReadUrl.slice(0, index)}/${frame.id}/${markReadUrl.slice(index + 3)}`
          : markReadUrl;
      const form = h("form", {
        class: "nt-row__action",
        method: "post",
        action,
        "data-inbox-mark-read": "",
      });
      form.append(
        h("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrfToken }),
        h("input", { type: "hidden", name: "next", value: location.pathname + location.search }),
        h("button", { type: "submit", class: "nt-button nt-button--small" }, "Mark read"),
      );
      row.append(form);
    }
    return row;
  };

  const showNotice = (parts) => {
    if (!notice) return;
    notice.replaceChildren(...parts);
    notice.hidden = false;
  };

  let missed = 0;
  const onNotification = (frame) => {
    if (findRow(frame.id)) return; // rendered by the server already (see views.inbox)
    if (pageNumber !== 1) {
      // Older pages stay as they are; point to the newest page instead.
      missed += 1;
      const first = new URL(location.href);
      first.searchParams.delete("page");
      showNotice([
        `${missed} new notification${missed === 1 ? "" : "s"}. `,
        h("a", { href: first.href, "data-inbox-newest": "" }, "Show the newest"),
      ]);
      return;
    }
    list.querySelector("[data-inbox-empty]")?.remove();
    // Keep newest first even if events arrive out of order across reconnects.
    const before = Array.from(rows()).find((row) => Number(row.dataset.eventId) < frame.id);
    list.insertBefore(buildRow(frame), before ?? null);
  };

  const markRowRead = (row) => {
    row.classList.remove("unread");
    row.classList.add("read");
    row.querySelector("[data-inbox-mark-read]")?.remove();
  };

  const renderUnread = (count) => {
    for (const element of inbox.querySelectorAll("[data-inbox-unread]")) {
      element.textContent = String(count ?? 0);
    }
  };

  whenClient((client) => {
    client.addEventListener("notification", (event) => onNotification(event.detail));
    client.addEventListener("unread", (event) => {
      const { count } = event.detail;
      if (count === null) return;
      renderUnread(count);
      // The `unread` frame carries no ids, so rows can only follow when nothing is unread.
      if (count === 0) for (const row of list.querySelectorAll(".nt-row.unread")) markRowRead(row);
    });
    // The inbox extension names the ids another tab (or the feed) marked read.
    client.addEventListener("read_state", (event) => {
      const { ids, read, through } = event.detail;
      if (read === false) return; // the row's form is gone; a reload shows it unread again
      for (const row of list.querySelectorAll(".nt-row.unread")) {
        const id = Number(row.dataset.eventId);
        if ((Array.isArray(ids) && ids.includes(id)) || (Number.isSafeInteger(through) && id <= through)) {
          markRowRead(row);
        }
      }
    });
    client.addEventListener("reload-needed", () => {
      showNotice([
        "Some notifications could not be delivered live. ",
        h("a", { href: location.href, "data-inbox-reload": "" }, "Reload the inbox"),
      ]);
    });

    // Forms: over the socket when it is open for a signed-in user, else a normal post.
    document.addEventListener("submit", (event) => {
      const form = event.target;
      if (!(form instanceof HTMLFormElement) || event.defaultPrevented) return;
      const single = form.matches("[data-inbox-mark-read]");
      if (!single && !form.matches("[data-inbox-mark-all]")) return;
      if (client.state !== "open" || client.unread === null) return;
      const row = single ? form.closest("[data-event-id]") : null;
      if (single && !row) return;

      event.preventDefault();
      const buttons = form.querySelectorAll("button");
      for (const button of buttons) button.disabled = true;
      const request = single
        ? client.markRead([Number(row.dataset.eventId)])
        : client.markAllRead();
      request
        .then(() => {
          if (single) {
            markRowRead(row);
            // The button that had focus is gone: keep focus nearby for keyboard users.
            row.setAttribute("tabindex", "-1");
            row.focus({ preventScroll: true });
          } else {
            for (const unread of list.querySelectorAll(".nt-row.unread")) markRowRead(unread);
          }
        })
        .catch(() => form.submit()) // the socket dropped or refused: the server does it over HTTP
        .finally(() => {
          for (const button of buttons) button.disabled = false;
        });
    });
  });
}

const inbox = document.querySelector("[data-inbox]");
if (inbox?.querySelector("[data-inbox-list]")) setup(inbox);
