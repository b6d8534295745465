"""axe-core finds no serious or critical violation on the visitor's pages: home (with a toast),
the inbox, the open feed and the preferences page. Reduced motion turns the animations off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from notifications import notify
from notifications.models import Subscription, Topic

from ..support import require_service
from .conftest import watch

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

DEADLINE_MS = 8_000
# .ci/run installs the npm package axe-core here (NOTIFICATIONS_NPM_CACHE overrides the folder).
NPM_CACHE = Path(
    os.environ.get("NOTIFICATIONS_NPM_CACHE", Path.home() / ".cache" / "notifications-npm")
)
AXE = NPM_CACHE / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="module")
def axe_source():
    require_service(
        "axe",
        AXE.exists(),
        f"needs axe-core at {AXE}: npm install --prefix {NPM_CACHE} axe-core@4 (as .ci/run does)",
    )
    return AXE.read_text()


def serious_violations(page, axe_source):
    page.add_script_tag(content=axe_source)
    result = page.evaluate("async () => await axe.run(document)")
    return [
        (v["id"], v["impact"], [node["target"] for node in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def open_page(context, server, errors, path):
    page = context.new_page()
    watch(page, errors)
    page.goto(server.origin + path)
    expect(page.locator("[data-notifications-state]")).to_have_attribute(
        "data-state", "open", timeout=DEADLINE_MS
    )
    return page


def test_no_serious_violations(site_server, signed_in, make_user, axe_source, page_errors):
    alice = make_user("alice")
    topic = Topic.objects.create(name="Deploys", slug="deploys")
    Subscription.objects.create(user=alice, topic=topic)
    notify(alice, "Read me", body="Some text", url="/notifications/")
    notify(topic, "Deployed", level="success")
    context = signed_in(alice)

    home = open_page(context, site_server, page_errors, "/")
    event = notify(alice, "A toast", data={"actions": [{"label": "View", "url": "/"}]})
    expect(home.locator(f'.nt-toast[data-notification-id="{event.id}"]')).to_be_visible(
        timeout=DEADLINE_MS
    )
    assert serious_violations(home, axe_source) == [], "home"

    home.locator("[data-notifications-bell]").click()
    expect(home.locator("[data-notifications-feed] [data-event-id]")).to_have_count(3)
    home.locator("[data-feed-settings]").click()
    expect(home.locator("[data-feed-prefs] input").first).to_be_visible()
    assert serious_violations(home, axe_source) == [], "open feed"

    inbox = open_page(context, site_server, page_errors, "/notifications/")
    assert serious_violations(inbox, axe_source) == [], "inbox"
    prefs = open_page(context, site_server, page_errors, "/notifications/preferences/")
    assert serious_violations(prefs, axe_source) == [], "preferences"
    assert page_errors == []


def test_reduced_motion_turns_animations_off(browser, site_server, make_user):
    context = browser.new_context(reduced_motion="reduce")
    try:
        page = context.new_page()
        page.goto(site_server.origin + "/")
        expect(page.locator("[data-notifications-state]")).to_have_attribute(
            "data-state", "open", timeout=DEADLINE_MS
        )
        event = notify("everyone", "Calm")
        toast = page.locator(f'.nt-toast[data-notification-id="{event.id}"]')
        expect(toast).to_be_visible(timeout=DEADLINE_MS)
        assert toast.evaluate("el => getComputedStyle(el).animationName") == "none"
    finally:
        context.close()
