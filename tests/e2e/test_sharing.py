"""One connection per browser: tabs share it through a SharedWorker, else through a leader tab
(BroadcastChannel + Web Locks), else each tab has its own. The server's own log counts its
connections (ws.connect / ws.disconnect lines at DEBUG)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from notifications import notify

from ..server import ServerProcess
from ..support import session_cookie
from .conftest import watch

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

DEADLINE_MS = 8_000
NO_SHARED_WORKER = "delete window.SharedWorker;"
NO_SHARING = "delete window.SharedWorker; delete window.BroadcastChannel;"


@pytest.fixture
def server(transactional_db):
    with ServerProcess(NOTIFICATIONS_LOG_LEVEL="DEBUG") as server:
        yield server


def open_connections(server: ServerProcess) -> int:
    log = server.output()
    return len(re.findall(r"ws\.connect c\d+", log)) - len(re.findall(r"ws\.disconnect c\d+", log))


def wait_for_connections(server: ServerProcess, expected: int, timeout: float = 8.0) -> None:
    """Until the server holds ``expected`` sockets (its log is the only way to see them)."""
    deadline = time.monotonic() + timeout
    while (count := open_connections(server)) != expected:
        assert time.monotonic() < deadline, f"{count} connections, expected {expected}"
        time.sleep(0.05)


@pytest.fixture
def context_for(browser, server):
    contexts = []

    def make(user, init_script=None):
        context = browser.new_context()
        if init_script:
            context.add_init_script(init_script)
        name, _, value = session_cookie(user).partition("=")
        context.add_cookies([{"name": name, "value": value, "url": server.origin}])
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def open_tabs(context, server, errors, count):
    pages = []
    for _ in range(count):
        page = context.new_page()
        watch(page, errors)
        page.goto(server.origin + "/")
        expect(page.locator("[data-notifications-state]")).to_have_attribute(
            "data-state", "open", timeout=DEADLINE_MS
        )
        pages.append(page)
    return pages


def is_leader(page) -> bool:
    return page.evaluate("'notificationsLeader' in document.documentElement.dataset")


def wait_until(condition, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


def toasts(page, event):
    return page.locator(f'.nt-toast[data-notification-id="{event.id}"]')


def test_shared_worker_holds_one_connection_for_all_tabs(
    server, context_for, make_user, page_errors
):
    alice = make_user("alice")
    tabs = open_tabs(context_for(alice), server, page_errors, 3)
    assert {tab.evaluate("window.notifications.transport") for tab in tabs} == {"shared"}
    wait_for_connections(server, 1)

    event = notify(alice, "To every tab")
    for tab in tabs:
        expect(toasts(tab, event)).to_have_count(1, timeout=DEADLINE_MS)
        expect(tab.locator("[data-notifications-badge]")).to_have_text("1")
    # A read in one tab reaches the others through the same socket.
    tabs[0].evaluate(f"window.notifications.markRead([{event.id}])")
    for tab in tabs:
        expect(tab.locator("[data-notifications-badge]")).to_be_hidden(timeout=DEADLINE_MS)

    tabs[0].close()
    tabs[1].close()
    later = notify(alice, "After two tabs closed")
    expect(toasts(tabs[2], later)).to_have_count(1, timeout=DEADLINE_MS)
    assert open_connections(server) == 1
    assert page_errors == []


def test_leader_tab_hands_over_with_nothing_lost_or_twice(
    server, context_for, make_user, page_errors
):
    alice = make_user("alice")
    tabs = open_tabs(context_for(alice, NO_SHARED_WORKER), server, page_errors, 3)
    wait_for_connections(server, 1)
    before = notify(alice, "Before the handover")
    for tab in tabs:
        expect(toasts(tab, before)).to_have_count(1, timeout=DEADLINE_MS)

    leaders = [tab for tab in tabs if is_leader(tab)]
    assert len(leaders) == 1
    leaders[0].close()
    rest = [tab for tab in tabs if tab is not leaders[0]]
    during = notify(alice, "During the handover")
    wait_until(lambda: sum(is_leader(tab) for tab in rest) == 1)
    wait_for_connections(server, 1)
    after = notify(alice, "After the handover")
    for tab in rest:
        expect(toasts(tab, during)).to_have_count(1, timeout=DEADLINE_MS)
        expect(toasts(tab, after)).to_have_count(1, timeout=DEADLINE_MS)
        # The new leader resumed from the tabs' cursor: the replay brought nothing twice.
        assert toasts(tab, before).count() <= 1
        expect(tab.locator("[data-notifications-badge]")).to_have_text("3")
        expect(tab.locator("[data-notifications-state]")).to_have_attribute("data-state", "open")
    assert page_errors == []


def test_without_sharing_each_tab_connects(server, context_for, make_user, page_errors):
    alice = make_user("alice")
    tabs = open_tabs(context_for(alice, NO_SHARING), server, page_errors, 2)
    assert {tab.evaluate("window.notifications.transport") for tab in tabs} == {"websocket"}
    wait_for_connections(server, 2)
    event = notify(alice, "Both")
    for tab in tabs:
        expect(toasts(tab, event)).to_have_count(1, timeout=DEADLINE_MS)
    assert page_errors == []


def test_anonymous_topic_followed_through_the_shared_connection(browser, server, page_errors):
    from notifications.models import Topic

    Topic.objects.create(name="Status", slug="status")
    context = browser.new_context()
    try:
        tabs = open_tabs(context, server, page_errors, 2)
        wait_for_connections(server, 1)
        answer = tabs[0].evaluate("window.notifications.subscribe('status')")
        assert answer == {"type": "subscribed", "topic": "status", "ref": answer["ref"]}
        event = notify("status", "All systems go")
        for tab in tabs:  # one connection: its topics are every tab's
            expect(toasts(tab, event)).to_have_count(1, timeout=DEADLINE_MS)
    finally:
        context.close()
    assert page_errors == []
