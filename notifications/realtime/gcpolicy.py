"""Keep the cyclic garbage collector's pauses short in a process holding thousands of sockets.

Every open socket is about a hundred container objects (the server's protocol, parser and
headers, the consumer's coroutines, queues and futures) that live as long as the socket. A
full (generation 2) collection walks every one of them while the event loop stands still: on
this project's benchmark machine ~250 ms at 3,000 sockets and ~300-900 ms at 10,000, several
times a minute while sockets are being opened, and every delivery waits behind it
(docs/performance.md). CPython 3.11-3.13 has no incremental collector (3.14's is).

``gc.freeze()`` moves every object tracked so far into a permanent generation that
collections skip, so later collections walk only what is newer. Objects in it are still freed
by reference counting (a closed socket's objects go as soon as the last reference does); what
the collector would have found, unreachable reference cycles among frozen objects, waits until
they are unfrozen. So :class:`GcPolicy`:

- every ``GC_FREEZE_INTERVAL`` seconds (default 10) collects the young generations, which is
  cheap, and freezes what survived;
- every ``GC_FULL_COLLECT_INTERVAL`` seconds (default 600) unfreezes, runs one full
  collection (the pause the policy avoids, once per interval instead of whenever the
  collector's own trigger fires) and freezes again, which bounds what cycles can wait to
  ten minutes' worth.

It runs only while a hub runs (a process serving sockets), and ``GC_FREEZE_INTERVAL = None``
turns it off. It changes the whole process's collector, so a site that tunes ``gc`` itself
should turn it off.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

logger = logging.getLogger("notifications.realtime")


class GcPolicy:
    """Periodic ``gc.freeze()`` with a planned full collection now and then."""

    def __init__(self, freeze_interval: float, full_interval: float | None) -> None:
        self.freeze_interval = freeze_interval
        self.full_interval = full_interval
        self._last_full = time.monotonic()
        self.freezes = 0
        self.full_collections = 0

    def step(self, now: float | None = None) -> None:
        """One maintenance step (what :meth:`run` does every ``freeze_interval``)."""
        now = time.monotonic() if now is None else now
        if self.full_interval is not None and now - self._last_full >= self.full_interval:
            self._last_full = now
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            self.full_collections += 1
            logger.info(
                "gc: planned full collection found %s objects in %.0f ms",
                found,
                (time.perf_counter() - started) * 1000,
            )
        else:
            # Young cyclic garbage is collected first, so that it is not frozen.
            gc.collect(1)
        gc.freeze()
        self.freezes += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.freeze_interval)
            self.step()

    @staticmethod
    def release() -> None:
        """Give the frozen objects back to the collector (the hub stopped)."""
        gc.unfreeze()
