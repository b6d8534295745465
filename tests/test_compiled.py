"""notifications/compiled.py, and the compiled greeting against its ORM definition."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db.models import Max
from django.utils import timezone

from notifications import Audience, notify
from notifications.compiled import CompiledQuery
from notifications.models import Event, InboxState, Topic
from notifications.selectors import greeting, greeting_orm
from notifications.services import mark_read, subscribe

pytestmark = pytest.mark.django_db


def test_compiled_query_swaps_values_and_matches_the_orm(make_user):
    users = [make_user(f"u{i}") for i in range(3)]
    events = [notify(user, f"for {user.username}") for user in users for _ in range(2)]

    def build(shape, *, user_id, after):
        return Event.objects.filter(recipients__user_id=user_id, id__gt=after).aggregate(
            top=Max("id")
        )

    query = CompiledQuery(build)
    for user, after in itertools.product(users, [0, events[0].id, events[-1].id]):
        expected = build((), user_id=user.pk, after=after)["top"]
        assert query.row((), user_id=user.pk, after=after) == (expected,)
    assert len(query._templates) == 1


def test_compiled_query_refuses_what_it_cannot_swap(make_user):
    make_user("alice")

    def two_statements(shape, *, user_id):
        list(Event.objects.filter(recipients__user_id=user_id))
        list(Event.objects.filter(recipients__user_id=user_id))

    with pytest.raises(RuntimeError, match="exactly one statement"):
        CompiledQuery(two_statements).row((), user_id=1)

    def drops_a_value(shape, *, user_id, unused):
        return list(Event.objects.filter(recipients__user_id=user_id))

    with pytest.raises(RuntimeError, match="unused"):
        CompiledQuery(drops_a_value).row((), user_id=1, unused=2)

    with pytest.raises(TypeError, match="shape"):
        CompiledQuery(lambda shape, *, flag: None).row((), flag=True)


def test_compiled_greeting_equals_the_orm_greeting(make_user):
    """Every audience kind, read marks, the read-through watermark, staff and not, extra
    topics, users who joined after some events, and many (upto, counted_to) pairs."""
    rng = random.Random(7)
    early = make_user("early")
    editors, others = Group.objects.create(name="editors"), Group.objects.create(name="others")
    news = Topic.objects.create(slug="news", name="News", is_public=True)
    ops = Topic.objects.create(slug="ops", name="Ops", is_public=True)
    ops.groups.add(editors)
    events = [notify("everyone", "first, before most users joined")]
    Event.objects.filter(pk=events[0].pk).update(created_at=timezone.now() - timedelta(days=2))
    users = [early] + [make_user(f"user{i}", is_staff=i % 2 == 0) for i in range(5)]
    users[1].groups.add(editors)
    users[2].groups.add(others)
    subscribe(users[3], "news")
    audiences = [
        "everyone",
        Audience(reach="authenticated"),
        Audience(reach="staff"),
        editors,
        others,
        news,
        ops,
        Audience(users=users[:3]),
        users[4],
        Audience(users=[users[5]], groups=[others]),
    ]
    for i in range(40):
        events.append(notify(rng.choice(audiences), f"event {i}"))
    for user in users:
        ids = [event.id for event in events]
        mark_read(user, rng.sample(ids, 8))
    InboxState.objects.update_or_create(user=users[2], defaults={"read_through": events[20].id})
    top = events[-1].id
    seen = set()
    cuts = [0, events[1].id, events[20].id, top - 3, top, top + 5]
    for user, upto, counted_to in itertools.product(users, cuts, cuts):
        for extra in [(), (news.pk,), (news.pk, ops.pk)]:
            kwargs = dict(upto=upto, counted_to=counted_to, extra_topic_ids=extra)
            assert greeting(user, **kwargs) == greeting_orm(user, **kwargs), (user, kwargs)
            seen.add(greeting(user, **kwargs))
    assert len(seen) > 30 and any(g.unread for g in seen), seen  # the figures vary


def test_compiled_membership_equals_the_orm(make_user):
    from notifications.audiences import _membership_query, membership_of

    editors, others = Group.objects.create(name="editors"), Group.objects.create(name="others")
    news = Topic.objects.create(slug="news", name="News", is_public=True)
    ops = Topic.objects.create(slug="ops", name="Ops", is_public=True)
    Topic.objects.create(slug="idle", name="Idle", is_public=True)
    ops.groups.add(editors, others)
    alice, bob, carol = make_user("alice"), make_user("bob", is_staff=True), make_user("carol")
    alice.groups.add(editors, others)
    subscribe(alice, "ops")  # also through both groups: listed once
    subscribe(bob, "news")
    assert membership_of(alice).group_ids == {editors.pk, others.pk}
    assert membership_of(alice).topic_ids == {ops.pk}
    assert (membership_of(bob).group_ids, membership_of(bob).topic_ids) == (set(), {news.pk})
    assert membership_of(bob).is_staff and not membership_of(carol).topic_ids
    for user in (alice, bob, carol):
        rows = sorted(_membership_query((), user_id=user.pk))
        assert len(rows) == len(set(rows))
        membership = membership_of(user)
        assert (
            sorted(
                [("g", g) for g in membership.group_ids]
                + [("t", t) for t in membership.topic_ids]
                + [("p", p) for p in membership.permission_ids]
            )
            == rows
        )


def test_session_check_finds_exactly_the_pairs_that_no_longer_authenticate(make_user):
    """hub._session_states on compiled, padded IN lists: deleted and expired sessions,
    inactive users, flags and the auth hash, and more pairs than one chunk."""
    from django.contrib.sessions.models import Session

    from notifications.realtime.loads import UserState, _session_states

    from .support import session_cookie

    def key(user):
        return session_cookie(user).split("=", 1)[1]

    def invalid(pairs):
        users, live = _session_states(pairs)
        return {(k, uid) for k, uid in pairs if uid not in users or (k and k not in live)}

    users = [make_user(f"s{i}") for i in range(12)]
    pairs = [(key(user), user.pk) for user in users]
    deleted, expired, inactive = pairs[1], pairs[2], pairs[3]
    Session.objects.filter(session_key=deleted[0]).delete()
    Session.objects.filter(session_key=expired[0]).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    users[3].is_active = False
    users[3].save()
    gone_user = (pairs[4][0], 10**9)  # a user id that does not exist
    assert invalid([*pairs, gone_user]) == {deleted, expired, inactive, gone_user}
    # More than one chunk (500), and a last chunk padded with repeated values.
    many = [(f"missing-{i}", users[0].pk) for i in range(503)] + [pairs[0]]
    assert invalid(many) == set(many[:503])
    assert invalid([pairs[0]]) == set()
    # Flags and the auth hash as they are now, also after changes that send no signal.
    type(users[5]).objects.filter(pk=users[5].pk).update(is_staff=True, is_superuser=True)
    states, _ = _session_states([pairs[5], pairs[6]])
    assert states[users[5].pk] == UserState(True, True, users[5].get_session_auth_hash())
    assert states[users[6].pk] == UserState(False, False, users[6].get_session_auth_hash())
    users[6].set_password("changed")
    users[6].save()
    states, _ = _session_states([pairs[6]])
    assert states[users[6].pk].auth_hash == users[6].get_session_auth_hash()
    assert states[users[6].pk].auth_hash != users[5].get_session_auth_hash()


def test_compiled_membership_of_a_superuser_equals_the_orm(make_user):
    """On PostgreSQL, Django compiles ``pk=<value out of the 32-bit range>`` to a constant
    false: sentinels must stay in range, or the superuser check vanishes from the SQL."""
    from notifications.audiences import _membership_query, follows, membership_of

    root = make_user("root", is_superuser=True)
    secret = Topic.objects.create(slug="secret", name="Secret", is_public=False)
    subscribe(root, "secret")
    assert follows(root, secret)
    assert sorted(_membership_query((), user_id=root.pk)) == [("t", secret.pk)]
    assert membership_of(root).topic_ids == {secret.pk}


def _prepared_statements() -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def _labelled_query(label: str) -> CompiledQuery:
    """A compiled query whose SQL no other test runs (its label is a constant in it)."""

    def build(shape, *, user_id):
        return list(
            Event.objects.filter(recipients__user_id=user_id, title=label).values_list("id")
        )

    return CompiledQuery(build)


def _needs_postgresql() -> None:
    from django.db import connection

    from .support import require_service

    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "prepared statements are PostgreSQL's: set "
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )


@pytest.mark.postgres
def test_compiled_queries_run_prepared_on_postgresql_and_nothing_else_does(make_user):
    """Planning the membership query cost PostgreSQL ~1 ms a handshake; prepared, it is
    planned once per connection. Django's own statements stay unprepared (its default,
    which keeps transaction-pooling proxies working). While Django logs queries they run
    unprepared, so that the log shows their SQL."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _needs_postgresql()
    alice, bob = make_user("alice"), make_user("bob")
    event = notify(alice, "prepared-a")
    query = _labelled_query("prepared-a")
    connection.ensure_connection()
    raw = connection.connection
    before = (raw.cursor_factory, raw.prepare_threshold)
    assert query.rows((), user_id=alice.pk) == [(event.id,)]
    assert query.rows((), user_id=bob.pk) == []
    assert (raw.cursor_factory, raw.prepare_threshold) == before  # put back
    prepared = [sql for sql in _prepared_statements() if "notifications_recipient" in sql]
    assert len(prepared) == 1, prepared  # prepared once, run twice
    # Django's own statements are not prepared (it binds them on the client).
    list(type(alice).objects.filter(username="alice-unprepared"))
    assert not [sql for sql in _prepared_statements() if "alice-unprepared" in sql]
    assert not [sql for sql in _prepared_statements() if '"username" = $' in sql]
    with CaptureQueriesContext(connection) as queries:
        assert query.rows((), user_id=alice.pk) == [(event.id,)]
    assert "prepared-a" in queries[0]["sql"] and f"= {alice.pk}" in queries[0]["sql"]


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["setting", "pooler"])
def test_prepared_queries_can_be_turned_off(make_user, settings, how):
    from django.db import connection

    _needs_postgresql()
    alice = make_user("alice")
    event = notify(alice, f"unprepared-{how}")
    if how == "setting":
        settings.NOTIFICATIONS = {
            **getattr(settings, "NOTIFICATIONS", {}),
            "PREPARED_QUERIES": False,
        }
    else:  # Django's flag for transaction-pooling proxies such as PgBouncer
        connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = True
    try:
        query = _labelled_query(f"unprepared-{how}")
        assert query.rows((), user_id=alice.pk) == [(event.id,)]
        assert query.rows((), user_id=alice.pk) == [(event.id,)]
        assert not [sql for sql in _prepared_statements() if "notifications_recipient" in sql]
    finally:
        connection.settings_dict.pop("DISABLE_SERVER_SIDE_CURSORS", None)
