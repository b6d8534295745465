"""Handshakes that arrive together share their database work (realtime/batching.py):
sessions and users read once for all (auth.authenticate_many), memberships and ``hello``
counts in one statement on PostgreSQL (CompiledQuery.rows_each). Each batched form must
answer exactly what the one-at-a-time form answers."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as db
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import Audience, notify
from notifications.audiences import membership_of, memberships_of
from notifications.models import Topic
from notifications.realtime.auth import authenticate, authenticate_many
from notifications.realtime.batching import Batcher
from notifications.selectors import greeting, greetings
from notifications.services import mark_read, subscribe

from .support import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def _key(user) -> str:
    return session_cookie(user).split("=", 1)[1]


def _who(answer) -> tuple[int | None, str | None]:
    user, key = answer
    return (user.pk if user.is_authenticated else None), key


# authenticate_many ---------------------------------------------------------------------------


def test_authenticate_many_answers_what_authenticate_answers(make_user, settings):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    gone, idle = make_user("gone"), make_user("idle")
    keys = {
        "alice": _key(alice),
        "alice-again": _key(alice),  # a second session of the same user
        "bob": _key(bob),
        "expired": _key(carol),
        "deleted": _key(carol),
        "gone-user": _key(gone),
        "inactive": _key(idle),
        "other-backend": _key(carol),
    }
    Session.objects.filter(session_key=keys["expired"]).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    Session.objects.filter(session_key=keys["deleted"]).delete()
    gone.delete()
    idle.is_active = False
    idle.save()
    store = Session.objects.get(session_key=keys["other-backend"])
    data = store.get_decoded()
    data["_auth_user_backend"] = "no.such.Backend"
    Session.objects.filter(pk=store.pk).update(
        session_data=Session.objects.encode(data)  # type: ignore[attr-defined]
    )
    batch = [
        keys["alice"],
        None,
        keys["bob"],
        keys["alice"],  # the same session twice
        "short",  # not a well-formed session key
        "x" * 40,  # well-formed, unknown
        keys["expired"],
        keys["deleted"],
        keys["gone-user"],
        keys["inactive"],
        keys["other-backend"],
        keys["alice-again"],
    ]
    expected = [_who(authenticate(key)) for key in batch]
    with CaptureQueriesContext(connection) as queries:
        answers = authenticate_many(batch)
    assert [_who(answer) for answer in answers] == expected
    assert [pk for pk, _ in expected] == [alice.pk, None, bob.pk, alice.pk] + [None] * 7 + [
        alice.pk
    ]
    assert len(queries) == 2, [q["sql"] for q in queries]  # all sessions, then all users
    users = [user for user, _ in answers if user.is_authenticated]
    assert len({id(user) for user in users}) == len(users)  # one instance per socket


def test_a_session_whose_hash_no_longer_verifies_is_flushed_as_django_does(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    stale, fine = _key(alice), _key(bob)
    alice.set_password("changed")
    alice.save()  # her session hash no longer verifies
    answers = authenticate_many([stale, fine])
    assert [_who(answer) for answer in answers] == [(None, None), (bob.pk, fine)]
    # Django's get_user flushes such a session; the batched path hands it to Django.
    assert not Session.objects.filter(session_key=stale).exists()


def test_another_session_engine_takes_djangos_path_for_each_key(make_user, settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    alice, bob = make_user("alice"), make_user("bob")
    keys = [_key(alice), _key(bob), None]
    answers = authenticate_many(keys)
    assert [_who(answer) for answer in answers] == [
        (alice.pk, keys[0]),
        (bob.pk, keys[1]),
        (None, None),
    ]


def test_one_unreadable_session_fails_only_its_own_handshake(make_user):
    """A key the database cannot store (a NUL byte: PostgreSQL refuses the whole statement)
    and a session Django cannot read must not fail the other keys of the batch."""
    alice, bob = make_user("alice"), make_user("bob")
    broken = _key(bob)
    store = Session.objects.get(session_key=broken)
    data = store.get_decoded()
    data["_auth_user_id"] = "not-a-number"  # Django's get_user raises on it
    Session.objects.filter(pk=store.pk).update(
        session_data=Session.objects.encode(data)  # type: ignore[attr-defined]
    )
    good = _key(alice)
    answers = authenticate_many([good, "abcdefgh\x00ijklmnop", broken, "k" * 500, good])
    assert _who(answers[0]) == _who(answers[4]) == (alice.pk, good)
    assert _who(answers[1]) == _who(answers[3]) == (None, None)
    assert isinstance(answers[2], Exception)
    with pytest.raises(type(answers[2])):
        authenticate(broken)  # as Django answers it one at a time


async def test_a_poisoned_cookie_does_not_refuse_the_handshakes_beside_it(amake_user):
    from .support import Socket

    users = [await amake_user(f"beside{i}") for i in range(6)]
    cookies = [await db(session_cookie)(user) for user in users]
    poisoned = Socket(cookie="sessionid=abcdefgh\x00ijklmnop")
    sockets = [Socket(cookie=cookie) for cookie in cookies]
    try:
        results = await asyncio.gather(
            poisoned.communicator.connect(timeout=10),
            *(s.communicator.connect(timeout=10) for s in sockets),
        )
        assert all(ok for ok, _ in results)
        assert (await poisoned.expect("hello", timeout=10))["user"] is None  # anonymous
        hellos = [await s.expect("hello", timeout=10) for s in sockets]
        assert [h["user"] for h in hellos] == [u.username for u in users]
    finally:
        for socket in [poisoned, *sockets]:
            await socket.close()


# memberships and greetings -------------------------------------------------------------------


def _scenario(make_user):
    rng = random.Random(11)
    editors, others = Group.objects.create(name="editors"), Group.objects.create(name="others")
    news = Topic.objects.create(slug="news", name="News", is_public=True)
    ops = Topic.objects.create(slug="ops", name="Ops", is_public=True)
    secret = Topic.objects.create(slug="secret", name="Secret", is_public=False)
    ops.groups.add(editors)

    users = [make_user(f"user{i}", is_staff=i % 3 == 0) for i in range(9)]
    users.append(make_user("root", is_superuser=True))
    users[1].groups.add(editors)
    users[2].groups.add(others, editors)
    secret.members.add(users[4])
    subscribe(users[3], "news")
    subscribe(users[9], "secret")
    audiences = [
        "everyone",
        Audience(reach="authenticated"),
        Audience(reach="staff"),
        editors,
        news,
        ops,
        secret,
        Audience(users=users[:3]),
        users[5],
    ]
    events = [notify(rng.choice(audiences), f"event {i}") for i in range(30)]
    for user in users:
        mark_read(user, rng.sample([event.id for event in events], 5))
    return users, events, (news, ops)


def test_memberships_of_equal_membership_of_each(make_user):
    from django.contrib.auth.models import AnonymousUser

    users, _, _ = _scenario(make_user)
    mixed = [*users, AnonymousUser(), users[0]]
    assert memberships_of(mixed) == [membership_of(user) for user in mixed]
    assert memberships_of([]) == []
    assert memberships_of([users[4]]) == [membership_of(users[4])]


def test_greetings_equal_greeting_of_each(make_user):
    from django.contrib.auth.models import AnonymousUser

    users, events, (news, ops) = _scenario(make_user)
    top = events[-1].id
    cuts = [0, events[3].id, events[15].id, top, top + 5]
    requests = []
    for user, (upto, counted_to), extra in itertools.product(
        [*users, AnonymousUser()],
        [(cuts[i], cuts[j]) for i, j in [(0, 0), (1, 2), (2, 1), (3, 3), (4, 3), (3, 4)]],
        [(), (news.pk,), (news.pk, ops.pk)],
    ):
        requests.append((user, upto, counted_to, extra))
    expected = [
        greeting(user, upto=upto, counted_to=counted_to, extra_topic_ids=extra)
        for user, upto, counted_to, extra in requests
    ]
    assert greetings(requests) == expected
    assert len(set(expected)) > 20 and any(g.unread for g in expected)


def test_rows_each_is_one_statement_on_postgresql(make_user):
    from .support import require_service

    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "one statement for a batch is PostgreSQL's (CROSS JOIN LATERAL unnest): set "
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )
    users, _, _ = _scenario(make_user)
    memberships_of(users[:2])  # compiled once, through the ORM
    with CaptureQueriesContext(connection) as queries:
        memberships_of(users)
    assert len(queries) == 1 and "LATERAL" in queries[0]["sql"]


# the batcher -----------------------------------------------------------------------------------


async def test_calls_that_arrive_together_share_one_run_and_keep_their_own_answer():
    runs: list[list[int]] = []

    def run(items: list[int]) -> list[int | Exception]:
        runs.append(list(items))
        return [ValueError(f"bad {i}") if i == 13 else i * 10 for i in items]

    batcher = Batcher(run)
    answers = await asyncio.gather(*(batcher(i) for i in range(20)), return_exceptions=True)
    assert answers[:13] == [i * 10 for i in range(13)] and answers[14:] == [
        i * 10 for i in range(14, 20)
    ]
    assert isinstance(answers[13], ValueError) and str(answers[13]) == "bad 13"
    # The first call runs at once, alone; the rest waited for it and ran together.
    assert runs == [[0], list(range(1, 20))]
    assert await batcher(7) == 70 and runs[-1] == [7]  # a lone call is not held back


async def test_a_failing_run_fails_its_batch_and_the_next_batch_still_runs():
    calls = 0

    def run(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("database unavailable")
        return [item.upper() for item in items]

    batcher = Batcher(run, limit=3)
    first = asyncio.ensure_future(batcher("a"))
    rest = [asyncio.ensure_future(batcher(x)) for x in "bcdef"]
    assert await first == "A"
    results = await asyncio.gather(*rest, return_exceptions=True)
    # b, c, d were the failing batch (limit 3); e, f the next one.
    assert [type(r) for r in results[:3]] == [ConnectionError] * 3
    assert results[3:] == ["E", "F"]


async def test_a_cancelled_call_does_not_disturb_the_others():
    def run(items: list[int]) -> list[int]:
        return [i + 1 for i in items]

    batcher = Batcher(run)
    first = asyncio.ensure_future(batcher(0))
    gone = asyncio.ensure_future(batcher(1))
    kept = asyncio.ensure_future(batcher(2))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == 1 and await kept == 3
    assert gone.cancelled()


# through the consumer ------------------------------------------------------------------------


async def test_signed_in_sockets_opened_at_once_each_get_their_own_hello(amake_user):
    """Twenty signed-in handshakes at once (batched): each hello names its own user and
    counts that user's own unread notifications."""
    from .support import Socket

    users = [await amake_user(f"many{i}") for i in range(20)]
    for i, user in enumerate(users):
        for n in range(i % 4):
            await db(notify)(user, f"for {user.username} #{n}")
    cookies = [await db(session_cookie)(user) for user in users]
    sockets = [Socket(cookie=cookie) for cookie in cookies]
    try:
        connected = await asyncio.gather(*(s.communicator.connect(timeout=10) for s in sockets))
        assert all(ok for ok, _ in connected)
        hellos = await asyncio.gather(*(s.expect("hello", timeout=10) for s in sockets))
        assert [h["user"] for h in hellos] == [u.username for u in users]
        assert [h["unread"] for h in hellos] == [i % 4 for i in range(20)]
    finally:
        for socket in sockets:
            await socket.close()


def test_handshake_connections_run_without_jit_on_postgresql():
    from notifications.realtime.dbthreads import handshake_reads

    from .support import require_service

    require_service(
        "postgres",
        connection.vendor == "postgresql",
        "jit is PostgreSQL's: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
    )

    def show_jit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW jit")
            return cursor.fetchone()[0]

    before = show_jit()
    assert asyncio.run(handshake_reads(show_jit)()) == "off"
    assert show_jit() == before  # other connections keep the server's setting


# replays -------------------------------------------------------------------------------------


def test_replays_equal_replay_of_each(make_user):
    from notifications.selectors import replay, replays

    users, events, (news, ops) = _scenario(make_user)
    top = events[-1].id
    cuts = [0, events[3].id, events[15].id, top]
    requests = []
    for user, (after, upto), limit, extra in itertools.product(
        users,
        [(0, top), (cuts[1], cuts[2]), (cuts[2], top + 5), (top, top)],
        [201, 4],
        [(), (news.pk,), (news.pk, ops.pk)],
    ):
        requests.append((user, after, upto, limit, extra))
    expected = [
        [
            (event.id, event.is_read)
            for event in replay(user, after=after, upto=upto, limit=limit, extra_topic_ids=extra)
        ]
        for user, after, upto, limit, extra in requests
    ]
    got = [[(event.id, is_read) for event, is_read in rows] for rows in replays(requests)]
    assert got == expected
    assert any(len(rows) == 4 for rows in got) and any(r for rows in got for _, r in rows)


def test_load_replays_equal_load_replay_of_each_also_for_topics_and_channels(make_user):
    from django.contrib.auth.models import AnonymousUser

    from notifications.realtime.loads import ReplayRequest, load_replay, load_replays

    users, events, (news, _) = _scenario(make_user)
    top = events[-1].id
    requests = [
        ReplayRequest(users[0], after=0, upto=top, limit=201),
        ReplayRequest(users[1], after=events[5].id, upto=top, limit=201, language="fr"),
        ReplayRequest(users[0], after=0, upto=top, limit=201),  # the same replay twice
        ReplayRequest(users[3], after=0, upto=top, limit=201, topic_id=news.pk),
        ReplayRequest(AnonymousUser(), after=0, upto=top, limit=201, extra_topic_ids=(news.pk,)),
        ReplayRequest(users[2], after=0, upto=top, limit=3),
    ]
    expected = [
        load_replay(
            r.user,
            after=r.after,
            upto=r.upto,
            limit=r.limit,
            extra_topic_ids=r.extra_topic_ids,
            topic_id=r.topic_id,
            channels=r.channels,
            channel=r.channel,
            language=r.language,
        )
        for r in requests
    ]
    assert load_replays(requests) == expected
    assert all(expected[:2]) and len(expected[5]) == 3


async def test_signed_in_sockets_resuming_at_once_each_get_their_own_replay(amake_user):
    """Twenty signed-in clients resuming together (one batched replay): each gets exactly the
    events it missed, with its own read flags, then ``replayed``."""
    from notifications.services import mark_read

    from .support import Socket

    users = [await amake_user(f"resume{i}") for i in range(20)]
    first = await db(notify)("everyone", "before")
    mine = {}
    for i, user in enumerate(users):
        mine[user.pk] = [
            (await db(notify)(user, f"for {user.username} #{n}")).id for n in range(i % 3)
        ]
    everyone = await db(notify)("everyone", "after")
    await db(mark_read)(users[1], [everyone.id])
    sockets = [Socket(cookie=await db(session_cookie)(user), cursor=first.id) for user in users]
    try:
        await asyncio.gather(*(s.communicator.connect(timeout=10) for s in sockets))
        for i, (user, sock) in enumerate(zip(users, sockets, strict=True)):
            await sock.expect("hello", timeout=10)
            wanted = sorted([*mine[user.pk], everyone.id])
            frames = await sock.notifications(len(wanted), timeout=10)
            assert [f["id"] for f in frames] == wanted
            assert all(f["replay"] for f in frames)
            assert frames[-1]["read"] is (i == 1)
            assert (await sock.expect("replayed", timeout=10))["count"] == len(wanted)
    finally:
        for socket in sockets:
            await socket.close()
