/**
 * The admin's "Online now" page, live over the staff member's own socket: the page opens a
 * NotificationClient, sends `watch_presence` after each `hello`, and renders every `presence`
 * frame (one per presence report of the server process, every PRESENCE_INTERVAL). While the
 * socket is not open it falls back to reading the JSON view at the same interval.
 */
import { NotificationClient } from "./notifications.js";

const root = document.querySelector("[data-presence-url]");

const cell = (name) => root.querySelector(`[data-presence="${name}"]`);

const row = (values) => {
  const tr = document.createElement("tr");
  for (const value of values) {
    const td = document.createElement("td");
    td.textContent = String(value);
    tr.append(td);
  }
  return tr;
};

const render = (data) => {
  for (const name of ["online_users", "anonymous", "connections"]) {
    cell(name).textContent = String(data[name]);
  }
  const processes = data.processes.map((p) => row([p.process, p.connections, p.users, p.anonymous]));
  cell("processes").replaceChildren(
    ...(processes.length ? processes : [row(["No server process is reporting."])]),
  );
  const users = data.users.map((name) => {
    const li = document.createElement("li");
    li.textContent = name;
    return li;
  });
  cell("users").replaceChildren(...users);
};

const refresh = async () => {
  try {
    const response = await fetch(root.dataset.presenceUrl, { credentials: "same-origin" });
    if (response.ok) render(await response.json());
  } catch {
    // The next tick tries again.
  }
};

if (root) {
  const setMode = (mode) => {
    root.dataset.live = mode;
    const label = root.querySelector("[data-presence-mode]");
    if (label) {
      label.textContent =
        mode === "socket" ? "Live over your connection." : "Refreshing every few seconds.";
    }
  };
  setMode("polling");
  const client = new NotificationClient({});
  client.addEventListener("hello", () => client.send({ type: "watch_presence" }));
  client.addEventListener("frame", (event) => {
    const frame = event.detail;
    if (frame.type === "presence") {
      setMode("socket");
      render(frame);
    }
  });
  client.addEventListener("state", (event) => {
    if (event.detail.state !== "open") setMode("polling");
  });
  client.start();
  setInterval(() => {
    if (root.dataset.live !== "socket") refresh();
  }, Number(root.dataset.interval) || 2000);
}
