"""The sending HTTP API (PROTOCOL.md "HTTP API"): tokens, answers, every error, idempotency."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import Client

from notifications.api import tokens
from notifications.api.send import MAX_BATCH
from notifications.models import ApiRateWindow, ApiToken, Event, Reach, Recipient, Topic

from .support import away_from_a_minute_boundary

pytestmark = pytest.mark.django_db

URL = "/api/v1/notifications"
BATCH = "/api/v1/notifications/batch"


@pytest.fixture
def raw():
    """The value of an unscoped token named "svc"."""
    return tokens.create_token("svc")[1]


def post(raw, body, *, path=URL, content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    if raw is not None:
        headers.setdefault("HTTP_AUTHORIZATION", f"Bearer {raw}")
    return Client().post(path, data=data, content_type=content_type, **headers)


def error_of(response, status=400):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


# -- tokens --------------------------------------------------------------------------------


def test_token_is_stored_as_its_digest_only():
    token, raw = tokens.create_token("billing", scopes=["users", "users", "groups"], rate=5)
    assert raw.startswith("ntk_") and len(raw) >= 4 + 43
    token.refresh_from_db()
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:12]
    stored = [str(value) for value in ApiToken.objects.values_list().get()]
    assert raw not in stored
    assert token.scopes == ["users", "groups"] and token.rate == 5
    assert tokens.authenticate(raw) == token
    assert tokens.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert tokens.authenticate("not-a-token") is None


def test_create_refuses_bad_names_scopes_and_rates():
    tokens.create_token("svc")
    with pytest.raises(tokens.TokenError, match="exists"):
        tokens.create_token("svc")
    with pytest.raises(tokens.TokenError, match="unknown scope"):
        tokens.create_token("other", scopes=["users", "root"])
    with pytest.raises(tokens.TokenError, match="rate"):
        tokens.create_token("other", rate=0)
    with pytest.raises(tokens.TokenError, match="name"):
        tokens.create_token(" ")
    assert ApiToken.objects.count() == 1


# -- success -------------------------------------------------------------------------------


def test_send_to_users_stores_once_and_answers_201(raw, make_user, notifications_outbox):
    alice, bob = make_user("alice"), make_user("bob")
    response = post(
        raw,
        {
            "audience": {"users": ["alice", "bob"]},
            "title": "Build 42 passed",
            "body": "All green",
            "url": "https://ci.example.com/42",
            "level": "success",
            "data": {"build": 42, "ok": True, "tags": ["a", None, 1.5]},
        },
    )
    assert response.status_code == 201, response.content
    event = Event.objects.get()
    assert response.json() == {"id": event.id, "recipients": 2}
    assert (event.title, event.body, event.url, event.level) == (
        "Build 42 passed",
        "All green",
        "https://ci.example.com/42",
        "success",
    )
    assert event.data == {"build": 42, "ok": True, "tags": ["a", None, 1.5]}
    assert set(Recipient.objects.values_list("user_id", flat=True)) == {alice.pk, bob.pk}
    assert [e.id for e in notifications_outbox] == [event.id]  # published on commit
    token = ApiToken.objects.get(name="svc")
    assert token.last_used_at is not None


def test_audience_parts_are_united(raw, make_user):
    alice = make_user("alice")
    staff = make_user("boss", is_staff=True)
    editor = make_user("ed")
    editors = Group.objects.create(name="editors")
    editor.groups.add(editors)
    topic = Topic.objects.create(name="Billing", slug="billing")
    response = post(
        raw,
        {
            "audience": {
                "users": ["alice"],
                "groups": ["editors"],
                "topic": "billing",
                "staff": True,
            },
            "title": "Hello",
        },
    )
    assert response.status_code == 201, response.content
    event = Event.objects.get()
    assert event.reach == Reach.STAFF
    assert list(event.groups.all()) == [editors]
    assert event.to_topic and event.topic == topic
    assert list(Recipient.objects.values_list("user_id", flat=True)) == [alice.pk]
    assert response.json()["recipients"] == 3  # alice, boss, ed
    assert staff.pk and editor.pk


def test_permission_audience(raw, make_user):
    granted = make_user("granted")
    granted.user_permissions.add(Permission.objects.get(codename="send_broadcast"))
    make_user("plain")
    response = post(raw, with_(audience={"permission": "notifications.send_broadcast"}))
    assert response.status_code == 201, response.content
    event = Event.objects.get()
    assert event.permission == Permission.objects.get(codename="send_broadcast")
    assert (event.reach, event.to_topic, event.groups.count()) == (Reach.TARGETED, False, 0)
    assert response.json() == {"id": event.id, "recipients": 1}


@pytest.mark.parametrize(
    ("flags", "reach"),
    [
        ({"staff": True, "everyone": True}, Reach.EVERYONE),
        ({"staff": True, "authenticated": True}, Reach.AUTHENTICATED),
        ({"staff": True, "everyone": False}, Reach.STAFF),
        ({"authenticated": True, "everyone": True, "staff": True}, Reach.EVERYONE),
    ],
)
def test_several_reach_flags_take_the_widest(raw, flags, reach):
    response = post(raw, {"audience": flags, "title": "Hi"})
    assert response.status_code == 201, response.content
    assert Event.objects.get().reach == reach


def test_defaults_and_nulls(raw, make_user):
    make_user("alice")
    body = {"audience": {"users": ["alice"], "groups": None, "topic": None}, "title": "T"}
    body.update(body=None, url=None, level=None, data=None, idempotency_key=None)
    assert post(raw, body).status_code == 201
    event = Event.objects.get()
    assert (event.body, event.url, event.level, event.data) == ("", "", "info", {})


def test_content_type_with_utf8_charset_is_accepted(raw):
    response = post(
        raw,
        {"audience": {"everyone": True}, "title": "é"},
        content_type="application/json; charset=UTF-8",
    )
    assert response.status_code == 201


# -- errors: nothing is stored -------------------------------------------------------------

VALID = {"audience": {"everyone": True}, "title": "Hi"}


def with_(**changes):
    body = dict(VALID)
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


BAD_BODIES = {
    "missing title": (with_(title=...), "required", "title"),
    "null title": (with_(title=None), "required", "title"),
    "blank title": (with_(title="  \t"), "invalid", "title"),
    "title not a string": (with_(title=3), "invalid", "title"),
    "title too long": (with_(title="x" * 201), "invalid", "title"),
    "unknown level": (with_(level="critical"), "invalid", "level"),
    "body not a string": (with_(body=["x"]), "invalid", "body"),
    "empty list as body": (with_(body=[]), "invalid", "body"),
    "empty object as url": (with_(url={}), "invalid", "url"),
    "false as url": (with_(url=False), "invalid", "url"),
    "javascript url": (with_(url="javascript:alert(1)"), "invalid", "url"),
    "data not an object": (with_(data=[1]), "invalid", "data"),
    "unknown field": (with_(titel="x"), "unknown_field", "titel"),
    "empty key": (with_(idempotency_key=""), "invalid", "idempotency_key"),
    "long key": (with_(idempotency_key="k" * 151), "invalid", "idempotency_key"),
    "missing audience": (with_(audience=...), "required", "audience"),
    "audience not an object": (with_(audience=["alice"]), "invalid", "audience"),
    "empty audience": (with_(audience={}), "empty_audience", "audience"),
    "audience of nobody": (
        with_(audience={"users": [], "everyone": False, "groups": None}),
        "empty_audience",
        "audience",
    ),
    "unknown audience key": (with_(audience={"user": ["a"]}), "unknown_field", "audience.user"),
    "users not a list": (with_(audience={"users": "alice"}), "invalid", "audience.users"),
    "users not strings": (with_(audience={"users": [1]}), "invalid", "audience.users"),
    "flag not a boolean": (with_(audience={"everyone": 1}), "invalid", "audience.everyone"),
    "bad slug": (with_(audience={"topic": "a b"}), "invalid", "audience.topic"),
    "bad permission": (with_(audience={"permission": "x"}), "invalid", "audience.permission"),
    "unknown users": (
        with_(audience={"users": ["alice", "ghost"]}),
        "not_found",
        "audience.users",
    ),
    "unknown group": (with_(audience={"groups": ["ghosts"]}), "not_found", "audience.groups"),
    "unknown topic": (with_(audience={"topic": "nope"}), "not_found", "audience.topic"),
    "unknown permission": (
        with_(audience={"permission": "auth.fly"}),
        "not_found",
        "audience.permission",
    ),
    "not an object": ([VALID], "bad_json", None),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_bodies_get_400_and_store_nothing(raw, make_user, case):
    make_user("alice")
    body, code, field = BAD_BODIES[case]
    error = error_of(post(raw, body))
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"]
    assert not Event.objects.exists()


def with_data(data: bytes) -> bytes:
    return b'{"audience": {"everyone": true}, "title": "t", "data": ' + data + b"}"


NOT_STRICT = {
    "invalid json": (b'{"title": ', "bad_json", None),
    "not utf-8": (b'{"title": "\xff"}', "bad_json", None),
    "NaN": (with_data(b'{"x": NaN}'), "data.x"),
    "Infinity": (with_data(b'{"x": [Infinity]}'), "data.x.0"),
    "-Infinity": (with_data(b'{"x": -Infinity}'), "data.x"),
    "overflowing float": (with_data(b'{"x": 1e400}'), "data.x"),
    "lone surrogate": (with_data(rb'{"x": "\ud800"}'), "data.x"),
    "surrogate in a key": (with_data(rb'{"\udc00": 1}'), "data"),
    "NUL in data": (with_data(rb'{"x": "a\u0000"}'), "data.x"),
    "NUL in title": (rb'{"audience": {"everyone": true}, "title": "a\u0000"}', "title"),
    "int beyond 64 bits": (with_data(b'{"x": 9223372036854775808}'), "data.x"),
    "int below 64 bits": (with_data(b'{"x": -9223372036854775809}'), "data.x"),
    "duplicate key": (b'{"audience": {"everyone": true}, "title": "t", "title": "u"}', "title"),
    "deep nesting": (with_data(b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}"), "data.x" + ".0" * 31),
    "nesting beyond the parser": (b"[" * 100_000 + b"]" * 100_000, None),
}


@pytest.mark.parametrize("case", NOT_STRICT, ids=list(NOT_STRICT))
def test_what_is_not_strict_json_gets_400_and_stores_nothing(raw, case):
    body, *expected = NOT_STRICT[case]
    code, field = expected if len(expected) == 2 else ("not_strict_json", expected[0])
    error = error_of(post(raw, body))
    assert (error["code"], error["field"]) == (code, field), error
    assert not Event.objects.exists()


def test_64_bit_limits_themselves_are_fine(raw):
    data = {"max": 2**63 - 1, "min": -(2**63), "float": 1.5e10}
    assert post(raw, with_(data=data)).status_code == 201
    assert Event.objects.get().data == data


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_wrong_content_type_gets_400(raw, content_type):
    error = error_of(post(raw, json.dumps(VALID), content_type=content_type))
    assert error["code"] == "bad_content_type"
    assert not Event.objects.exists()


def test_body_over_the_limit_gets_400(raw, settings):
    settings.NOTIFICATIONS = {"API_MAX_BODY_BYTES": 100}
    small = with_(data={"x": "y" * 10})
    assert post(raw, small).status_code == 201
    error = error_of(post(raw, with_(data={"x": "y" * 100})))
    assert (error["code"], error["field"]) == ("too_large", None)
    assert Event.objects.count() == 1


# -- authentication, scopes, rate ----------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ntk_unknown",
        "Basic dXNlcjpwdw==",
        "Token {raw}",
        "Bearer {raw}x",
    ],
)
def test_without_a_valid_token_401(raw, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization.format(raw=raw)}
    for path in (URL, BATCH):
        response = Client().post(
            path, data=json.dumps(VALID), content_type="application/json", **headers
        )
        error = error_of(response, 401)
        assert error["code"] == "unauthorized"
        assert response["WWW-Authenticate"] == 'Bearer realm="notifications"'
    assert not Event.objects.exists()


def test_revoked_token_gets_401(raw):
    assert post(raw, VALID).status_code == 201
    token, changed = tokens.revoke_token("svc")
    assert changed and token.revoked_at is not None
    assert error_of(post(raw, VALID), 401)["code"] == "unauthorized"
    assert Event.objects.count() == 1
    assert tokens.revoke_token("svc")[1] is False


def test_scopes_limit_audience_keys_with_403():
    make = tokens.create_token
    raw = make("limited", scopes=["users", "everyone"])[1]
    assert post(raw, VALID).status_code == 201
    for audience, key in [
        ({"groups": ["ghosts"]}, "groups"),  # 403 before the names are looked up
        ({"everyone": True, "staff": True}, "staff"),
        ({"permission": "auth.add_user"}, "permission"),
        ({"topic": "billing"}, "topic"),
        ({"authenticated": True}, "authenticated"),
    ]:
        error = error_of(post(raw, with_(audience=audience)), 403)
        assert (error["code"], error["field"]) == ("forbidden", f"audience.{key}")
    assert Event.objects.count() == 1


def test_rate_limit_counts_in_the_database_and_answers_429_with_retry_after(settings):
    away_from_a_minute_boundary()
    raw = tokens.create_token("slow", rate=2)[1]
    assert [post(raw, VALID).status_code for _ in range(2)] == [201, 201]
    response = post(raw, VALID)
    error = error_of(response, 429)
    assert error["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert Event.objects.count() == 2
    assert ApiRateWindow.objects.get().count == 3
    # The default rate comes from the settings.
    settings.NOTIFICATIONS = {"API_RATE": 1}
    away_from_a_minute_boundary()
    other = tokens.create_token("default-rate")[1]
    assert [post(other, VALID).status_code for _ in range(2)] == [201, 429]


def test_rate_windows_are_per_minute_and_old_ones_are_cleared():
    token, _ = tokens.create_token("w", rate=2)
    start = 60 * 1000
    assert [tokens.hit(token, now=start + i).allowed for i in range(3)] == [True, True, False]
    assert tokens.hit(token, now=start + 59).retry_after == 1
    assert tokens.hit(token, now=start + 60).allowed
    assert list(ApiRateWindow.objects.values_list("minute", "count")) == [(1001, 1)]


# -- idempotency ---------------------------------------------------------------------------


def test_repeated_idempotency_key_answers_200_with_the_first_answer(raw, make_user):
    make_user("alice")
    body = with_(audience={"users": ["alice"]}, idempotency_key="build-42")
    first = post(raw, body)
    assert first.status_code == 201
    again = post(raw, with_(audience={"everyone": True}, title="other", idempotency_key="build-42"))
    assert again.status_code == 200
    assert again.json() == first.json() == {"id": Event.objects.get().id, "recipients": 1}


def test_idempotency_keys_belong_to_their_token(raw):
    other = tokens.create_token("other")[1]
    body = with_(idempotency_key="same")
    assert post(raw, body).status_code == 201
    assert post(other, body).status_code == 201
    assert Event.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_two_identical_requests_at_once_store_one_event(raw):
    """Both answers carry the one event's id (PostgreSQL: the stream lock serialises the
    key check; SQLite: IMMEDIATE transactions do)."""
    body = json.dumps(with_(idempotency_key="concurrent"))
    barrier = threading.Barrier(2)
    answers: list = []

    def send() -> None:
        try:
            barrier.wait(5)
            response = Client().post(
                URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
            )
            answers.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    event = Event.objects.get()
    assert sorted(status for status, _ in answers) == [200, 201]
    assert [answer for _, answer in answers] == [{"id": event.id, "recipients": 0}] * 2


# -- batch ---------------------------------------------------------------------------------


def test_batch_stores_all_in_order(raw, make_user, notifications_outbox):
    make_user("alice")
    items = [with_(title=f"n{i}") for i in range(3)]
    items[1] = with_(title="n1", audience={"users": ["alice"]})
    response = post(raw, {"notifications": items}, path=BATCH)
    assert response.status_code == 201, response.content
    events = list(Event.objects.order_by("id"))
    assert [e.title for e in events] == ["n0", "n1", "n2"]
    assert response.json() == {
        "results": [{"id": e.id, "recipients": e.recipient_count} for e in events]
    }
    assert [e.title for e in notifications_outbox] == ["n0", "n1", "n2"]


@pytest.mark.parametrize(
    ("item", "status", "code", "field"),
    [
        (with_(title=""), 400, "invalid", "title"),
        (with_(audience={"users": ["ghost"]}), 400, "not_found", "audience.users"),
        (with_(data={"x": "\x00"}), 400, "not_strict_json", "data.x"),
        ("a string", 400, "invalid", None),
    ],
)
def test_one_bad_item_stores_nothing(raw, item, status, code, field):
    items = [VALID, item, VALID]
    error = error_of(post(raw, {"notifications": items}, path=BATCH), status)
    assert (error["code"], error["field"], error["index"]) == (code, field, 1)
    assert not Event.objects.exists()


def test_batch_scope_error_carries_the_index():
    raw = tokens.create_token("limited", scopes=["everyone"])[1]
    items = [VALID, VALID, with_(audience={"staff": True})]
    error = error_of(post(raw, {"notifications": items}, path=BATCH), 403)
    assert (error["code"], error["field"], error["index"]) == ("forbidden", "audience.staff", 2)
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"notifications": []}, "invalid", "notifications"),
        ({"notifications": [VALID] * (MAX_BATCH + 1)}, "invalid", "notifications"),
        ({"notifications": VALID}, "invalid", "notifications"),
        ({}, "invalid", "notifications"),
        ({"notifications": [VALID], "extra": 1}, "unknown_field", "extra"),
    ],
)
def test_bad_batches(raw, body, code, field):
    error = error_of(post(raw, body, path=BATCH))
    assert (error["code"], error["field"]) == (code, field)
    assert "index" not in error
    assert not Event.objects.exists()


def test_batch_of_the_maximum_size(raw):
    response = post(raw, {"notifications": [VALID] * MAX_BATCH}, path=BATCH)
    assert response.status_code == 201
    assert len(response.json()["results"]) == MAX_BATCH == Event.objects.count()


def test_batch_with_a_repeated_key_answers_the_first_event(raw):
    first = post(raw, with_(idempotency_key="k")).json()
    response = post(raw, {"notifications": [with_(idempotency_key="k"), VALID]}, path=BATCH)
    assert response.status_code == 201
    results = response.json()["results"]
    assert results[0] == first and results[1]["id"] > first["id"]
    assert Event.objects.count() == 2


def test_only_post(raw):
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
