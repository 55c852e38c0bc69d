"""The control loop's optimizer: measured demand and pool supply in, an allocation out.

Pure and deterministic: no I/O, no clock, and the result does not depend on the
order of the inputs. See DESIGN.md "Scoring, in words".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.scheduling.types import Priority

MODES = ("cost", "capacity")
_COST_TIER_REL = 1e-6  # costs this close (relative) form one tier, shared by headroom
_CEIL_EPS = 1e-9  # so an exact multiple of a replica's target load does not round up
_PRIORITY_RANK = {p: i for i, p in enumerate(Priority)}


@dataclass(frozen=True, slots=True)
class PoolSupply:
    """What one pool can carry, as the control loop measured it."""

    name: str
    capacity_images_per_s: float  # full capacity: healthy_slots / latency_s
    latency_s: float  # EWMA service time per image
    cost_per_image_usd: float
    price_per_hour_usd: float  # per replica
    slots_per_replica: int
    healthy_replicas: int
    usable: bool = True  # False: unavailable, constrained or draining: gets no allocation


@dataclass(frozen=True, slots=True)
class ClassDemand:
    """The measured arrival rate of one priority class and its objective."""

    priority: Priority
    rate_per_s: float  # measured images/s of this class
    slo_s: float  # completion objective of the class


@dataclass(frozen=True, slots=True)
class Allocation:
    """Where the optimizer placed each class's demand.

    All mappings are plain dicts, fresh per call; treat them as read-only.
    `assigned`, `weights` and `deficit_per_s` have one entry per class in the
    demand. Per-pool mappings inside `assigned` and `weights` are sparse: they
    hold only pools with a positive amount. `utilization` and
    `desired_replicas` hold every pool; `utilization` is `math.inf` for a pool
    with load but no capacity (possible only when every usable pool is empty).
    """

    mode: str
    assigned: Mapping[Priority, Mapping[str, float]]  # images/s within target capacity
    weights: Mapping[Priority, Mapping[str, float]]  # sum 1; empty if no usable pool
    deficit_per_s: Mapping[Priority, float]  # demand that did not fit
    best_effort: frozenset[Priority]  # classes no pool can serve within their objective
    utilization: Mapping[str, float]  # (assigned + deficit share) / full capacity
    desired_replicas: Mapping[str, int]  # replicas to carry the load at target utilization
    spend_per_hour_usd: float  # sum(desired_replicas * price_per_hour_usd)

    @property
    def total_deficit_per_s(self) -> float:
        return sum(self.deficit_per_s.values())


def allocate(
    pools: Sequence[PoolSupply],
    demand: Sequence[ClassDemand],
    *,
    mode: str,
    target_utilization: float = 0.8,
    min_demand_per_s: float = 1e-3,
) -> Allocation:
    """Place each class's demand on pools and derive weights, replicas and spend.

    Classes are served in order of increasing `slo_s` (interactive first on a
    tie), each from the target capacity (`target_utilization * capacity`) the
    previous ones left. A pool is feasible for a class when it is usable, has
    capacity and its `latency_s` meets the class's `slo_s`; a class with no
    feasible pool is served best effort by every usable pool. "cost" mode fills
    the cheapest pools first (equal costs share by headroom); "capacity" mode
    spreads over all of them by headroom. Demand that fits nowhere is the
    class's deficit, spread over its pools by full capacity for weights,
    utilization and replicas. A class below `min_demand_per_s` gets weights as
    if it had that demand, so weights exist whenever a usable pool does.

    Raises ValueError on an unknown mode, `target_utilization` outside (0, 1],
    `min_demand_per_s` not positive, a negative or non-finite rate, a pool with
    fewer than one slot per replica, or duplicate pool names or priorities.
    """
    _validate(pools, demand, mode, target_utilization, min_demand_per_s)
    ordered = sorted(pools, key=lambda p: p.name)
    headroom = {
        p.name: target_utilization * p.capacity_images_per_s if _has_capacity(p) else 0.0
        for p in ordered
    }
    load = dict.fromkeys(headroom, 0.0)
    usable = [p for p in ordered if p.usable]
    assigned: dict[Priority, dict[str, float]] = {}
    weights: dict[Priority, dict[str, float]] = {}
    deficits: dict[Priority, float] = {}
    best_effort: set[Priority] = set()

    for cls in sorted(demand, key=lambda d: (d.slo_s, _PRIORITY_RANK[d.priority])):
        feasible = [p for p in usable if _has_capacity(p) and p.latency_s <= cls.slo_s]
        if not feasible and usable:
            best_effort.add(cls.priority)
        candidates = feasible or usable
        tiers = _tiers(candidates, mode)
        placed, deficit = _place(tiers, headroom, cls.rate_per_s)
        served = _with_deficit(placed, candidates, deficit)
        if cls.rate_per_s < min_demand_per_s:
            as_if, as_if_deficit = _place(tiers, headroom, min_demand_per_s)
            weights[cls.priority] = _normalised(_with_deficit(as_if, candidates, as_if_deficit))
        else:
            weights[cls.priority] = _normalised(served)
        for name, amount in placed.items():
            headroom[name] = max(0.0, headroom[name] - amount)
        for name, amount in served.items():
            load[name] += amount
        assigned[cls.priority] = placed
        deficits[cls.priority] = deficit

    replicas = {p.name: _replicas(p, load[p.name], target_utilization) for p in ordered}
    return Allocation(
        mode=mode,
        assigned=assigned,
        weights=weights,
        deficit_per_s=deficits,
        best_effort=frozenset(best_effort),
        utilization={p.name: _utilization(p, load[p.name]) for p in ordered},
        desired_replicas=replicas,
        spend_per_hour_usd=sum(replicas[p.name] * p.price_per_hour_usd for p in ordered),
    )


def _validate(
    pools: Sequence[PoolSupply],
    demand: Sequence[ClassDemand],
    mode: str,
    target_utilization: float,
    min_demand_per_s: float,
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 < target_utilization <= 1.0:
        raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization}")
    if not min_demand_per_s > 0.0:
        raise ValueError(f"min_demand_per_s must be positive, got {min_demand_per_s}")
    if len({p.name for p in pools}) != len(pools):
        raise ValueError("pool names must be unique")
    if len({d.priority for d in demand}) != len(demand):
        raise ValueError("at most one demand per priority")
    for p in pools:
        if p.slots_per_replica < 1:
            raise ValueError(f"pool {p.name!r}: slots_per_replica must be at least 1")
    for d in demand:
        if not (d.rate_per_s >= 0.0 and math.isfinite(d.rate_per_s)):
            raise ValueError(f"{d.priority}: rate_per_s must be finite and >= 0")


def _has_capacity(pool: PoolSupply) -> bool:
    return pool.usable and pool.capacity_images_per_s > 0.0


def _tiers(candidates: list[PoolSupply], mode: str) -> list[list[PoolSupply]]:
    """Groups filled in turn: one group in capacity mode, cost tiers cheapest first."""
    if mode == "capacity":
        return [candidates]
    tiers: list[list[PoolSupply]] = []
    for pool in sorted(candidates, key=lambda p: (p.cost_per_image_usd, p.name)):
        if tiers and _same_cost(tiers[-1][0].cost_per_image_usd, pool.cost_per_image_usd):
            tiers[-1].append(pool)
        else:
            tiers.append([pool])
    return tiers


def _same_cost(a: float, b: float) -> bool:
    return abs(a - b) <= _COST_TIER_REL * max(abs(a), abs(b))


def _place(
    tiers: list[list[PoolSupply]], headroom: Mapping[str, float], rate_per_s: float
) -> tuple[dict[str, float], float]:
    """Fill tiers in turn, each shared by headroom; returns (placed per pool, left over)."""
    placed: dict[str, float] = {}
    remaining = rate_per_s
    for tier in tiers:
        if remaining <= 0.0:
            break
        room = sum(headroom[p.name] for p in tier)
        if room <= 0.0:
            continue
        take = min(remaining, room)
        for p in tier:
            share = take * headroom[p.name] / room
            if share > 0.0:
                placed[p.name] = share
        remaining = 0.0 if take == remaining else remaining - take
    return placed, remaining


def _with_deficit(
    placed: Mapping[str, float], candidates: list[PoolSupply], deficit: float
) -> dict[str, float]:
    """`placed` plus the deficit spread over candidates by full capacity (equally if none)."""
    served = dict(placed)
    if deficit <= 0.0 or not candidates:
        return served
    capacity = {p.name: max(p.capacity_images_per_s, 0.0) for p in candidates}
    total = sum(capacity.values())
    for name, cap in capacity.items():
        share = deficit * cap / total if total > 0.0 else deficit / len(capacity)
        if share > 0.0:
            served[name] = served.get(name, 0.0) + share
    return served


def _normalised(amounts: Mapping[str, float]) -> dict[str, float]:
    total = sum(amounts.values())
    if total <= 0.0:
        return {}
    return {name: amount / total for name, amount in amounts.items() if amount > 0.0}


def _utilization(pool: PoolSupply, load: float) -> float:
    if pool.capacity_images_per_s > 0.0:
        return load / pool.capacity_images_per_s
    return math.inf if load > 0.0 else 0.0


def _replicas(pool: PoolSupply, load: float, target_utilization: float) -> int:
    if not pool.usable or load <= 0.0:
        return 0
    per_replica = pool.slots_per_replica * target_utilization
    return max(0, math.ceil(load * pool.latency_s / per_replica - _CEIL_EPS))
