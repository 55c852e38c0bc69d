"""A KEDA/HPA-like autoscaler per pool, the same model for every policy.

Every `period_s` each pool gets a recommendation: HPA's
`ceil(ready * utilization / target)` on its own utilization (busy share of
its ready slots, averaged over `metric_window_s`; no change within
`tolerance`), or, for our policies, the gateway's own replica plan
(`ControlLoop.status.plan`, what it exports for KEDA). Scale-up applies at
once; scale-down only to the largest recommendation of the last
`scale_down_cooldown_s` (HPA's stabilization window). The result is clamped to
[min, max] and becomes the pool's desired replicas.

A capacity shortfall is the cluster's maximum for a pool dropping below its
configured maximum (no nodes to be had): pods beyond it stay pending, and
every sync that wants more than the cluster has logs an "insufficient
capacity" event, the signal the paper's capacity checker polled for.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtest.sim.scenario import AutoscalerSpec, PoolSpec

HPA_SCALE_UP_PODS = 4


@dataclass
class _PoolScale:
    spec: PoolSpec
    desired: int
    samples: collections.deque[tuple[float, int, int]] = field(
        default_factory=collections.deque
    )  # (time, busy slots, ready slots)
    recommendations: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)


@dataclass(frozen=True, slots=True)
class InsufficientCapacity:
    at_s: float
    pool: str
    wanted: int
    available: int


class Autoscaler:
    """Desired replicas per pool; the engine makes the cluster follow them."""

    def __init__(self, spec: AutoscalerSpec, pools: Sequence[PoolSpec]) -> None:
        self.spec = spec
        self.pools = {p.name: _PoolScale(p, p.replicas.initial) for p in pools}
        for state in self.pools.values():
            # As if the initial size had been recommended at t=0: no scale-down before
            # the window has seen real load.
            state.recommendations.append((0.0, state.desired))
        self.events: list[InsufficientCapacity] = []

    def desired(self, pool: str) -> int:
        return self.pools[pool].desired

    def observe(self, pool: str, now: float, busy: int, ready_slots: int) -> None:
        """One sample of the utilization metric (the engine calls this every second)."""
        state = self.pools[pool]
        state.samples.append((now, busy, ready_slots))
        horizon = now - self.spec.metric_window_s
        while state.samples and state.samples[0][0] <= horizon:
            state.samples.popleft()

    def utilization(self, pool: str) -> float | None:
        """Busy share of the ready slots over the window; None without ready slots."""
        samples = self.pools[pool].samples
        slots = sum(s[2] for s in samples)
        if slots <= 0:
            return None
        return sum(s[1] for s in samples) / slots

    def utilization_recommendation(self, pool: str, ready: int, live: int) -> int:
        """HPA on its own utilization: `ceil(ready * utilization / target)`.

        Pods still starting count for nothing, as HPA treats not-ready pods on a
        scale-up, so a pool waiting for new replicas does not ask again.
        """
        utilization = self.utilization(pool)
        if utilization is None or ready <= 0:
            return self.pools[pool].desired
        return self.recommendation(pool, ready * utilization / self.spec.target_utilization, live)

    def recommendation(self, pool: str, wanted: float, live: int) -> int:
        """HPA's rule for `wanted` replicas' worth of metric over `live` replicas.

        No change while the ratio `wanted / live` is within the tolerance of 1,
        else `ceil(wanted)`: the tolerance is on the unrounded ratio, so a pool
        of 4 asked for 4.2 stays at 4.
        """
        if live > 0 and abs(wanted / live - 1.0) <= self.spec.tolerance:
            return self.pools[pool].desired
        return math.ceil(wanted - 1e-9)

    def apply(self, pool: str, now: float, recommendation: int, cluster_max: int) -> int:
        """Stabilize, clamp and store the desired replicas; log a shortfall when they won't fit."""
        state = self.pools[pool]
        bounds = state.spec.replicas
        # HPA's default scale-up policy: at most double, or four more, per sync.
        step_cap = max(2 * state.desired, state.desired + HPA_SCALE_UP_PODS)
        recommendation = min(max(recommendation, bounds.min), bounds.max, step_cap)
        recs = state.recommendations
        recs.append((now, recommendation))
        horizon = now - self.spec.scale_down_cooldown_s
        while recs and recs[0][0] < horizon:
            recs.popleft()
        state.desired = max(r for _, r in recs)
        if state.desired > cluster_max and cluster_max < bounds.max:
            self.events.append(InsufficientCapacity(now, pool, state.desired, cluster_max))
        return state.desired
