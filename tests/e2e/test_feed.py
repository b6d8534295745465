"""The feed in the bell, toasts that open and mark read, and inbox state kept in step across
tabs, in headless Chromium against the real server."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from notifications import notify
from notifications.models import Subscription, Topic
from notifications.selectors import unread_count

from .conftest import watch
from .shots import screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

DEADLINE_MS = 8_000


@pytest.fixture
def shots(tmp_path):
    return screenshot_dir(tmp_path)


def open_page(context, server, errors, path="/"):
    page = context.new_page()
    watch(page, errors)
    page.goto(server.origin + path)
    expect(page.locator("[data-notifications-state]")).to_have_attribute(
        "data-state", "open", timeout=DEADLINE_MS
    )
    return page


def feed(page):
    return page.locator("[data-notifications-feed]")


def rows(page):
    return feed(page).locator("[data-feed-list] > li")


def test_feed_lists_highlights_and_opens(site_server, signed_in, make_user, page_errors, shots):
    alice = make_user("alice")
    old = notify(alice, "Old news")
    notify(alice, "Build failed", body="main is red", url="/notifications/", level="error")
    page = open_page(signed_in(alice), site_server, page_errors)
    bell = page.locator("[data-notifications-bell]")
    expect(page.locator("[data-notifications-unseen]")).to_be_visible()
    bell.click()
    expect(feed(page)).to_be_visible()
    expect(bell).to_have_attribute("aria-expanded", "true")
    expect(rows(page)).to_have_count(2)
    expect(rows(page).first).to_have_class(re.compile("unread"))
    # Opening the feed is "seen", not "read": the new-items dot goes, the badge stays.
    expect(page.locator("[data-notifications-unseen]")).to_be_hidden()
    expect(page.locator("[data-notifications-badge]")).to_have_text("2")
    page.screenshot(path=f"{shots}/feed-open.png")

    # All tab, then mark one read with its own button; the Unread tab drops it on reload.
    feed(page).locator('[data-feed-tab="all"]').click()
    expect(rows(page)).to_have_count(2)
    row = feed(page).locator(f'[data-event-id="{old.id}"]')
    row.locator("[data-item-toggle-read]").click()
    expect(row).to_have_class(re.compile(r"\bread\b"))
    expect(page.locator("[data-notifications-badge]")).to_have_text("1", timeout=DEADLINE_MS)
    feed(page).locator('[data-feed-tab="unread"]').click()
    expect(rows(page)).to_have_count(1)

    # A click opens the link and marks the notification read.
    rows(page).first.locator("[data-item-open]").click()
    page.wait_for_url(re.compile(r"/notifications/$"))
    assert unread_count(alice) == 0
    assert page_errors == []


def test_mark_all_topic_filter_and_infinite_scroll(site_server, signed_in, make_user, page_errors):
    alice = make_user("alice")
    topic = Topic.objects.create(name="Deploys", slug="deploys")
    Subscription.objects.create(user=alice, topic=topic)
    events = [notify(alice, f"Note {i}") for i in range(45)]
    deploy = notify(topic, "Deployed v2")
    page = open_page(signed_in(alice), site_server, page_errors)
    page.locator("[data-notifications-bell]").click()
    feed(page).locator('[data-feed-tab="all"]').click()
    expect(rows(page)).to_have_count(20)
    # Scrolling to the end loads the next pages (cursor paging by id).
    for expected in (40, 46):
        feed(page).locator("[data-feed-list] > li").last.scroll_into_view_if_needed()
        expect(rows(page)).to_have_count(expected, timeout=DEADLINE_MS)
    expect(feed(page).locator("[data-feed-more]")).to_be_hidden()
    ids = [int(i) for i in rows(page).evaluate_all("els => els.map(e => e.dataset.eventId)")]
    assert ids == sorted([e.id for e in events] + [deploy.id], reverse=True)

    feed(page).locator("[data-feed-topic]").select_option("deploys")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("Deployed v2")
    expect(rows(page).first).to_contain_text("#deploys")

    feed(page).locator("[data-feed-mark-all]").click()
    expect(page.locator("[data-notifications-badge]")).to_be_hidden(timeout=DEADLINE_MS)
    assert unread_count(alice) == 0
    assert page_errors == []


def test_feed_by_keyboard(site_server, signed_in, make_user, page_errors):
    alice = make_user("alice")
    first = notify(alice, "First")
    second = notify(alice, "Second")
    page = open_page(signed_in(alice), site_server, page_errors)
    bell = page.locator("[data-notifications-bell]")
    bell.focus()
    page.keyboard.press("Enter")
    expect(feed(page)).to_be_visible()
    expect(feed(page)).to_be_focused()
    expect(rows(page)).to_have_count(2)
    page.keyboard.press("ArrowDown")
    opener = f'[data-event-id="{second.id}"] [data-item-open]'
    expect(feed(page).locator(opener)).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(feed(page).locator(f'[data-event-id="{first.id}"] [data-item-open]')).to_be_focused()
    page.keyboard.press("Home")
    expect(feed(page).locator(opener)).to_be_focused()
    # Tab reaches the row's own buttons; Enter on "Mark read" marks it.
    page.keyboard.press("Tab")
    expect(
        feed(page).locator(f'[data-event-id="{second.id}"] [data-item-toggle-read]')
    ).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("[data-notifications-badge]")).to_have_text("1", timeout=DEADLINE_MS)
    # The tabs switch with the arrow keys.
    feed(page).locator('[data-feed-tab="unread"]').focus()
    page.keyboard.press("ArrowRight")
    expect(feed(page).locator('[data-feed-tab="all"]')).to_be_focused()
    expect(feed(page).locator('[data-feed-tab="all"]')).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Escape")
    expect(feed(page)).to_be_hidden()
    expect(bell).to_be_focused()
    expect(bell).to_have_attribute("aria-expanded", "false")
    assert page_errors == []


def test_toast_below_header_opens_marks_read_and_has_safe_actions(
    site_server,
    signed_in,
    make_user,
    page_errors,
    shots,
):
    alice = make_user("alice")
    page = open_page(signed_in(alice), site_server, page_errors)
    event = notify(
        alice,
        "Review requested",
        url="/notifications/",
        data={
            "actions": [
                {"label": "Approve", "url": "/notifications/?approve=1"},
                {"label": "Evil", "url": "javascript:alert(1)"},
                {"label": "<b>x</b>", "url": "https://example.invalid/x"},
                {"label": "", "url": "/empty-label"},
            ]
        },
    )
    toast = page.locator(f'.nt-toast[data-notification-id="{event.id}"]')
    expect(toast).to_be_visible(timeout=DEADLINE_MS)
    header = page.locator("[data-notifications-header]").bounding_box()
    box = toast.bounding_box()
    assert box["y"] >= header["y"] + header["height"], (box, header)
    page.screenshot(path=f"{shots}/toast.png")
    actions = toast.locator(".nt-toast__action")
    expect(actions).to_have_count(2)
    expect(actions.nth(0)).to_have_text("Approve")
    expect(actions.nth(1)).to_have_text("<b>x</b>")  # text, never markup
    assert page.locator(".nt-toast__actions b").count() == 0
    expect(page.locator(".nt-toasts")).to_have_attribute("aria-live", "polite")

    # The header stays usable while the toast shows.
    page.locator("[data-notifications-bell]").click()
    expect(feed(page)).to_be_visible()
    page.keyboard.press("Escape")

    actions.nth(0).click()
    page.wait_for_url(re.compile(r"approve=1"))
    assert unread_count(alice) == 0

    # Clicking a toast's title opens it and marks it read.
    page.goto(site_server.origin + "/")
    other = notify(alice, "Open me", url="/notifications/")
    toast = page.locator(f'.nt-toast[data-notification-id="{other.id}"]')
    expect(toast).to_be_visible(timeout=DEADLINE_MS)
    toast.locator(".nt-toast__open").click()
    page.wait_for_url(re.compile(r"/notifications/$"))
    assert unread_count(alice) == 0
    assert page_errors == []


def test_unread_archive_and_seen_stay_in_step_across_tabs(
    site_server, signed_in, make_user, page_errors
):
    alice = make_user("alice")
    keep = notify(alice, "Keep me")
    gone = notify(alice, "Archive me")
    context = signed_in(alice)
    first = open_page(context, site_server, page_errors)
    second = open_page(context, site_server, page_errors)
    for page in (first, second):
        page.locator("[data-notifications-bell]").click()
        feed(page).locator('[data-feed-tab="all"]').click()
        expect(rows(page)).to_have_count(2)
    expect(second.locator("[data-notifications-unseen]")).to_be_hidden()

    feed(first).locator("[data-feed-mark-all]").click()
    for page in (first, second):
        expect(page.locator("[data-notifications-badge]")).to_be_hidden(timeout=DEADLINE_MS)
        expect(feed(page).locator(".nt-item.unread")).to_have_count(0, timeout=DEADLINE_MS)

    # Mark unread works below the "mark all read" watermark, and the other tab follows.
    feed(first).locator(f'[data-event-id="{keep.id}"] [data-item-toggle-read]').click()
    expect(feed(second).locator(f'[data-event-id="{keep.id}"]')).to_have_class(
        re.compile("unread"), timeout=DEADLINE_MS
    )
    expect(second.locator("[data-notifications-badge]")).to_have_text("1", timeout=DEADLINE_MS)

    feed(first).locator(f'[data-event-id="{gone.id}"] [data-item-archive]').click()
    expect(feed(second).locator(f'[data-event-id="{gone.id}"]')).to_have_count(
        0, timeout=DEADLINE_MS
    )
    # Archived: still in the inbox history page.
    first.goto(site_server.origin + "/notifications/")
    expect(first.locator(f'[data-inbox-list] [data-event-id="{gone.id}"]')).to_be_visible()
    assert page_errors == []


def test_inbox_page_rows_follow_a_read_in_the_feed(site_server, signed_in, make_user, page_errors):
    alice = make_user("alice")
    first = notify(alice, "First")
    notify(alice, "Second")
    context = signed_in(alice)
    inbox = open_page(context, site_server, page_errors, "/notifications/")
    home = open_page(context, site_server, page_errors)
    home.locator("[data-notifications-bell]").click()
    feed(home).locator(f'[data-event-id="{first.id}"] [data-item-toggle-read]').click()
    row = inbox.locator(f'[data-inbox-list] [data-event-id="{first.id}"]')
    expect(row).to_have_class(re.compile(r"\bread\b"), timeout=DEADLINE_MS)
    expect(inbox.locator("[data-inbox-list] .nt-row.unread")).to_have_count(1)
    assert page_errors == []


def test_grouped_row_counts_live_and_reads_the_group(
    site_server,
    signed_in,
    make_user,
    page_errors,
    shots,
):
    alice = make_user("alice")
    ann, bob, cy, dee = (make_user(name) for name in ("ann", "bob", "cy", "dee"))
    for actor in (ann, bob, cy):
        notify(alice, f"{actor.username} commented on your post", actor=actor, group_key="post-7")
    page = open_page(signed_in(alice), site_server, page_errors)
    page.locator("[data-notifications-bell]").click()
    expect(rows(page)).to_have_count(1)
    group = rows(page).first.locator("[data-item-group]")
    expect(group).to_have_text("cy and 2 others · 3 notifications, 3 unread")
    page.screenshot(path=f"{shots}/feed-group.png")

    notify(alice, "dee commented on your post", actor=dee, group_key="post-7")
    expect(group).to_have_text("dee and 3 others · 4 notifications, 4 unread", timeout=DEADLINE_MS)
    expect(rows(page)).to_have_count(1)
    expect(page.locator("[data-notifications-badge]")).to_have_text("4")
    rows(page).first.locator("[data-item-toggle-read]").click()
    expect(page.locator("[data-notifications-badge]")).to_be_hidden(timeout=DEADLINE_MS)
    assert unread_count(alice) == 0
    assert page_errors == []
