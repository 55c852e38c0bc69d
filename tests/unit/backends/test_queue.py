"""The admission queue: slots, FIFO waiting room (batch last), immediate refusal, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from backends.clock import ManualClock
from backends.queue import AdmissionQueue, QueueFullError


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_takes_free_slots_without_waiting() -> None:
    q = AdmissionQueue(2, 1, prior_service_s=1.0, clock=ManualClock())
    assert await q.acquire() == 0.0
    assert await q.acquire() == 0.0
    assert (q.in_flight, q.waiting, q.depth) == (2, 0, 2)


async def test_refuses_at_once_when_waiting_room_is_full() -> None:
    q = AdmissionQueue(1, 1, prior_service_s=2.0, clock=ManualClock())
    await q.acquire()
    waiter = asyncio.create_task(q.acquire())
    await settle()
    assert q.waiting == 1
    with pytest.raises(QueueFullError) as info:
        await q.acquire()  # must not block: the test would hang otherwise
    # backlog of 2 requests x 2 s per request on 1 slot
    assert info.value.retry_after_s == 4
    assert info.value.depth == 2
    q.release()
    await waiter


async def test_waiters_are_served_in_arrival_order_and_report_wait_time() -> None:
    clock = ManualClock()
    q = AdmissionQueue(1, 3, prior_service_s=1.0, clock=clock)
    await q.acquire()
    order: list[int] = []
    waits: dict[int, float] = {}

    async def wait(i: int) -> None:
        waits[i] = await q.acquire()
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await settle()
    for _ in range(3):
        clock.advance(0.5)
        q.release(0.5)
        await settle()
    q.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert waits == {0: 0.5, 1: 1.0, 2: 1.5}
    assert q.depth == 0


async def test_batch_work_waits_behind_interactive_work() -> None:
    q = AdmissionQueue(1, 4, prior_service_s=1.0, clock=ManualClock())
    await q.acquire()
    order: list[str] = []

    async def wait(name: str, *, batch: bool) -> None:
        await q.acquire(batch=batch)
        order.append(name)

    tasks = [
        asyncio.create_task(wait("batch-1", batch=True)),
        asyncio.create_task(wait("interactive-1", batch=False)),
        asyncio.create_task(wait("batch-2", batch=True)),
        asyncio.create_task(wait("interactive-2", batch=False)),
    ]
    await settle()
    assert (q.waiting, q.depth) == (4, 5)
    with pytest.raises(QueueFullError):
        await q.acquire(batch=True)  # the waiting room bounds both lines together
    for _ in range(4):
        q.release()
        await settle()
    await asyncio.gather(*tasks)
    assert order == ["interactive-1", "interactive-2", "batch-1", "batch-2"]
    q.release()
    assert q.depth == 0


async def test_a_cancelled_batch_waiter_leaves_its_own_line() -> None:
    q = AdmissionQueue(1, 2, prior_service_s=1.0, clock=ManualClock())
    await q.acquire()
    batch = asyncio.create_task(q.acquire(batch=True))
    interactive = asyncio.create_task(q.acquire())
    await settle()
    batch.cancel()
    await settle()
    assert q.waiting == 1
    q.release()
    await interactive
    q.release()
    await settle()
    assert (q.in_flight, q.waiting) == (0, 0)


async def test_cancelled_waiter_gives_up_its_place() -> None:
    q = AdmissionQueue(1, 2, prior_service_s=1.0, clock=ManualClock())
    await q.acquire()
    first = asyncio.create_task(q.acquire())
    second = asyncio.create_task(q.acquire())
    await settle()
    first.cancel()
    await settle()
    assert q.waiting == 1
    q.release()
    await second
    assert (q.in_flight, q.waiting) == (1, 0)


async def test_slot_handed_over_to_a_cancelled_waiter_is_passed_on() -> None:
    q = AdmissionQueue(1, 2, prior_service_s=1.0, clock=ManualClock())
    await q.acquire()
    first = asyncio.create_task(q.acquire())
    second = asyncio.create_task(q.acquire())
    await settle()
    q.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await settle()
    assert second.done()
    assert (q.in_flight, q.waiting) == (1, 0)


async def test_retry_after_tracks_measured_service_time() -> None:
    q = AdmissionQueue(2, 0, prior_service_s=1.0, clock=ManualClock(), ewma_alpha=0.5)
    await q.acquire()
    await q.acquire()
    assert q.retry_after_s() == 1  # 2 requests x 1 s / 2 slots
    q.release(9.0)  # EWMA 1 -> 5 s
    assert q.service_s == pytest.approx(5.0)
    await q.acquire()
    assert q.retry_after_s() == 5  # 2 x 5 s / 2 slots
    with pytest.raises(QueueFullError):
        await q.acquire()


async def test_slot_context_manager_releases_on_error() -> None:
    q = AdmissionQueue(1, 0, prior_service_s=1.0, clock=ManualClock())
    with pytest.raises(RuntimeError):
        async with q.slot():
            raise RuntimeError("boom")
    assert q.depth == 0


async def test_wait_idle_returns_when_the_last_request_leaves() -> None:
    q = AdmissionQueue(1, 1, prior_service_s=1.0, clock=ManualClock())
    await q.acquire()
    waiter = asyncio.create_task(q.acquire())
    idle = asyncio.create_task(q.wait_idle())
    await settle()
    q.release()
    await settle()
    assert not idle.done()
    await waiter
    q.release()
    await settle()
    assert idle.done()


@pytest.mark.parametrize(
    ("slots", "waiting", "prior"),
    [(0, 1, 1.0), (1, -1, 1.0), (1, 1, 0.0)],
    ids=["no-slots", "negative-waiting-room", "zero-prior"],
)
def test_rejects_nonsense_bounds(slots: int, waiting: int, prior: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        AdmissionQueue(slots, waiting, prior_service_s=prior)
