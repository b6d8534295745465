"""The hub's indexed matching (``Hub._targets``) is the in-memory form of the audience rule,
``audiences.matches``, written with indexes for speed: hypothesis checks that the two pick
the same sockets for any sockets and any event (no database involved)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from notifications.audiences import Membership, matches
from notifications.models import Reach
from notifications.realtime.connection import Connection
from notifications.realtime.hub import Hub

ids = st.integers(1, 4)
small_sets = st.frozensets(ids, max_size=3)
memberships = st.one_of(
    st.just(Membership(user_id=None)),
    st.builds(
        Membership,
        user_id=ids,
        is_staff=st.booleans(),
        is_superuser=st.booleans(),
        group_ids=small_sets,
        topic_ids=small_sets,
        permission_ids=small_sets,
    ),
)
events = st.fixed_dictionaries(
    {
        "reach": st.sampled_from(Reach.values),
        "users": st.lists(ids, max_size=3, unique=True),
        "groups": st.lists(ids, max_size=3, unique=True),
        "topic": st.none() | ids,
        "permission": st.none() | ids,
        "channel": st.none() | st.sampled_from(["orders.1", "orders.2"]),
    }
)
# What a connection follows for itself: anonymous visitors' topics, authorised channels.
own = st.tuples(small_sets, st.frozensets(st.sampled_from(["orders.1", "orders.2"])))


class _NoWriter:
    fast = False


async def _targets(sockets: list, message: dict) -> tuple[set[int], set[int]]:
    hub = Hub()
    conns = []
    for membership, (topics, channels) in sockets:
        conn = Connection(writer=_NoWriter(), close=None, membership=membership)
        hub.attach(conn)
        for topic in topics:
            hub.follow(conn, topic, stored=False)
        for name in channels:
            hub.follow_channel(conn, name)
        conns.append(conn)
    indexed = {conns.index(c) for c in hub._targets(message, message["users"])}
    defined = {
        i
        for i, (membership, (topics, channels)) in enumerate(sockets)
        if matches(membership, message, topics=topics, channels=channels)
    }
    return indexed, defined


@settings(max_examples=500, deadline=None)
@given(sockets=st.lists(st.tuples(memberships, own), max_size=6), message=events)
def test_hub_indexes_agree_with_the_rule(sockets, message):
    indexed, defined = asyncio.run(_targets(sockets, message))
    assert indexed == defined
