"""Admission inside a model server: a fixed number of slots and a bounded waiting room.

A request either gets a slot, waits for one, or (when the waiting room is
full) is refused at once with `QueueFullError`, whose `retry_after_s`
estimates when the backlog will have cleared. Waiting requests get slots in
FIFO order, except that batch work waits behind every interactive request
(the gateway says which is which in `X-Priority`): a user waiting on an
image goes before a job that has a minute. Nothing here waits on a timeout
to refuse.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backends.clock import Clock, MonotonicClock


class QueueFullError(Exception):
    """Every slot is busy and the waiting room is full."""

    def __init__(self, retry_after_s: int, depth: int) -> None:
        super().__init__(f"queue full: {depth} requests ahead; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s
        self.depth = depth


class AdmissionQueue:
    """`slots` concurrent holders, at most `max_waiting` more in line.

    Service times reported through `release` feed an EWMA (seeded with
    `prior_service_s`) that prices the backlog for Retry-After.
    """

    def __init__(
        self,
        slots: int,
        max_waiting: int,
        *,
        prior_service_s: float,
        clock: Clock | None = None,
        ewma_alpha: float = 0.2,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must be non-negative")
        if prior_service_s <= 0:
            raise ValueError("prior_service_s must be positive")
        self.slots = slots
        self.max_waiting = max_waiting
        self._clock = clock or MonotonicClock()
        self._alpha = ewma_alpha
        self._service_s = prior_service_s
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._batch_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters) + len(self._batch_waiters)

    @property
    def depth(self) -> int:
        """Requests in the server: holding a slot or waiting for one."""
        return self._in_flight + self.waiting

    @property
    def service_s(self) -> float:
        """Current EWMA of service time per request, seconds."""
        return self._service_s

    def retry_after_s(self) -> int:
        """Whole seconds until the present backlog is expected to have cleared (at least 1)."""
        backlog_s = self.depth * self._service_s / self.slots
        return max(1, math.ceil(backlog_s))

    async def acquire(self, *, batch: bool = False) -> float:
        """Take a slot, waiting in line if needed; returns the seconds spent waiting.

        `batch` work waits behind all interactive work. Raises QueueFullError
        at once when all slots are busy and the waiting room is full.
        Cancellation while waiting gives the place up.
        """
        if self._in_flight < self.slots and not self.waiting:
            self._take()
            return 0.0
        if self.waiting >= self.max_waiting:
            raise QueueFullError(self.retry_after_s(), self.depth)
        started = self._clock.now()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._batch_waiters if batch else self._waiters
        line.append(fut)
        self._idle.clear()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            else:
                line.remove(fut)
                self._maybe_idle()
            raise
        return self._clock.now() - started

    def release(self, service_s: float | None = None) -> None:
        """Give a slot back, recording its service time if known; wakes the next waiter."""
        if service_s is not None and service_s > 0:
            self._service_s += self._alpha * (service_s - self._service_s)
        for line in (self._waiters, self._batch_waiters):
            while line:
                fut = line.popleft()
                if not fut.done():
                    fut.set_result(None)  # the slot passes straight to the waiter
                    return
        self._in_flight -= 1
        self._maybe_idle()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the `async with`."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def wait_idle(self) -> None:
        """Return once no request holds or waits for a slot."""
        await self._idle.wait()

    def _take(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _maybe_idle(self) -> None:
        if self._in_flight == 0 and not self.waiting:
            self._idle.set()
