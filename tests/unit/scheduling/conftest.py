"""Builders for scheduling views, as fixtures (test modules here cannot import siblings)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from gateway.scheduling.types import CapacityState, PoolView, ReplicaView, Snapshot

PoolBuilder = Callable[..., PoolView]
SnapshotBuilder = Callable[..., Snapshot]


def build_pool(
    name: str,
    *,
    replicas: int = 2,
    unhealthy: int = 0,
    price_per_hour_usd: float = 1.0,
    latency_s: float = 1.0,
    slots_per_replica: int = 1,
    outstanding: int = 0,
    shapes: frozenset[str] | None = None,
    state: CapacityState = CapacityState.AVAILABLE,
    weight: float | None = None,
) -> PoolView:
    """A pool of `replicas` healthy replicas followed by `unhealthy` unhealthy ones."""
    views = tuple(
        ReplicaView(
            url=f"http://{name}-{i}:8000",
            pool=name,
            healthy=i < replicas,
            slots=slots_per_replica,
        )
        for i in range(replicas + unhealthy)
    )
    return PoolView(
        name=name,
        accelerator=f"{name}.xlarge",
        price_per_hour_usd=price_per_hour_usd,
        slots_per_replica=slots_per_replica,
        latency_s=latency_s,
        replicas=views,
        shapes=shapes,
        outstanding=outstanding,
        capacity_state=state,
        weight=weight,
    )


def build_snapshot(*pools: PoolView, arrival_rate_per_s: float = 0.0) -> Snapshot:
    return Snapshot(pools=pools, arrival_rate_per_s=arrival_rate_per_s)


@pytest.fixture
def make_pool() -> PoolBuilder:
    """`make_pool("inf2", replicas=2, latency_s=0.67, ...)` -> PoolView."""
    return build_pool


@pytest.fixture
def make_snapshot() -> SnapshotBuilder:
    """`make_snapshot(pool, ..., arrival_rate_per_s=0.0)` -> Snapshot."""
    return build_snapshot


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20250326)
