/** The admin's "Online now" page: reload its figures from the JSON view at an interval. */
(function () {
  "use strict";
  const root = document.querySelector("[data-presence-url]");
  if (!root) return;
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
    cell("processes").replaceChildren(...(processes.length ? processes : [row(["No server process is reporting."])]));
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
  setInterval(refresh, Number(root.dataset.interval) || 2000);
})();
