"""HTTP views: the inbox, mark read over HTTP, the health check, the demo pages, the tags."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.messages import get_messages
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.urls import reverse

from notifications import Audience, notify
from notifications.models import Event, Recipient
from notifications.selectors import stream_cursor, unread_count

pytestmark = pytest.mark.django_db

INBOX = "/notifications/"
HOME = "/"


class _Page(HTMLParser):
    """Collects the attributes (and text) of the elements the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.badges: list[dict[str, str | None]] = []
        self.badge_text: list[str] = []
        self.empty: list[dict[str, str | None]] = []
        self.scripts: dict[str, str] = {}
        self.unread_summary: list[str] = []
        self.pagination: list[str] = []
        self._capture: str | None = None
        self._script_id: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "li" and "nt-row" in classes:
            self.rows.append(attributes)
        if tag == "li" and "nt-inbox__empty" in classes:
            self.empty.append(attributes)
        if "data-notifications-badge" in attributes:
            self.badges.append(attributes)
            self.badge_text.append("")
            self._capture = "badge"
        if "data-inbox-unread" in attributes:
            self.unread_summary.append("")
            self._capture = "summary"
        if "aria-current" in attributes and "nt-pagination__current" in classes:
            self.pagination.append("")
            self._capture = "pagination"
        if tag == "script" and attributes.get("id"):
            self._script_id = attributes["id"]
            self.scripts[self._script_id] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._script_id = None
        if tag == "span":
            self._capture = None

    def handle_data(self, data):
        if self._script_id is not None:
            self.scripts[self._script_id] += data
        if self._capture == "badge":
            self.badge_text[-1] += data
        elif self._capture == "summary":
            self.unread_summary[-1] += data
        elif self._capture == "pagination":
            self.pagination[-1] += data


def parse(content: bytes | str) -> _Page:
    page = _Page()
    page.feed(content.decode() if isinstance(content, bytes) else content)
    page.close()
    return page


def row_ids(page: _Page) -> list[int]:
    return [int(row["data-event-id"]) for row in page.rows]


def row_state(row: dict[str, str | None]) -> str:
    classes = set((row.get("class") or "").split())
    assert classes & {"read", "unread"}, f"row without read state: {row}"
    assert not {"read", "unread"} <= classes, f"row both read and unread: {row}"
    return "read" if "read" in classes else "unread"


def config(page: _Page) -> dict:
    assert "notifications-config" in page.scripts, "no notifications-config script"
    return json.loads(page.scripts["notifications-config"])


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


# --- inbox ---------------------------------------------------------------------------------


def test_inbox_requires_login(client):
    response = client.get(INBOX)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/notifications/"


def test_inbox_login_redirect_keeps_the_query_string(client):
    response = client.get(INBOX + "?page=2")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/notifications/%3Fpage%3D2"


def test_inbox_url_names():
    assert reverse("notifications:inbox") == INBOX
    assert reverse("notifications:mark_read", args=[7]) == "/notifications/7/read/"
    assert reverse("notifications:mark_all_read") == "/notifications/read-all/"
    assert reverse("notifications:healthz") == "/healthz"


def test_inbox_lists_only_visible_events_newest_first_with_read_state(
    alice_client, alice, bob, make_user
):
    make_user("staff", is_staff=True)
    first = notify(alice, "First for alice")
    notify(bob, "For bob only")
    announcement = notify("everyone", "Hello, everyone")
    notify(Audience(reach="staff"), "Staff only")
    second = notify(alice, "Second for alice")
    members = notify(Audience(reach="authenticated"), "For members")
    notify(Audience(users=[bob]), "Also bob only")

    # Read one of them individually (a ReadMark above the watermark).
    response = alice_client.post(reverse("notifications:mark_read", args=[announcement.id]))
    assert response.status_code == 302

    response = alice_client.get(INBOX)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = parse(response.content)

    assert row_ids(page) == [members.id, second.id, announcement.id, first.id]
    states = {int(row["data-event-id"]): row_state(row) for row in page.rows}
    assert states == {
        members.id: "unread",
        second.id: "unread",
        announcement.id: "read",
        first.id: "unread",
    }
    text = response.content.decode()
    for title in ("First for alice", "Hello, everyone", "Second for alice", "For members"):
        assert title in text
    for title in ("For bob only", "Staff only", "Also bob only"):
        assert title not in text
    assert page.empty == []
    assert response.context["unread"] == 3
    assert [s.strip() for s in page.unread_summary] == ["3"]


def test_inbox_read_rows_have_no_mark_read_form(alice_client, alice):
    read = notify(alice, "Already read")
    unread = notify(alice, "Still unread")
    alice_client.post(reverse("notifications:mark_read", args=[read.id]))

    text = alice_client.get(INBOX).content.decode()
    assert f'action="/notifications/{unread.id}/read/"' in text
    assert f'action="/notifications/{read.id}/read/"' not in text


def test_inbox_mark_all_read_watermark_shows_rows_as_read(alice_client, alice):
    old = [notify(alice, f"Old {n}") for n in range(2)]
    alice_client.post(reverse("notifications:mark_all_read"))
    new = notify(alice, "New")

    page = parse(alice_client.get(INBOX).content)
    states = {int(row["data-event-id"]): row_state(row) for row in page.rows}
    assert states == {new.id: "unread", old[1].id: "read", old[0].id: "read"}
    assert [s.strip() for s in page.unread_summary] == ["1"]


def test_inbox_shows_unread_count_in_summary_and_badge(alice_client, alice):
    for n in range(3):
        notify(alice, f"Unread {n}")

    page = parse(alice_client.get(INBOX).content)
    assert [s.strip() for s in page.unread_summary] == ["3"]
    assert len(page.badges) == 1
    assert page.badges[0]["data-count"] == "3"
    assert "hidden" not in page.badges[0]
    assert page.badge_text == ["3"]
    assert config(page)["unread"] == 3


def test_inbox_paginates_twenty_a_page(alice_client, alice):
    events = [notify(alice, f"Event {n}") for n in range(25)]
    newest_first = [event.id for event in reversed(events)]

    response = alice_client.get(INBOX)
    page = parse(response.content)
    assert row_ids(page) == newest_first[:20]
    assert response.context["page_obj"].number == 1
    assert [" ".join(p.split()) for p in page.pagination] == ["Page 1 of 2"]
    text = response.content.decode()
    assert 'href="?page=2"' in text
    assert "data-page-older" in text
    assert "data-page-newer" not in text

    response = alice_client.get(INBOX, {"page": 2})
    assert response.status_code == 200
    page = parse(response.content)
    assert len(page.rows) == 5
    assert row_ids(page) == newest_first[20:]
    assert response.context["page_obj"].number == 2
    assert [" ".join(p.split()) for p in page.pagination] == ["Page 2 of 2"]
    text = response.content.decode()
    assert 'href="?page=1"' in text
    assert "data-page-newer" in text
    assert "data-page-older" not in text
    # The unread count covers the whole inbox, not the page.
    assert [s.strip() for s in page.unread_summary] == ["25"]


@pytest.mark.parametrize(("query", "number"), [("abc", 1), ("99", 2), ("0", 2), ("-1", 2)])
def test_inbox_bad_page_numbers_do_not_fail(alice_client, alice, query, number):
    for n in range(25):
        notify(alice, f"Event {n}")
    response = alice_client.get(INBOX, {"page": query})
    assert response.status_code == 200
    assert response.context["page_obj"].number == number


def test_inbox_single_page_has_no_pagination(alice_client, alice):
    for n in range(20):
        notify(alice, f"Event {n}")
    response = alice_client.get(INBOX)
    page = parse(response.content)
    assert len(page.rows) == 20
    assert page.pagination == []
    assert b"data-inbox-pagination" not in response.content


def test_inbox_empty_state(alice_client, bob):
    notify(bob, "Not for alice")
    response = alice_client.get(INBOX)
    assert response.status_code == 200
    page = parse(response.content)
    assert page.rows == []
    assert len(page.empty) == 1
    assert "data-inbox-empty" in page.empty[0]
    assert b"No notifications yet." in response.content
    assert [s.strip() for s in page.unread_summary] == ["0"]
    assert page.badges[0]["data-count"] == "0"
    assert "hidden" in page.badges[0]
    assert page.badge_text == [""]


def test_inbox_config_cursor_is_the_stream_cursor(alice_client, alice, bob):
    notify(alice, "Mine")
    notify(bob, "Not mine, but it moves the cursor")
    page = parse(alice_client.get(INBOX).content)
    data = config(page)
    assert data["cursor"] == stream_cursor()
    assert data["cursor"] == Event.objects.latest("id").id
    assert data["unread"] == 1
    assert data["user"] == "alice"
    assert data["inbox"] == INBOX


def test_inbox_rejects_post(alice_client):
    response = alice_client.post(INBOX)
    assert response.status_code == 405


# --- mark read -----------------------------------------------------------------------------


def test_mark_read_marks_only_that_event(alice_client, alice):
    events = [notify(alice, f"Event {n}") for n in range(3)]
    assert unread_count(alice) == 3

    response = alice_client.post(reverse("notifications:mark_read", args=[events[1].id]))
    assert response.status_code == 302
    assert response["Location"] == INBOX
    assert unread_count(alice) == 2

    page = parse(alice_client.get(INBOX).content)
    states = {int(row["data-event-id"]): row_state(row) for row in page.rows}
    assert states == {events[2].id: "unread", events[1].id: "read", events[0].id: "unread"}


def test_mark_read_twice_is_harmless(alice_client, alice):
    event = notify(alice, "Once")
    notify(alice, "Other")
    url = reverse("notifications:mark_read", args=[event.id])
    alice_client.post(url)
    response = alice_client.post(url)
    assert response.status_code == 302
    assert unread_count(alice) == 1


def test_mark_read_ignores_another_users_event(alice_client, alice, bob):
    mine = notify(alice, "Mine")
    theirs = notify(bob, "Bob's")

    response = alice_client.post(reverse("notifications:mark_read", args=[theirs.id]))
    assert response.status_code == 302
    assert response["Location"] == INBOX
    assert unread_count(alice) == 1
    assert unread_count(bob) == 1
    assert not theirs.read_marks.exists()
    assert not mine.read_marks.exists()


def test_mark_read_of_a_missing_event_redirects(alice_client, alice):
    notify(alice, "Mine")
    response = alice_client.post(reverse("notifications:mark_read", args=[999_999]))
    assert response.status_code == 302
    assert response["Location"] == INBOX
    assert unread_count(alice) == 1


def test_mark_read_redirects_to_a_safe_next(alice_client, alice):
    event = notify(alice, "Mine")
    response = alice_client.post(
        reverse("notifications:mark_read", args=[event.id]), {"next": "/notifications/?page=2"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/notifications/?page=2"
    assert unread_count(alice) == 0


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example",
        "https://evil.example/notifications/",
        "//evil.example/",
        "javascript:alert(1)",
        "",
    ],
)
def test_mark_read_refuses_an_unsafe_next(alice_client, alice, target):
    event = notify(alice, "Mine")
    response = alice_client.post(
        reverse("notifications:mark_read", args=[event.id]), {"next": target}
    )
    assert response.status_code == 302
    assert response["Location"] == INBOX
    # The event is still marked read: only the redirect is refused.
    assert unread_count(alice) == 0


def test_mark_read_get_is_405(alice_client, alice):
    event = notify(alice, "Mine")
    response = alice_client.get(reverse("notifications:mark_read", args=[event.id]))
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert unread_count(alice) == 1


def test_mark_read_requires_login(client, alice):
    event = notify(alice, "Mine")
    url = reverse("notifications:mark_read", args=[event.id])
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"
    assert unread_count(alice) == 1


def test_mark_read_requires_csrf_token(alice):
    event = notify(alice, "Mine")
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(alice)
    response = csrf_client.post(reverse("notifications:mark_read", args=[event.id]))
    assert response.status_code == 403
    assert unread_count(alice) == 1


def test_mark_read_of_an_id_beyond_bigint_is_ignored(alice):
    event = notify(alice, "Mine")
    raw_client = Client(raise_request_exception=False)
    raw_client.force_login(alice)
    response = raw_client.post(f"/notifications/{2**63}/read/")
    assert response.status_code == 302
    assert response["Location"] == INBOX
    assert unread_count(alice) == 1
    assert not event.read_marks.exists()


# --- mark all read -------------------------------------------------------------------------


def test_mark_all_read_sets_unread_to_zero(alice_client, alice, bob):
    for n in range(4):
        notify(alice, f"Event {n}")
    notify("everyone", "Announcement")
    notify(bob, "Bob's")
    assert unread_count(alice) == 5

    response = alice_client.post(reverse("notifications:mark_all_read"))
    assert response.status_code == 302
    assert response["Location"] == INBOX
    assert unread_count(alice) == 0
    assert unread_count(bob) == 2  # bob's own and the announcement

    response = alice_client.get(INBOX)
    page = parse(response.content)
    assert {row_state(row) for row in page.rows} == {"read"}
    assert [s.strip() for s in page.unread_summary] == ["0"]
    assert [str(m) for m in response.context["messages"]] == [
        "All notifications are marked as read."
    ]


def test_mark_all_read_follows_a_safe_next_and_refuses_an_unsafe_one(alice_client, alice):
    notify(alice, "Mine")
    url = reverse("notifications:mark_all_read")

    response = alice_client.post(url, {"next": "/?from=inbox"})
    assert response["Location"] == "/?from=inbox"

    response = alice_client.post(url, {"next": "https://evil.example"})
    assert response.status_code == 302
    assert response["Location"] == INBOX


def test_mark_all_read_get_is_405(alice_client, alice):
    notify(alice, "Mine")
    response = alice_client.get(reverse("notifications:mark_all_read"))
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert unread_count(alice) == 1


def test_mark_all_read_requires_login(client):
    response = client.post(reverse("notifications:mark_all_read"))
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/notifications/read-all/"


# --- health check --------------------------------------------------------------------------


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_head_and_post(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


# --- home page -----------------------------------------------------------------------------


def test_home_for_anonymous_visitor(client, alice):
    notify(alice, "Moves the cursor")
    response = client.get(HOME)
    assert response.status_code == 200
    page = parse(response.content)

    data = config(page)
    assert data["cursor"] == stream_cursor()
    assert data["cursor"] > 0
    assert data["unread"] is None
    assert data["user"] is None
    assert data["inbox"] is None
    assert data["url"] is None

    assert len(page.badges) == 1
    assert page.badges[0]["data-count"] == "0"
    assert "hidden" in page.badges[0]
    assert page.badge_text == [""]
    assert b"data-login-link" in response.content
    assert b'id="demo-send-form"' not in response.content


def test_home_with_no_events_has_cursor_zero(client):
    page = parse(client.get(HOME).content)
    assert config(page)["cursor"] == 0 == stream_cursor()


def test_home_for_signed_in_user(alice_client, alice, bob):
    read = notify(alice, "Read")
    notify(alice, "Unread 1")
    notify("everyone", "Unread 2")
    notify(bob, "Not alice's")
    alice_client.post(reverse("notifications:mark_read", args=[read.id]))
    assert unread_count(alice) == 2

    response = alice_client.get(HOME)
    assert response.status_code == 200
    page = parse(response.content)

    data = config(page)
    assert data["cursor"] == stream_cursor()
    assert data["unread"] == 2
    assert data["user"] == "alice"
    assert data["inbox"] == INBOX

    assert len(page.badges) == 1
    assert page.badges[0]["data-count"] == "2"
    assert "hidden" not in page.badges[0]
    assert page.badge_text == ["2"]
    assert b'aria-label="Inbox, 2 unread"' in response.content
    assert b'id="demo-send-form"' in response.content
    assert b"data-username>alice<" in response.content


def test_home_config_script_is_json_script(client):
    text = client.get(HOME).content.decode()
    assert text.count('id="notifications-config"') == 1
    assert '<script id="notifications-config" type="application/json">' in text


# --- demo send -----------------------------------------------------------------------------


def test_demo_send_requires_login(client):
    response = client.post(reverse("demo_send"), {"title": "Hi"})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/demo/send/"
    assert Event.objects.count() == 0


def test_demo_send_get_is_405(alice_client):
    response = alice_client.get(reverse("demo_send"))
    assert response.status_code == 405
    assert Event.objects.count() == 0


def test_demo_send_json_creates_a_notification(alice_client, alice, bob):
    response = alice_client.post(
        reverse("demo_send"),
        {"title": "Hi there", "level": "warning"},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id"}

    event = Event.objects.get()
    assert body == {"id": event.id}
    assert event.title == "Hi there"
    assert event.level == "warning"
    assert event.url == INBOX
    assert event.actor == alice
    assert list(Recipient.objects.filter(event=event).values_list("user_id", flat=True)) == [
        alice.id
    ]
    assert unread_count(alice) == 1
    assert unread_count(bob) == 0


def test_demo_send_blank_title_gets_the_default(alice_client, alice):
    response = alice_client.post(
        reverse("demo_send"), {"title": "   "}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 201
    event = Event.objects.get(pk=response.json()["id"])
    assert event.title == "Hello from the demo"
    assert event.level == "info"


def test_demo_send_invalid_level_is_400_and_stores_nothing(alice_client, alice):
    response = alice_client.post(
        reverse("demo_send"),
        {"title": "Hi", "level": "fatal"},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"].startswith("level must be one of info, success, warning, error")
    assert Event.objects.count() == 0
    assert unread_count(alice) == 0


def test_demo_send_too_long_title_is_400(alice_client):
    response = alice_client.post(
        reverse("demo_send"), {"title": "x" * 201}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400
    assert response.json() == {"error": "title is longer than 200 characters"}
    assert Event.objects.count() == 0


def test_demo_send_without_json_redirects_home(alice_client, alice):
    response = alice_client.post(reverse("demo_send"), {"title": "Plain form", "level": "success"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    event = Event.objects.get()
    assert event.title == "Plain form"
    assert event.level == "success"
    assert unread_count(alice) == 1
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Sent “Plain form”. It is in your inbox."
    ]

    # The message is shown on the home page, with the new unread count in the badge.
    page_response = alice_client.get(HOME)
    page = parse(page_response.content)
    assert "Sent “Plain form”. It is in your inbox." in page_response.content.decode()
    assert page.badges[0]["data-count"] == "1"


def test_demo_send_without_json_invalid_level_redirects_home_with_error(alice_client):
    response = alice_client.post(reverse("demo_send"), {"title": "Hi", "level": "fatal"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert Event.objects.count() == 0
    messages = list(get_messages(response.wsgi_request))
    assert len(messages) == 1
    assert messages[0].level_tag == "error"
    assert str(messages[0]).startswith("level must be one of")


# --- template tags -------------------------------------------------------------------------

TAGS = "{% load notifications %}{% notifications_client %}{% notifications_bell %}"


def test_template_tags_render_for_anonymous_user(alice):
    notify(alice, "Moves the cursor")
    request = RequestFactory().get("/somewhere/")
    request.user = AnonymousUser()

    html = Template(TAGS).render(Context({"request": request}))
    page = parse(html)

    data = config(page)
    assert data == {
        "url": None,
        "cursor": stream_cursor(),
        "unread": None,
        "user": None,
        "inbox": None,
        "sse": "/sse/notifications/",
    }
    assert '<link rel="stylesheet" href="/static/notifications/notifications.css">' in html
    assert '<script type="module" src="/static/notifications/notifications.js"></script>' in html
    assert len(page.badges) == 1
    assert page.badges[0]["data-count"] == "0"
    assert "hidden" in page.badges[0]
    assert f'href="{INBOX}"' in html
    assert "data-notifications-state" in html


def test_template_tags_render_without_a_user_on_the_request():
    request = RequestFactory().get("/")
    html = Template(TAGS).render(Context({"request": request}))
    data = config(parse(html))
    assert data["unread"] is None
    assert data["user"] is None


def test_template_tags_render_for_a_signed_in_user(alice):
    notify(alice, "One")
    notify(alice, "Two")
    request = RequestFactory().get("/")
    request.user = alice

    html = Template(TAGS).render(Context({"request": request}))
    page = parse(html)
    data = config(page)
    assert data["cursor"] == stream_cursor()
    assert data["unread"] == 2
    assert data["user"] == "alice"
    assert data["inbox"] == INBOX
    assert page.badges[0]["data-count"] == "2"
    assert page.badge_text == ["2"]
    # What the feed and the toasts start from (docs/client.md).
    assert data["unseen"] == 2
    assert data["preferences"] == {
        "language": "",
        "muted_topics": [],
        "toast_levels": ["info", "success", "warning", "error"],
        "desktop_levels": ["info", "success", "warning", "error"],
    }
    assert data["preferences_url"] == "/notifications/preferences/"
    assert isinstance(data["csrf"], str) and data["csrf"]


def test_template_tags_prefer_the_views_cursor_and_count(alice):
    notify(alice, "One")
    request = RequestFactory().get("/")
    request.user = alice

    html = Template(TAGS).render(
        Context({"request": request, "notifications_cursor": 0, "notifications_unread": 7})
    )
    page = parse(html)
    data = config(page)
    assert data["cursor"] == 0
    assert data["unread"] == 7
    assert page.badges[0]["data-count"] == "7"


def test_template_tags_share_one_state_per_request(alice, django_assert_num_queries):
    notify(alice, "One")
    request = RequestFactory().get("/")
    request.user = AnonymousUser()

    # The cursor is read once; the bell reuses it (anonymous: no unread query).
    with django_assert_num_queries(1):
        html = Template(TAGS).render(Context({"request": request}))
    assert config(parse(html))["cursor"] == stream_cursor()
