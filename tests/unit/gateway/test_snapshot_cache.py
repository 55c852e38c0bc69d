"""The registry's snapshot keeps replica views between calls: it must never go stale.

Each test compares `PoolRegistry.snapshot()` with views built from scratch
from the live `ReplicaState`s (the way the snapshot was built before it kept
anything), after changes of load, health, membership, capabilities and time.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.clock import ManualClock
from gateway.health import Failure, HealthTracker
from gateway.pools import PoolRegistry, PoolState, ReplicaState
from gateway.scheduling.types import CapacityState, ReplicaView, Snapshot
from gateway.settings import settings_from_dict

URLS = [f"http://127.0.0.1:{9100 + i}" for i in range(6)]
SLOW_START_S = 10.0

POOLS: list[dict[str, Any]] = [
    {
        "name": "a",
        "accelerator": "inf2.xlarge",
        "price_per_hour": 0.75,
        "expected_latency_seconds": 0.5,
        "replicas": URLS[:3],
    },
    {
        "name": "b",
        "accelerator": "g5.xlarge",
        "price_per_hour": 1.0,
        "slots_per_replica": 2,
        "replicas": URLS[3:5],
    },
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def make() -> tuple[PoolRegistry, HealthTracker, ManualClock]:
    config = settings_from_dict(
        {
            "pools": POOLS,
            "slow_start_s": SLOW_START_S,
            "outlier_base_ejection_s": 5.0,
            "outlier_max_ejected_share": 1.0,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
        }
    )
    clock = ManualClock(1000.0)
    registry = PoolRegistry(config, clock)
    for replica in registry.replicas():
        replica.probed = True
    return registry, HealthTracker(registry, config, clock), clock


def expected_replicas(pool: PoolState, now: float, panic: bool) -> tuple[ReplicaView, ...]:
    return tuple(
        ReplicaView(
            url=r.url,
            pool=pool.name,
            healthy=(panic and not r.retiring) or r.healthy(now),
            in_flight=r.in_flight,
            reported_queue_depth=r.reported_queue_depth,
            slots=r.slots,
            slow_start_factor=r.slow_start_factor(now, SLOW_START_S),
        )
        for r in pool.replicas.values()
    )


def assert_fresh(registry: PoolRegistry, snapshot: Snapshot) -> None:
    """`snapshot` (just taken) equals views built from scratch at the same instant."""
    now = registry.clock.now()
    panic = registry.in_panic(now)
    for view, pool in zip(snapshot.pools, registry, strict=True):
        replicas = expected_replicas(pool, now, panic)
        assert view.replicas == replicas
        assert view.outstanding == sum(
            max(r.in_flight, r.reported_queue_depth) for r in pool.replicas.values()
        )
        state = pool.capacity_state(now)
        if panic and state is CapacityState.UNAVAILABLE and replicas and not pool.draining:
            state = CapacityState.CONSTRAINED
        assert view.capacity_state is state
        assert view.healthy_slots == sum(r.slots for r in replicas if r.healthy)
        reported = [r.shapes() for r in pool.replicas.values() if r.capabilities is not None]
        shapes = (
            None
            if not reported or any(s is None for s in reported)
            else frozenset.intersection(*[s for s in reported if s is not None])
        )
        assert view.shapes == shapes
        batches = [b for r in pool.replicas.values() if (b := r.max_batch()) is not None]
        assert view.max_batch == (min(batches) if batches else None)


def test_a_load_change_reaches_the_next_snapshot() -> None:
    registry, _, _ = make()
    first = registry.snapshot()
    registry.replica("a", URLS[0]).in_flight = 3
    registry.replica("b", URLS[4]).reported_queue_depth = 7
    second = registry.snapshot()
    assert first.pools[0].outstanding == 0
    assert (second.pools[0].outstanding, second.pools[1].outstanding) == (3, 7)
    assert second.pools[0].replicas[0].in_flight == 3
    assert_fresh(registry, second)
    registry.replica("a", URLS[0]).in_flight -= 3
    assert registry.snapshot().pools[0].outstanding == 0


def test_an_ejection_ends_without_any_other_change() -> None:
    registry, health, clock = make()
    health.record_failure(registry.replica("a", URLS[1]), Failure.CONNECT, "refused")
    assert not registry.snapshot().pools[0].replicas[1].healthy
    clock.advance(5.0)  # the ejection's length: nothing else happens
    snapshot = registry.snapshot()
    assert snapshot.pools[0].replicas[1].healthy
    # Back under slow start, which grows by itself from one snapshot to the next.
    factor = snapshot.pools[0].replicas[1].slow_start_factor
    clock.advance(3.0)
    later = registry.snapshot()
    assert later.pools[0].replicas[1].slow_start_factor > factor
    assert_fresh(registry, later)
    clock.advance(SLOW_START_S)
    assert registry.snapshot().pools[0].replicas[1].slow_start_factor == 1.0


def test_panic_starts_and_ends_in_the_cached_views() -> None:
    registry, health, _ = make()
    for replica in list(registry.replicas()):
        health.record_probe(replica, False, None)
    snapshot = registry.snapshot()
    assert registry.in_panic(registry.clock.now())
    assert all(r.healthy for p in snapshot.pools for r in p.replicas)
    assert_fresh(registry, snapshot)
    health.record_probe(registry.replica("b", URLS[3]), True, None)
    snapshot = registry.snapshot()
    assert [r.healthy for r in snapshot.pools[1].replicas] == [True, False]
    assert snapshot.pools[0].capacity_state is CapacityState.UNAVAILABLE
    assert_fresh(registry, snapshot)


def test_capabilities_change_the_shapes_and_batch_limit() -> None:
    registry, _, _ = make()
    assert registry.snapshot().pools[0].shapes is None
    for url in URLS[:3]:
        registry.replica("a", url).capabilities = {"shapes": ["512x512"], "max_batch": 4}
    snapshot = registry.snapshot()
    assert (snapshot.pools[0].shapes, snapshot.pools[0].max_batch) == (
        frozenset({"512x512"}),
        4,
    )
    registry.replica("a", URLS[2]).capabilities = {"shapes": ["512x512"], "max_batch": 2}
    assert registry.snapshot().pools[0].max_batch == 2
    assert registry.get("a").max_batch() == 2


def test_membership_changes_rebuild_the_views() -> None:
    registry, _, clock = make()
    pool = registry.get("a")
    registry.snapshot()
    pool.replicas[URLS[0]].in_flight = 1
    pool.set_replicas([URLS[1], URLS[5]], clock.now())  # URLS[0] retires, URLS[5] joins
    snapshot = registry.snapshot()
    assert [r.url for r in snapshot.pools[0].replicas] == [URLS[1], URLS[5], URLS[0]]
    assert_fresh(registry, snapshot)
    pool.replicas[URLS[0]].in_flight = 0  # its last request ends: it is dropped
    snapshot = registry.snapshot()
    assert [r.url for r in snapshot.pools[0].replicas] == [URLS[1], URLS[5]]
    assert_fresh(registry, snapshot)


OPS = st.one_of(
    st.tuples(st.just("in_flight"), st.integers(0, 5), st.integers(0, 4)),
    st.tuples(st.just("depth"), st.integers(0, 5), st.integers(0, 4)),
    st.tuples(st.just("fail"), st.integers(0, 5), st.sampled_from(list(Failure))),
    st.tuples(st.just("probe"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 2.0, 5.0, 11.0])),
    st.tuples(st.just("members"), st.sampled_from(["a", "b"]), st.sets(st.integers(0, 5))),
    st.tuples(st.just("drain"), st.sampled_from(["a", "b"]), st.booleans()),
    st.tuples(st.just("shapes"), st.integers(0, 5), st.sampled_from([None, 1, 2])),
    st.tuples(st.just("snapshot")),
)


def _replica_at(registry: PoolRegistry, index: int) -> ReplicaState | None:
    replicas = list(registry.replicas())
    return replicas[index % len(replicas)] if replicas else None


@settings(max_examples=150, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_snapshots_match_views_built_from_scratch(ops: list[tuple[Any, ...]]) -> None:
    registry, health, clock = make()
    for op in ops:
        target = op[1] if len(op) > 1 and type(op[1]) is int else None
        replica = _replica_at(registry, target) if target is not None else None
        match op:
            case ("in_flight", _, value) if replica is not None:
                replica.in_flight = value
            case ("depth", _, value) if replica is not None:
                replica.reported_queue_depth = value
            case ("fail", _, failure) if replica is not None:
                health.record_failure(replica, failure, "test")
            case ("probe", _, ready) if replica is not None:
                health.record_probe(replica, ready, None)
            case ("advance", seconds):
                clock.advance(seconds)
            case ("members", name, indexes):
                registry.get(name).set_replicas([URLS[i] for i in sorted(indexes)], clock.now())
            case ("drain", name, draining):
                registry.get(name).draining = draining
            case ("shapes", _, batch) if replica is not None:
                replica.capabilities = (
                    None if batch is None else {"shapes": ["512x512"], "max_batch": batch}
                )
        assert_fresh(registry, registry.snapshot())
