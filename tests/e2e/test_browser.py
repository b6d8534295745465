"""Visitor flows in real headless Chromium against the real server."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from notifications import notify

from .conftest import watch

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

# notify() in the test process reaches the server through the database poll (POLL_INTERVAL,
# 1 s by default): a few seconds is the deadline, not an expected latency.
DEADLINE_MS = 8_000


def open_home(context, server, errors):
    page = context.new_page()
    watch(page, errors)
    page.goto(server.origin + "/")
    expect(page.locator("[data-notifications-state]")).to_have_attribute(
        "data-state", "open", timeout=DEADLINE_MS
    )
    return page


def test_toast_and_badge_after_notify(site_server, signed_in, make_user, page_errors):
    alice = make_user("alice")
    notify(alice, "Before the page")  # rendered in the badge, never a toast
    page = open_home(signed_in(alice), site_server, page_errors)
    badge = page.locator("[data-notifications-badge]")
    expect(badge).to_have_text("1")

    event = notify(
        alice, "Invoice paid", body="<b>not markup</b>", url="/notifications/", level="success"
    )
    toast = page.locator(f'.nt-toast[data-notification-id="{event.id}"]')
    expect(toast).to_be_visible(timeout=DEADLINE_MS)
    expect(toast).to_have_class(re.compile("nt-toast--success"))
    expect(toast.locator(".nt-toast__title")).to_have_text("Invoice paid")
    expect(toast.locator(".nt-toast__body")).to_have_text("<b>not markup</b>")  # text, not HTML
    expect(badge).to_have_text("2")
    assert page.locator(".nt-toast").count() == 1
    assert page_errors == []


def test_demo_form_sends_a_live_notification(site_server, signed_in, make_user, page_errors):
    page = open_home(signed_in(make_user("alice")), site_server, page_errors)
    page.fill("#demo-title", "Sent from the page")
    page.select_option("#demo-level", "warning")
    page.click("#demo-send-form button")
    toast = page.locator(".nt-toast", has_text="Sent from the page")
    expect(toast).to_be_visible(timeout=DEADLINE_MS)
    expect(toast).to_have_class(re.compile("nt-toast--warning"))
    expect(page.locator("[data-notifications-badge]")).to_have_text("1")
    assert page_errors == []


def test_second_tab_badge_follows_mark_read(site_server, signed_in, make_user, page_errors):
    alice = make_user("alice")
    context = signed_in(alice)
    first = open_home(context, site_server, page_errors)
    second = open_home(context, site_server, page_errors)
    notify(alice, "One")
    notify(alice, "Two")
    for page in (first, second):
        expect(page.locator("[data-notifications-badge]")).to_have_text("2", timeout=DEADLINE_MS)

    first.goto(site_server.origin + "/notifications/")
    expect(first.locator("[data-notifications-state]")).to_have_attribute("data-state", "open")
    rows = first.locator("[data-inbox-list] li.nt-row.unread")
    expect(rows).to_have_count(2)
    rows.first.locator("[data-inbox-mark-read] button").click()
    expect(second.locator("[data-notifications-badge]")).to_have_text("1", timeout=DEADLINE_MS)

    first.locator("[data-inbox-mark-all] button").click()
    expect(second.locator("[data-notifications-badge]")).to_be_hidden(timeout=DEADLINE_MS)
    expect(first.locator("[data-notifications-badge]")).to_be_hidden()
    assert page_errors == []


def test_reconnects_after_restart_and_shows_missed_once(
    site_server, signed_in, make_user, page_errors
):
    alice = make_user("alice")
    page = open_home(signed_in(alice), site_server, page_errors)
    state = page.locator("[data-notifications-state]")
    seen = notify(alice, "Seen live")
    expect(page.locator(f'[data-notification-id="{seen.id}"]')).to_be_visible(timeout=DEADLINE_MS)

    site_server.stop()
    expect(state).not_to_have_attribute("data-state", "open", timeout=DEADLINE_MS)
    missed = notify(alice, "Sent while the server was down")
    site_server.start()

    expect(state).to_have_attribute("data-state", "open", timeout=30_000)
    toast = page.locator(f'.nt-toast[data-notification-id="{missed.id}"]')
    expect(toast).to_be_visible(timeout=DEADLINE_MS)
    expect(toast.locator(".nt-toast__title")).to_have_text("Sent while the server was down")
    expect(page.locator("[data-notifications-badge]")).to_have_text("2")
    # Once: neither the replay nor a later live frame shows it again.
    after = notify(alice, "After the restart")
    expect(page.locator(f'[data-notification-id="{after.id}"]')).to_be_visible(timeout=DEADLINE_MS)
    assert page.locator(f'[data-notification-id="{missed.id}"]').count() == 1
    assert page.locator(f'[data-notification-id="{seen.id}"]').count() <= 1
    expect(page.locator("[data-notifications-badge]")).to_have_text("3")
    assert page_errors == []


def test_anonymous_visitor_gets_announcements(browser, site_server, make_user, page_errors):
    context = browser.new_context()
    try:
        page = open_home(context, site_server, page_errors)
        expect(page.locator("[data-notifications-badge]")).to_be_hidden()
        notify(make_user("alice"), "Private to alice")
        event = notify("everyone", "Site maintenance at 22:00", level="warning")
        expect(page.locator(f'[data-notification-id="{event.id}"]')).to_be_visible(
            timeout=DEADLINE_MS
        )
        assert page.locator(".nt-toast", has_text="Private to alice").count() == 0
        assert page_errors == []
    finally:
        context.close()


def test_inbox_works_without_javascript(browser, site_server, make_user):
    alice = make_user("alice")
    first = notify(alice, "First")
    notify(alice, "Second")
    from ..support import session_cookie

    context = browser.new_context(java_script_enabled=False)
    try:
        name, _, value = session_cookie(alice).partition("=")
        context.add_cookies([{"name": name, "value": value, "url": site_server.origin}])
        page = context.new_page()
        page.goto(site_server.origin + "/notifications/")
        expect(page.locator("li.nt-row.unread")).to_have_count(2)
        page.locator(f'li[data-event-id="{first.id}"] [data-inbox-mark-read] button').click()
        expect(page.locator("li.nt-row.unread")).to_have_count(1)
        expect(page.locator(f'li[data-event-id="{first.id}"]')).to_have_class(re.compile("read"))
        page.locator("[data-inbox-mark-all] button").click()
        expect(page.locator("li.nt-row.unread")).to_have_count(0)
    finally:
        context.close()
