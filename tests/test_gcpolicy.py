"""The collector policy of notifications/realtime/gcpolicy.py, and that closed sockets leave no
reference cycles behind (what the policy relies on to free frozen sockets)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from channels.db import database_sync_to_async as db
from django.test import override_settings

from notifications.realtime.gcpolicy import GcPolicy
from notifications.realtime.hub import get_hub, reset_hub


@pytest.fixture(autouse=True)
def _unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_step_freezes_what_survived():
    # Weak references, not gc.collect()'s return value or a scan of gc.get_objects(): other
    # threads of the test process (a publisher loop, a database driver) make garbage of
    # their own at any time, which made counts of collected objects flaky.
    policy = GcPolicy(freeze_interval=10, full_interval=600)
    keep = [Cycle() for _ in range(10)]
    kept = weakref.ref(keep[0])
    policy.step()
    assert gc.get_freeze_count() > 0
    assert policy.freezes == 1 and policy.full_collections == 0
    # Frozen objects are still freed by reference counting...
    del keep
    assert kept() is not None  # (each Cycle is its own cycle: only the collector frees it)
    # ...but a frozen cycle waits for the planned full collection.
    lost = Cycle()
    lost_ref = weakref.ref(lost)
    policy.step()
    del lost
    gc.collect()
    assert lost_ref() is not None, "a frozen cycle was collected before the planned collection"
    # Past the interval, with margin: (t + 600) - t is not always >= 600 in floating point,
    # which made this line flaky when the interval was hit exactly.
    policy.step(now=policy._last_full + 601)
    assert policy.full_collections == 1
    assert lost_ref() is None and kept() is None
    assert gc.get_freeze_count() > 0  # frozen again after the full collection


def test_young_cyclic_garbage_is_collected_before_freezing():
    policy = GcPolicy(freeze_interval=10, full_interval=None)
    gc.collect()
    Cycle()  # garbage at once, in the youngest generation
    policy.step()
    gc.unfreeze()
    assert not [o for o in gc.get_objects() if type(o) is Cycle]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_hub_runs_the_policy_and_releases_on_stop(connect):
    with override_settings(
        NOTIFICATIONS={"GC_FREEZE_INTERVAL": 0.05, "GC_FULL_COLLECT_INTERVAL": None}
    ):
        await reset_hub()
        await connect()
        hub = get_hub()
        for _ in range(100):
            if hub._gc is not None and hub._gc.freezes:
                break
            await asyncio.sleep(0.02)
        assert hub._gc is not None and hub._gc.freezes > 0
        assert gc.get_freeze_count() > 0
        await reset_hub()
        assert gc.get_freeze_count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_hub_leaves_gc_alone_when_turned_off(connect):
    with override_settings(NOTIFICATIONS={"GC_FREEZE_INTERVAL": None}):
        await reset_hub()
        await connect()
        assert get_hub()._gc is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_closed_sockets_leave_no_reference_cycles(connect, amake_user):
    """Sockets opened before a freeze and closed after it must be freed by reference counting
    alone; a cycle per socket (say consumer <-> connection) would pile up until the planned
    full collection."""
    alice = await amake_user("alice")
    await connect(alice)  # the hub and the database connection exist before the freeze
    sockets = [await connect(alice) for _ in range(20)] + [await connect() for _ in range(20)]
    await db(lambda: None)()
    gc.collect()
    gc.freeze()
    for sock in sockets:
        await sock.close()
    del sockets, sock
    await asyncio.sleep(0.05)
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith("notifications")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []
