/**
 * The broadcast composer in the admin (an ES module): a live preview drawn by the client's own
 * toastElement() (notifications.js), styled by notifications.css, the dry-run
 * recipient count with how many are online now, the "send a test to me" button, and the
 * audience fields shown only for the audience chosen. Nothing here saves the broadcast.
 */
import { toastElement } from "./notifications.js";

{

  const h = (tag, attributes = {}, text = null) => {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value !== null && value !== undefined) element.setAttribute(name, value);
    }
    if (text !== null) element.textContent = text;
    return element;
  };

  // The client's own toast (notifications.js), as a recipient's unread notification with an id
  // shows it: the preview is the real markup, not a copy of it.
  const toast = ({ level, title, body, url }) =>
    toastElement({ id: 0, level, title, body, url, read: false, data: {} }).toast;

  const value = (form, name) => form.elements[name]?.value ?? "";

  const debounce = (fn, ms) => {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  };

  const init = () => {
    const preview = document.querySelector("[data-console-preview]");
    const reach = document.querySelector("[data-console-reach]");
    const form = (preview || reach)?.closest("form");
    if (!form) return;

    const renderPreview = () => {
      if (!preview) return;
      let box = preview.querySelector(".nt-toasts");
      if (!box) {
        box = h("div", { class: "nt-toasts", "aria-live": "off" });
        preview.append(box);
      }
      const title = value(form, "title") || "Title";
      box.replaceChildren(
        toast({
          level: value(form, "level"),
          title,
          body: value(form, "body"),
          url: value(form, "url"),
        }),
      );
    };

    const AUDIENCE_FIELDS = { groups: "groups", users: "users", topic: "topic", permission: "permission" };
    const showAudienceFields = () => {
      const chosen = value(form, "audience");
      for (const [kind, field] of Object.entries(AUDIENCE_FIELDS)) {
        const row = form.querySelector(`.form-row.field-${field}, .fieldBox.field-${field}`);
        if (row) row.hidden = chosen !== kind;
      }
    };

    let generation = 0;
    const refreshReach = async () => {
      if (!reach) return;
      const mine = ++generation;
      reach.dataset.state = "loading";
      try {
        const response = await fetch(reach.dataset.url, {
          method: "POST",
          body: new FormData(form),
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        const answer = await response.json();
        if (mine !== generation) return; // a newer count is on its way
        if (answer.error) {
          reach.dataset.state = "error";
          reach.textContent = answer.error;
          return;
        }
        reach.dataset.state = "ready";
        reach.dataset.recipients = String(answer.recipients);
        reach.dataset.online = String(answer.online);
        reach.textContent =
          `${answer.recipients} recipient${answer.recipients === 1 ? "" : "s"}, ` +
          `${answer.online} online now`;
        if (answer.anonymous_connections !== null && answer.anonymous_connections !== undefined) {
          reach.append(
            h(
              "span",
              { class: "nt-console-note" },
              `Also delivered to ${answer.anonymous_connections} anonymous connection(s) open ` +
                "now. Anonymous visitors count as delivered connections, not as recipients.",
            ),
          );
        }
      } catch (error) {
        if (mine !== generation) return;
        reach.dataset.state = "error";
        reach.textContent = "The count could not be loaded.";
      }
    };
    const refreshSoon = debounce(refreshReach, 250);

    const testButton = document.querySelector("[data-console-test]");
    const testResult = document.querySelector("[data-console-test-result]");
    testButton?.addEventListener("click", async () => {
      testButton.disabled = true;
      try {
        const response = await fetch(testButton.dataset.url, {
          method: "POST",
          body: new FormData(form),
          credentials: "same-origin",
        });
        const answer = await response.json();
        testResult.textContent = answer.sent
          ? "Sent to you alone; it shows on your open pages of the site."
          : answer.error || `Failed (${response.status})`;
      } catch {
        testResult.textContent = "The test could not be sent.";
      } finally {
        testButton.disabled = false;
      }
    });

    form.addEventListener("input", (event) => {
      if (["title", "body", "url", "level"].includes(event.target.name)) renderPreview();
    });
    form.addEventListener("change", (event) => {
      if (event.target.name === "level") renderPreview();
      if (event.target.name === "audience") showAudienceFields();
      if (["audience", "groups", "users", "topic", "permission"].includes(event.target.name)) {
        refreshSoon();
      }
    });
    // The autocomplete widgets (select2) announce changes through jQuery only.
    if (window.django?.jQuery) {
      window.django.jQuery(form).on("change", "select", (event) => {
        if (["groups", "users", "topic"].includes(event.target.name)) refreshSoon();
      });
    }
    renderPreview();
    showAudienceFields();
    refreshReach();
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init, { once: true });
  } else {
    init();
  }
}
