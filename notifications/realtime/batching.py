"""Run the database work of handshakes that arrive together in one thread hop.

After a deploy every client reconnects at once. Done one by one, each signed-in handshake
paid for a thread hop, Django's connection health check, and an ORM query each for its
session and its user: a signed-in handshake cost the server 3.2 ms of CPU, against 0.5 ms for
an anonymous one (``bench/handshakes.py``). A :class:`Batcher` queues the calls of one kind
and hands all that are waiting to one call of a function that takes a list, on the handshake
threads (``dbthreads.py``); that function reads what it can for the whole list at once
(``auth.authenticate_many``: one query for all the sessions, one for all the users).

Nothing waits to fill a batch: a call runs at once when no batch of its kind is running, so
a lone handshake is as fast as before, and batches grow only while one is running, which is
exactly when handshakes arrive faster than they are served. One batch of a kind at a time:
with several, batches were smaller and the threads fought the event loop for the GIL
(3,000 signed-in handshakes on PostgreSQL: 1,223/s with one batch at a time on one thread,
910/s with two threads, 525/s with four batches on four threads).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from .dbthreads import handshake_reads

T = TypeVar("T")
R = TypeVar("R")


class _LoopState:
    """Per event loop (tests run many): the waiting calls and the batch in flight."""

    __slots__ = ("busy", "pending", "tasks")

    def __init__(self) -> None:
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.busy = False  # a batch of this kind is running
        self.tasks: set[asyncio.Task] = set()


class Batcher(Generic[T, R]):
    """``await batcher(item)`` is ``run([item, ...])[i]``, with the items that were waiting
    together in one call of ``run`` on a handshake thread.

    ``run`` returns one answer per item, in order; an answer that is an exception is raised
    to that item's caller alone. If ``run`` itself raises, every item of the batch gets it.
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R | BaseException]], *, limit: int = 256):
        self._run = handshake_reads(run)
        self.limit = limit
        self._states: weakref.WeakKeyDictionary[Any, _LoopState] = weakref.WeakKeyDictionary()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        future: asyncio.Future = loop.create_future()
        state.pending.append((item, future))
        self._start(state)
        return await future

    def _start(self, state: _LoopState) -> None:
        if state.pending and not state.busy:
            batch, state.pending = state.pending[: self.limit], state.pending[self.limit :]
            state.busy = True
            task = asyncio.ensure_future(self._serve(state, batch))
            state.tasks.add(task)  # a reference, so that the task is not collected
            task.add_done_callback(state.tasks.discard)

    async def _serve(self, state: _LoopState, batch: list[tuple[Any, asyncio.Future]]) -> None:
        answers: Sequence[Any]
        cancelled = False
        try:
            answers = await self._run([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} items")
        except BaseException as exc:  # handed to every caller of the batch
            answers = [exc] * len(batch)
            cancelled = isinstance(exc, asyncio.CancelledError)  # the loop is closing
        finally:
            state.busy = False
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the handshake was cancelled (its client went away)
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        if not cancelled:
            self._start(state)
