"""Preferences: muted topics (also ones followed through a group) and the levels that make a
toast, stored on the server and effective at once in every open tab."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from notifications import notify
from notifications.models import Topic
from notifications.selectors import preferences_of, unread_count

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


def toast(page, event):
    return page.locator(f'.nt-toast[data-notification-id="{event.id}"]')


def test_preferences_page_mutes_a_group_topic_in_every_tab(
    site_server,
    signed_in,
    make_user,
    page_errors,
    shots,
):
    alice = make_user("alice")
    ops = Group.objects.create(name="ops")
    alice.groups.add(ops)
    deploys = Topic.objects.create(name="Deploys", slug="deploys", is_public=False)
    deploys.groups.add(ops)
    context = signed_in(alice)
    home = open_page(context, site_server, page_errors)
    prefs = open_page(context, site_server, page_errors, "/notifications/preferences/")
    prefs.check("#mute-deploys")
    prefs.uncheck("#toast-info")
    prefs.screenshot(path=f"{shots}/preferences.png", full_page=True)
    prefs.get_by_role("button", name="Save preferences").click()
    expect(prefs.locator("[role=status]", has_text="saved")).to_be_visible()
    stored = preferences_of(alice)
    assert [t.slug for t in stored.muted_topics.all()] == ["deploys"]
    assert stored.toast_levels == ["success", "warning", "error"]

    # The open home tab heard about it at once (a `preferences` frame), no reload.
    home.wait_for_function(
        "() => window.notifications.preferences?.muted_topics?.includes('deploys')",
        timeout=DEADLINE_MS,
    )
    muted = notify(deploys, "Deployed", level="error")
    quiet = notify(alice, "Just info", level="info")
    loud = notify(alice, "Disk full", level="error")
    expect(toast(home, loud)).to_be_visible(timeout=DEADLINE_MS)
    assert toast(home, muted).count() == 0
    assert toast(home, quiet).count() == 0
    # Muting is not hiding: all three are unread and in the feed, the muted one marked.
    assert unread_count(alice) == 3
    expect(home.locator("[data-notifications-badge]")).to_have_text("3")
    home.locator("[data-notifications-bell]").click()
    row = home.locator(f'[data-notifications-feed] [data-event-id="{muted.id}"]')
    expect(row).to_be_visible(timeout=DEADLINE_MS)
    expect(row.locator("[data-item-muted]")).to_be_visible()
    assert page_errors == []


def test_feed_panel_edits_preferences(site_server, signed_in, make_user, page_errors):
    alice = make_user("alice")
    context = signed_in(alice)
    first = open_page(context, site_server, page_errors)
    second = open_page(context, site_server, page_errors)
    first.locator("[data-notifications-bell]").click()
    first.locator("[data-feed-settings]").click()
    panel = first.locator("[data-feed-prefs]")
    expect(panel).to_be_visible()
    panel.get_by_label("Warning").first.uncheck()
    second.wait_for_function(
        "() => window.notifications.preferences && "
        "!window.notifications.preferences.toast_levels.includes('warning')",
        timeout=DEADLINE_MS,
    )
    assert preferences_of(alice).toast_levels == ["info", "success", "error"]
    event = notify(alice, "Careful", level="warning")
    other = notify(alice, "Fine", level="success")
    expect(toast(second, other)).to_be_visible(timeout=DEADLINE_MS)
    assert toast(second, event).count() == 0
    assert page_errors == []


def test_toast_in_the_preferred_language(site_server, signed_in, make_user, page_errors):
    from django.utils.text import format_lazy
    from django.utils.translation import gettext_lazy

    from notifications import services

    alice = make_user("alice")
    services.update_preferences(alice, language="de")
    page = open_page(signed_in(alice), site_server, page_errors)
    event = notify(alice, format_lazy("{}: {}", gettext_lazy("Yes"), "Ann"))
    expect(toast(page, event).locator(".nt-toast__title")).to_have_text(
        "Ja: Ann", timeout=DEADLINE_MS
    )
    page.locator("[data-notifications-bell]").click()
    expect(page.locator(f'[data-notifications-feed] [data-event-id="{event.id}"]')).to_contain_text(
        "Ja: Ann"
    )
    assert page_errors == []
