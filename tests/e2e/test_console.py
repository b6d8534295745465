"""The staff console in real headless Chromium against the real server: compose with preview and
live count, schedule to a group, delivery on time to members only, read count, presence page.
Takes the screenshots of docs/admin.md."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from playwright.sync_api import expect

from notifications.models import Event

from .conftest import watch
from .test_browser import DEADLINE_MS, open_home

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

DOCS = Path(__file__).resolve().parents[2] / "docs"
TITLE = "Beta build 42 is out"

# A toast's shape: tags and classes, depth first (ids and timers left out).
SKELETON = """(root) => {
  const walk = (el) => [el.tagName, [...el.classList].sort().join(" "),
                        [...el.children].map(walk)];
  return walk(root);
}"""

# The wall-clock time at which the first toast with TITLE appears on the page.
WATCH_ARRIVAL = """(title) => {
  window.__arrived = null;
  new MutationObserver(() => {
    if (window.__arrived) return;
    for (const toast of document.querySelectorAll(".nt-toast__title")) {
      if (toast.textContent === title) window.__arrived = Date.now();
    }
  }).observe(document.body, { childList: true, subtree: true });
}"""


def test_staff_composes_schedules_to_a_group_and_follows_up(
    site_server, signed_in, make_user, page_errors
):
    root = make_user("root", is_staff=True, is_superuser=True)
    member, outsider = make_user("member"), make_user("outsider")
    group = Group.objects.create(name="beta-testers")
    member.groups.add(group)
    member_page = open_home(signed_in(member), site_server, page_errors)
    outsider_page = open_home(signed_in(outsider), site_server, page_errors)
    for page in (member_page, outsider_page):
        page.evaluate(WATCH_ARRIVAL, TITLE)

    staff = signed_in(root).new_page()
    staff.set_viewport_size({"width": 1100, "height": 1400})
    watch(staff, page_errors)
    staff.goto(site_server.origin + "/admin/notifications/broadcast/add/")
    staff.fill("#id_title", TITLE)
    staff.fill("#id_body", "Install it from the beta channel and tell us what breaks.")
    staff.fill("#id_url", "/notifications/")
    staff.select_option("#id_level", "success")

    # The preview: the client's own toast markup and stylesheet, updated as one types.
    preview = staff.locator("[data-console-preview] .nt-toast")
    expect(preview).to_have_class(re.compile("nt-toast--success"))
    expect(preview.locator(".nt-toast__title")).to_have_text(TITLE)
    # As a recipient's unread toast: the title is the link that opens it (docs/client.md).
    expect(preview.locator(".nt-toast__title .nt-toast__open")).to_have_attribute(
        "href", site_server.origin + "/notifications/"
    )
    # Only the field of the chosen audience shows; the count follows the audience.
    reach = staff.locator("[data-console-reach]")
    expect(reach).to_have_attribute("data-recipients", "3")  # everyone: all three users
    expect(staff.locator(".form-row.field-groups")).to_be_hidden()
    staff.select_option("#id_audience", "groups")
    expect(staff.locator(".form-row.field-groups")).to_be_visible()
    expect(reach).to_have_attribute("data-state", "error")
    staff.locator(".form-row.field-groups .select2-selection").click()
    staff.locator(".form-row.field-groups .select2-search__field").fill("beta")
    staff.locator(".select2-results__option", has_text="beta-testers").click()
    expect(reach).to_have_attribute("data-recipients", "1")
    # The member's page is open: online now (presence reports every 2 s).
    expect(reach).to_have_attribute("data-online", "1", timeout=DEADLINE_MS)
    expect(reach).to_have_text("1 recipient, 1 online now")

    # "Send a test to me": to the member of staff alone, not the broadcast's send.
    staff.click("[data-console-test]")
    expect(staff.locator("[data-console-test-result]")).to_have_text(
        "Sent to you alone; it shows on your open pages of the site."
    )
    test_event = Event.objects.get(title=f"[Test] {TITLE}")
    assert list(test_event.recipients.values_list("user_id", flat=True)) == [root.pk]

    send_at = (timezone.now() + timedelta(seconds=8)).replace(microsecond=0)
    staff.fill("#id_send_at_0", send_at.strftime("%Y-%m-%d"))
    staff.fill("#id_send_at_1", send_at.strftime("%H:%M:%S"))
    staff.screenshot(path=str(DOCS / "screenshot-console-composer.png"), full_page=True)
    preview_shape = preview.evaluate(SKELETON)
    staff.click("input[name=_schedule]")
    expect(staff.locator(".messagelist")).to_contain_text(f"“{TITLE}” scheduled for")
    assert time.time() < send_at.timestamp(), "the test was too slow to schedule in time"

    # The member gets it on time (within 2 s of send_at); the outsider does not.
    toast = member_page.locator(".nt-toast", has_text=TITLE)
    expect(toast).to_be_visible(timeout=15_000)
    arrived = member_page.evaluate("window.__arrived") / 1000
    assert send_at.timestamp() <= arrived < send_at.timestamp() + 2, arrived - send_at.timestamp()
    # The preview drew the same markup the client builds for the real toast.
    assert preview_shape == toast.evaluate(SKELETON)
    outsider_page.wait_for_timeout(1500)  # a late copy would have arrived by now
    assert outsider_page.locator(".nt-toast", has_text=TITLE).count() == 0
    assert outsider_page.evaluate("window.__arrived") is None

    # Follow-up: 0 read, then 1 after the member opens the inbox and reads it.
    follow_up = staff.locator("a", has_text="follow-up").first
    staff.goto(site_server.origin + "/admin/notifications/broadcast/")
    follow_up.click()
    expect(staff.locator("[data-figure=read]")).to_have_text("0 of 1 (0.0%)")
    expect(staff.locator("[data-figure=send-at]")).to_contain_text(
        send_at.strftime("%Y-%m-%d %H:%M:%S")
    )
    expect(staff.locator("#not-read-by")).to_contain_text("member")
    member_page.goto(site_server.origin + "/notifications/")
    row = member_page.locator("[data-inbox-list] li.nt-row.unread", has_text=TITLE)
    row.locator("[data-inbox-mark-read] button").click()
    expect(member_page.locator("[data-inbox-list] li.nt-row.unread")).to_have_count(0)
    staff.reload()
    expect(staff.locator("[data-figure=read]")).to_have_text("1 of 1 (100.0%)")
    expect(staff.locator("[data-figure=delivered-live]")).to_contain_text(
        "1 users had an open connection when it went out"
    )
    staff.screenshot(path=str(DOCS / "screenshot-console-follow-up.png"), full_page=True)
    assert page_errors == []


def test_presence_page_updates_while_open(browser, site_server, signed_in, make_user, page_errors):
    root = make_user("root", is_staff=True, is_superuser=True)
    alice = make_user("alice")
    open_home(signed_in(alice), site_server, page_errors)
    staff = signed_in(root).new_page()
    staff.set_viewport_size({"width": 1100, "height": 800})
    watch(staff, page_errors)
    staff.goto(site_server.origin + "/admin/")
    staff.locator("a", has_text="Online now").first.click()
    # The page updates over the staff member's own socket (watch_presence).
    expect(staff.locator("[data-presence-url]")).to_have_attribute(
        "data-live", "socket", timeout=DEADLINE_MS
    )
    online = staff.locator("[data-presence=users]")
    expect(online).to_contain_text("alice", timeout=DEADLINE_MS)
    anonymous = staff.locator("[data-presence=anonymous]")
    expect(anonymous).to_have_text("0", timeout=DEADLINE_MS)
    visitor = browser.new_context()
    try:
        open_home(visitor, site_server, page_errors)
        # Without reloading the page: a pushed presence frame shows the new connection.
        expect(anonymous).to_have_text("1", timeout=DEADLINE_MS)
        expect(staff.locator("[data-presence=processes] tr")).to_have_count(1)
        staff.screenshot(path=str(DOCS / "screenshot-console-presence.png"), full_page=True)
    finally:
        visitor.close()
    assert page_errors == []
