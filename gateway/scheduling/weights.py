"""Static pool weights: what a policy uses until a control loop publishes its own.

Weights returned here are shares: non-negative, summing to 1 over the
candidates (an empty candidate list gives an empty dict). Only their ratios
matter to the pool picker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gateway.scheduling.types import PoolView, Snapshot

# Demand assumed when nothing is measured yet: far below any pool's capacity,
# so at zero arrival rate the whole (tiny) demand lands on the cheapest pool.
MIN_DEMAND_IMAGES_PER_S = 1e-6

# Capacity mode floors each pool's headroom at this share of its capacity, so
# a momentarily full pool keeps a trickle of traffic and its signals stay fresh.
HEADROOM_FLOOR = 0.02

# Costs within this relative distance count as one price tier and share the
# tier's demand in proportion to capacity. Identical pools would otherwise be
# herded onto one by the name tie-break, and measured latencies (so $/image)
# move by several percent from one second to the next: a tighter tolerance
# would swap near-equal pools' order all the time.
COST_TIE_REL_TOL = 0.05

DEFAULT_TARGET_UTILIZATION = 0.8

WEIGHTING_NAMES = ("cost", "capacity", "latency", "round_robin", "least_request")


def in_service_images_per_s(pool: PoolView) -> float:
    """Images/s the pool is completing now: min(Q_p, R_p s_p) / L_p (0 without slots)."""
    slots = pool.healthy_slots
    if slots <= 0 or not pool.latency_s > 0.0:
        return 0.0
    return min(max(pool.outstanding, 0), slots) / pool.latency_s


def demand_images_per_s(snapshot: Snapshot) -> float:
    """Demand to place: the measured arrival rate, but at least what is in service now.

    The in-service rate (Little's law over every pool's outstanding work) is a
    floor because a rate estimator lags a burst: without it a burst at start-up
    reads as zero demand and lands entirely on the cheapest pool.
    """
    rate = snapshot.arrival_rate_per_s
    measured = rate if math.isfinite(rate) and rate > 0.0 else 0.0
    in_service = math.fsum(in_service_images_per_s(p) for p in snapshot.pools)
    return max(measured, in_service, MIN_DEMAND_IMAGES_PER_S)


def _target(snapshot: Snapshot) -> float:
    target = snapshot.target_utilization
    return target if 0.0 < target <= 1.0 else DEFAULT_TARGET_UTILIZATION


def _capacity(pool: PoolView) -> float:
    capacity = pool.capacity_images_per_s
    return capacity if math.isfinite(capacity) and capacity > 0.0 else 0.0


def cheapest_first_fill(
    candidates: Sequence[PoolView], demand_images_per_s: float, target_utilization: float
) -> dict[str, float]:
    """Assign demand (images/s) to pools cheapest first; returns images/s per pool.

    Pools are sorted by `cost_per_image_usd`, then name. Each price tier (costs
    equal within `COST_TIE_REL_TOL`) takes up to `target_utilization * T_p` per
    pool, split within the tier in proportion to capacity; the rest spills to
    the next tier. Demand beyond every pool's target is spread over all pools in
    proportion to capacity. O(p log p) in the number of pools.
    """
    assigned = {p.name: 0.0 for p in candidates}
    ordered = sorted(candidates, key=lambda p: (p.cost_per_image_usd, p.name))
    remaining = max(demand_images_per_s, 0.0)
    start = 0
    while start < len(ordered) and remaining > 0.0:
        end = start + 1
        tier_cost = ordered[start].cost_per_image_usd
        while end < len(ordered) and math.isclose(
            ordered[end].cost_per_image_usd, tier_cost, rel_tol=COST_TIE_REL_TOL
        ):
            end += 1
        tier = ordered[start:end]
        tier_target = math.fsum(target_utilization * _capacity(p) for p in tier)
        if tier_target > 0.0:
            given = min(remaining, tier_target)
            for pool in tier:
                assigned[pool.name] += given * target_utilization * _capacity(pool) / tier_target
            remaining -= given
        start = end

    total_capacity = math.fsum(_capacity(p) for p in candidates)
    if remaining > 0.0 and total_capacity > 0.0:
        for pool in candidates:
            assigned[pool.name] += remaining * _capacity(pool) / total_capacity
    return assigned


def headroom_images_per_s(pool: PoolView, target_utilization: float) -> float:
    """T_p * target - in-service rate, floored at `HEADROOM_FLOOR * T_p`."""
    capacity = _capacity(pool)
    spare = capacity * target_utilization - in_service_images_per_s(pool)
    return max(spare, HEADROOM_FLOOR * capacity)


def shares(values: Mapping[str, float]) -> dict[str, float]:
    """Scale non-negative values to sum 1; all zero (or invalid) -> equal shares; {} -> {}."""
    if not values:
        return {}
    cleaned = {k: v if math.isfinite(v) and v > 0.0 else 0.0 for k, v in values.items()}
    total = math.fsum(cleaned.values())
    if total <= 0.0:
        return {k: 1.0 / len(cleaned) for k in cleaned}
    return {k: v / total for k, v in cleaned.items()}


def static_weights(
    policy_name: str, candidates: Sequence[PoolView], snapshot: Snapshot
) -> dict[str, float]:
    """Pool weights (shares summing to 1) for `policy_name` over the candidates.

    - `cost`: `cheapest_first_fill` of `demand_images_per_s(snapshot)`.
    - `capacity`: proportional to `headroom_images_per_s`.
    - `latency`, `round_robin`, `least_request`: equal (these policies do not
      weight pools; equal weights keep the function total).

    Raises ValueError for any other name.
    """
    if policy_name not in WEIGHTING_NAMES:
        raise ValueError(
            f"unknown weighting {policy_name!r}; valid names: {', '.join(WEIGHTING_NAMES)}"
        )
    if not candidates:
        return {}
    target = _target(snapshot)
    if policy_name == "cost":
        demand = demand_images_per_s(snapshot)
        return shares(cheapest_first_fill(candidates, demand, target))
    if policy_name == "capacity":
        return shares({p.name: headroom_images_per_s(p, target) for p in candidates})
    return {p.name: 1.0 / len(candidates) for p in candidates}
