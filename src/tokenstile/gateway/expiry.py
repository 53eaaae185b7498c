"""A deadline on the running task: what an ``asyncio.timeout`` scope does, for less.

One loop timer cancels the task when it fires; ``stop`` cancels the timer and tells whether
a cancellation the task sees is the deadline's own (no other cancel was asked for since),
with the same bookkeeping as ``asyncio.timeout`` (``Task.uncancel``). The hot path opens one
per request body and one per whole response, where a scope's object, its async context
manager and its rescheduling showed in profiles.
"""

from __future__ import annotations

import asyncio


class Expiry:
    __slots__ = ("_base", "_fired", "_handle", "_task")

    def __init__(self, delay_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "an Expiry runs inside a task"
        self._task = task
        self._base = task.cancelling()
        self._fired = False
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            delay_s, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._handle = None
        self._task.cancel()

    def stop(self) -> bool:
        """Cancels the timer (again: nothing). True, once, when the deadline has fired and
        no other cancellation is pending: a ``CancelledError`` now is a timeout."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            return False
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._base
