"""The signed-in user's JSON inbox API (/api/v1/inbox): paging, filters, state, auth, CSRF."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from notifications import notify
from notifications.models import Subscription, Topic
from notifications.selectors import unread_count

pytestmark = pytest.mark.django_db

API = "/api/v1/inbox"


def post(client: Client, path: str, body: dict) -> tuple[int, dict]:
    response = client.post(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def api(alice):
    client = Client()
    client.force_login(alice)
    return client


def ids(answer: dict) -> list[int]:
    return [row["id"] for row in answer["items"]]


def test_list_is_newest_first_with_cursor_paging(api, alice):
    events = [notify(alice, f"n{i}") for i in range(5)]
    first = api.get(API, {"limit": 2}).json()
    assert ids(first) == [events[4].id, events[3].id]
    assert first["next"] == events[3].id
    assert first["unread"] == 5 and first["unseen"] == 5
    second = api.get(API, {"limit": 2, "before": first["next"]}).json()
    assert ids(second) == [events[2].id, events[1].id]
    last = api.get(API, {"limit": 2, "before": second["next"]}).json()
    assert ids(last) == [events[0].id] and last["next"] is None
    row = first["items"][0]
    assert row == {
        "id": events[4].id,
        "title": "n4",
        "body": "",
        "url": "",
        "level": "info",
        "topic": None,
        "data": {},
        "created_at": events[4].created_at.isoformat(),
        "read": False,
        "seen": False,
        "archived": False,
    }


def test_list_shows_only_what_the_audience_rule_allows(api, alice, make_user):
    bob = make_user("bob")
    mine = notify(alice, "mine")
    notify(bob, "not mine")
    group = Group.objects.create(name="ops")
    grouped = notify(group, "to a group alice is not in")
    assert ids(api.get(API).json()) == [mine.id]
    alice.groups.add(group)
    assert ids(api.get(API).json()) == [grouped.id, mine.id]


def test_unread_and_topic_filters(api, alice):
    topic = Topic.objects.create(name="Deploys", slug="deploys")
    Subscription.objects.create(user=alice, topic=topic)
    plain = notify(alice, "plain")
    tagged = notify(topic, "deploy done")
    read = notify(alice, "already read", topic="deploys")
    api.post(f"{API}/read", json.dumps({"ids": [read.id]}), content_type="application/json")
    assert ids(api.get(API, {"unread": "1"}).json()) == [tagged.id, plain.id]
    assert ids(api.get(API, {"topic": "deploys"}).json()) == [read.id, tagged.id]
    assert ids(api.get(API, {"topic": "deploys", "unread": "1"}).json()) == [tagged.id]
    assert api.get(API, {"topic": "nope"}).json()["items"] == []


def test_mark_read_by_ids_and_all(api, alice, make_user):
    bob = make_user("bob")
    one, two, three = (notify(alice, t) for t in ("one", "two", "three"))
    theirs = notify(bob, "bob's")
    assert post(api, f"{API}/read", {"ids": [one.id, theirs.id]}) == (200, {"unread": 2})
    assert unread_count(bob) == 1  # another user's id is ignored
    assert api.get(f"{API}/count").json() == {"unread": 2, "unseen": 3}
    assert post(api, f"{API}/read", {"all": True}) == (200, {"unread": 0})
    assert [row["read"] for row in api.get(API).json()["items"]] == [True, True, True]
    assert two.id and three.id


def test_mark_unread_above_and_below_the_watermark(api, alice):
    events = [notify(alice, f"n{i}") for i in range(4)]
    post(api, f"{API}/read", {"all": True})
    later = notify(alice, "later")
    post(api, f"{API}/read", {"ids": [later.id]})
    assert unread_count(alice) == 0
    # later is above the watermark (a read mark), events[1] below it.
    assert post(api, f"{API}/unread", {"ids": [later.id, events[1].id]}) == (200, {"unread": 2})
    rows = {row["id"]: row["read"] for row in api.get(API).json()["items"]}
    assert rows == {
        later.id: False,
        events[3].id: True,
        events[2].id: True,
        events[1].id: False,
        events[0].id: True,
    }
    # Reading one again, and then all, keeps the count right.
    assert post(api, f"{API}/read", {"ids": [events[1].id]}) == (200, {"unread": 1})
    assert post(api, f"{API}/read", {"all": True}) == (200, {"unread": 0})


def test_seen_is_separate_from_read(api, alice):
    first = notify(alice, "one")
    notify(alice, "two")
    status, answer = post(api, f"{API}/seen", {})
    assert status == 200
    assert answer["unseen"] == 0 and answer["unread"] == 2
    assert answer["seen_through"] >= first.id
    notify(alice, "three")
    assert api.get(f"{API}/count").json() == {"unread": 3, "unseen": 1}
    # The watermark never moves back.
    assert post(api, f"{API}/seen", {"through": first.id})[1]["seen_through"] > first.id
    rows = api.get(API).json()["items"]
    assert [row["seen"] for row in rows] == [False, True, True]


def test_archive_leaves_the_feed_but_not_the_history(api, alice):
    keep = notify(alice, "keep")
    gone = notify(alice, "gone")
    status, answer = post(api, f"{API}/archive", {"ids": [gone.id]})
    assert status == 200 and answer["ids"] == [gone.id]
    assert answer["unread"] == 1  # archiving reads it
    assert ids(api.get(API).json()) == [keep.id]
    assert ids(api.get(API, {"archived": "1"}).json()) == [gone.id]
    # The history page still lists it.
    assert "gone" in api.get("/notifications/").content.decode()
    post(api, f"{API}/unarchive", {"ids": [gone.id]})
    assert ids(api.get(API).json()) == [gone.id, keep.id]


def test_another_users_ids_are_ignored_by_every_write(api, alice, make_user):
    bob = make_user("bob")
    theirs = notify(bob, "bob's")
    assert post(api, f"{API}/archive", {"ids": [theirs.id]})[1]["ids"] == []
    assert post(api, f"{API}/unread", {"ids": [theirs.id]}) == (200, {"unread": 0})
    bob_client = Client()
    bob_client.force_login(bob)
    assert ids(bob_client.get(API).json()) == [theirs.id]
    assert bob_client.get(API).json()["items"][0]["archived"] is False


def test_anonymous_gets_401_not_a_redirect():
    response = Client().get(API)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert Client().post(f"{API}/read", "{}", content_type="application/json").status_code == 401


def test_writes_need_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    notify(alice, "one")
    response = client.post(f"{API}/read", '{"all": true}', content_type="application/json")
    assert response.status_code == 403
    assert unread_count(alice) == 1
    client.get("/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        f"{API}/read", '{"all": true}', content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 200 and unread_count(alice) == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("read", {"ids": "1"}, "ids"),
        ("read", {"ids": [True]}, "ids"),
        ("read", {"ids": [2**63]}, "ids"),
        ("read", {"ids": list(range(1001))}, "ids"),
        ("unread", {}, "ids"),
        ("archive", {"ids": [-1]}, "ids"),
        ("seen", {"through": "5"}, "through"),
        ("preferences", {"toast_levels": ["loud"]}, "toast_levels"),
        ("preferences", {"muted_topics": "deploys"}, "muted_topics"),
        ("preferences", {"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_400_with_the_field(api, path, body, field):
    method = api.put if path == "preferences" else api.post
    response = method(f"{API}/{path}", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "bad_request"
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize(
    "query", [{"before": "x"}, {"limit": "0"}, {"limit": "101"}, {"topic": "a b"}, {"unread": "2"}]
)
def test_bad_query_is_a_400(api, query):
    assert api.get(API, query).status_code == 400


def test_not_json_and_wrong_method(api):
    response = api.post(f"{API}/read", "{nope", content_type="application/json")
    assert response.status_code == 400
    assert api.post(API).status_code == 405
    assert api.get(f"{API}/read").status_code == 405


def test_preferences_round_trip_and_mute_through_a_group(api, alice, make_user):
    group = Group.objects.create(name="ops")
    alice.groups.add(group)
    private = Topic.objects.create(name="Ops", slug="ops", is_public=False)
    private.groups.add(group)
    secret = Topic.objects.create(name="Secret", slug="secret", is_public=False)
    assert api.get(f"{API}/preferences").json() == {
        "language": "",
        "muted_topics": [],
        "toast_levels": ["info", "success", "warning", "error"],
        "desktop_levels": ["info", "success", "warning", "error"],
    }
    assert api.get(f"{API}/topics").json() == {"topics": [{"slug": "ops", "name": "Ops"}]}
    response = api.put(
        f"{API}/preferences",
        json.dumps({"muted_topics": ["ops"], "toast_levels": ["error", "warning"]}),
        content_type="application/json",
    )
    assert response.json() == {
        "language": "",
        "muted_topics": ["ops"],
        "toast_levels": ["warning", "error"],
        "desktop_levels": ["info", "success", "warning", "error"],
    }
    # A private topic the user may not read is "no topic", as a missing one.
    response = api.patch(
        f"{API}/preferences",
        json.dumps({"muted_topics": ["secret"]}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "secret" in response.json()["error"]["message"] and secret.pk
    # Muting keeps events in the inbox and the unread count.
    notify(private, "deploy")
    assert api.get(f"{API}/count").json()["unread"] == 1
