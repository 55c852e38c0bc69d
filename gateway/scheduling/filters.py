"""Filters: the first stage of the pipeline, which drops pools that cannot take a request.

A filter is a pure function of a request and candidate pools. It returns the
pools it keeps, in their input order, and never reorders or invents pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.scheduling.types import CapacityState, PoolView, RequestProfile


class Filter(Protocol):
    """Keeps the pools that can take `request`.

    Contract: the result is a sub-sequence of `pools` (same order, no duplicates);
    an empty result means no pool passes. Filters must not raise on any pool.
    """

    @property
    def name(self) -> str: ...

    def __call__(self, request: RequestProfile, pools: Sequence[PoolView]) -> list[PoolView]: ...


class ShapeFilter:
    """Keeps pools whose model servers accept the request's `WIDTHxHEIGHT` and batch size.

    Neuron pipelines are compiled for fixed shapes, so a request for another
    shape must go elsewhere rather than trigger a minutes-long recompile.
    """

    name: str = "shape"

    def __call__(self, request: RequestProfile, pools: Sequence[PoolView]) -> list[PoolView]:
        shape = request.shape
        return [p for p in pools if p.supports(shape, request.n)]


class HealthFilter:
    """Keeps pools with at least one healthy replica that are not marked UNAVAILABLE.

    CONSTRAINED and RECOVERING pools pass: they still take traffic, at reduced
    weight (see `policy.STATE_WEIGHT_FACTORS`).
    """

    name: str = "health"

    def __call__(self, request: RequestProfile, pools: Sequence[PoolView]) -> list[PoolView]:
        return [
            p
            for p in pools
            if p.capacity_state is not CapacityState.UNAVAILABLE
            and any(r.healthy for r in p.replicas)
        ]


class SloFilter:
    """Keeps pools whose predicted completion (W_p plus the request's own service time
    at its size, `PoolView.completion_s`) is within the request's SLO.

    A NaN or infinite prediction never passes.
    """

    name: str = "slo"

    def __call__(self, request: RequestProfile, pools: Sequence[PoolView]) -> list[PoolView]:
        return [p for p in pools if p.completion_s(request) <= request.slo_s]


class CapacityFilter:
    """Keeps pools that are not CONSTRAINED, unless every pool is.

    A pool answering with capacity errors would only bounce requests into a
    failover; while any other pool can take them, it gets none. When all are
    constrained they all stay, and the state factors rank them.
    """

    name: str = "capacity"

    def __call__(self, request: RequestProfile, pools: Sequence[PoolView]) -> list[PoolView]:
        available = [p for p in pools if p.capacity_state is not CapacityState.CONSTRAINED]
        return available or list(pools)
