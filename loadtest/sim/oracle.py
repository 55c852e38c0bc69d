"""The oracle: the cheapest way to serve the same arrivals, as a lower bound beside the policies.

Per bucket of `oracle_bucket_s`, with perfect knowledge of every pool's
capacity (the cluster's maximum, capacity errors, slowdowns and prices in
force at the bucket's start) and instant scaling to fractional replicas:

- a request of shape s on pool p takes its mean service time
  `latency_p x slowdown_p x area(s) x n`, so work is counted in 512x512-image
  units and pool p offers `max_p x slots_p x u x bucket / latency_p` of them,
  where u is the autoscaler's target utilization (the one every policy scales
  to, so the bound is like for like);
- replicas up to the pool's minimum are paid for by every policy anyway, so
  their capacity costs nothing more; beyond it a unit costs
  `price_p x latency_p / (3600 x slots_p x u)`;
- a class may use the pools that serve its shape and whose mean service time
  meets its SLO (all pools serving the shape if none does), as the optimizer
  treats feasibility.

Classes are placed most constrained first (fewest feasible pools), each on its
cheapest feasible capacity: optimal when the feasible sets nest, as they do
for shapes and SLOs here. Demand that fits nowhere is counted as unservable.

Beside it, the same bound in whole replicas (`whole_cost_usd`): per bucket, the
cheapest count of replicas per pool, between its minimum and the cluster's
maximum, that serves what the fractional bound serves. A real cluster runs
whole replicas, so the distance between the two is the share of a policy's
gap to the oracle that rounding alone explains. With feasible sets that nest
(F1 within F2 within ...), the demand fits exactly when, for each set, the
capacity of its pools covers the demand of the classes confined to it, so a
small branch and bound over the pools finds the cheapest count.

Last, what that whole-replica allocation costs when it is run through the
scaler every policy shares (`held_cost_usd`): each pool billed, per bucket, for
the most replicas the allocation gives it from a stabilization window before
to a cold start after (a replica is kept until the scale-down window has
passed, and started a cold start ahead of need). This is not a lower bound: a
planner that knew the hold could smooth its allocation. It shows how much of
a policy's distance from the bounds is the scaler's, not the routing's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.sim.scenario import (
    CapacityErrors,
    LoseReplicas,
    MaxReplicas,
    PriceChange,
    Recover,
    Scenario,
    Slowdown,
)
from loadtest.sim.workload import Arrival


@dataclass
class _PoolState:
    max_replicas: int
    usable: bool = True
    slowdown: float = 1.0
    price_per_hour_usd: float = 0.0


@dataclass
class OracleResult:
    cost_usd: float = 0.0
    images_served: int = 0
    unservable_requests: int = 0
    replica_hours: dict[str, float] = field(default_factory=dict)
    cumulative_cost_usd: list[tuple[float, float]] = field(default_factory=list)  # (end_s, $)
    whole_cost_usd: float = 0.0
    whole_replica_hours: dict[str, float] = field(default_factory=dict)
    held_cost_usd: float = 0.0

    def summary(self) -> dict[str, Any]:
        images = self.images_served
        return {
            "cost_usd": self.cost_usd,
            "images_served": images,
            "usd_per_1k_images": 1000.0 * self.cost_usd / images if images else None,
            "unservable_requests": self.unservable_requests,
            "replica_hours": self.replica_hours,
            "cumulative_cost_usd": [(t, round(c, 4)) for t, c in self.cumulative_cost_usd],
            "whole_replicas": {
                "cost_usd": self.whole_cost_usd,
                "usd_per_1k_images": 1000.0 * self.whole_cost_usd / images if images else None,
                "replica_hours": self.whole_replica_hours,
            },
            "held_through_scaler": {
                "cost_usd": self.held_cost_usd,
                "usd_per_1k_images": 1000.0 * self.held_cost_usd / images if images else None,
            },
        }


def oracle_cost(
    scenario: Scenario, arrivals: Sequence[Arrival], duration_s: float | None = None
) -> OracleResult:
    """The oracle's cost of serving `arrivals` over the scenario (see the module docstring)."""
    horizon = scenario.duration_s if duration_s is None else duration_s
    bucket_s = scenario.oracle_bucket_s
    util = scenario.autoscaler.target_utilization
    pools = {p.name: p for p in scenario.pools}
    state = {
        p.name: _PoolState(p.replicas.max, price_per_hour_usd=p.price_per_hour)
        for p in scenario.pools
    }
    events = sorted(scenario.events, key=lambda e: e.at_s)
    shapes = scenario.arrivals.shapes
    result = OracleResult(
        replica_hours=dict.fromkeys(pools, 0.0), whole_replica_hours=dict.fromkeys(pools, 0.0)
    )
    slo = {False: scenario.slo.interactive_seconds, True: scenario.slo.batch_seconds}

    allocation: list[tuple[dict[str, int], dict[str, float]]] = []  # whole replicas, $ each
    next_event = 0
    next_arrival = 0
    buckets = math.ceil(horizon / bucket_s)
    for b in range(buckets):
        start = b * bucket_s
        length = min(bucket_s, horizon - start)
        while next_event < len(events) and events[next_event].at_s <= start:
            _apply(events[next_event], state, pools)
            next_event += 1
        # Images per class (batch?, shape) in the bucket.
        demand: dict[tuple[bool, int], int] = {}
        while next_arrival < len(arrivals) and arrivals[next_arrival].t_s < start + length:
            a = arrivals[next_arrival]
            demand[(a.batch, a.shape)] = demand.get((a.batch, a.shape), 0) + a.n
            next_arrival += 1

        latency = {n: p.latency_s * state[n].slowdown for n, p in pools.items()}
        free: dict[str, float] = {}
        paid: dict[str, float] = {}
        unit_cost: dict[str, float] = {}
        floor: dict[str, float] = {}
        for name, p in pools.items():
            s = state[name]
            units_per_replica = p.slots * util * length / latency[name]
            floor[name] = min(p.replicas.min, s.max_replicas)
            if s.usable:
                free[name] = floor[name] * units_per_replica
                paid[name] = max(0, s.max_replicas - floor[name]) * units_per_replica
            else:
                free[name] = paid[name] = 0.0
            unit_cost[name] = s.price_per_hour_usd * latency[name] / (3600.0 * p.slots * util)

        classes = []
        for (batch, shape), images in demand.items():
            share = shapes[shape]
            width, height = share.size
            area = width * height / 512**2
            serving = [n for n, p in pools.items() if p.supports(share.shape) and state[n].usable]
            feasible = [n for n in serving if latency[n] * area <= slo[batch]] or serving
            classes.append((len(feasible), batch, shape, images, area, feasible))
        classes.sort(key=lambda c: (c[0], c[1], c[2]))

        used = dict.fromkeys(pools, 0.0)
        confined: dict[frozenset[str], float] = {}  # served units per feasible set
        for _, _, _, images, area, feasible in classes:
            need = images * area  # 512x512 units
            segments = sorted(
                [(0.0, n, free) for n in feasible] + [(unit_cost[n], n, paid) for n in feasible],
                key=lambda seg: (seg[0], seg[1]),
            )
            for _, name, segment in segments:
                take = min(need, segment[name])
                segment[name] -= take
                used[name] += take
                need -= take
                if need <= 1e-12:
                    break
            key = frozenset(feasible)
            confined[key] = confined.get(key, 0.0) + images * area - need
            served_share = 1.0 - need / (images * area) if images else 1.0
            served_images = round(images * served_share)
            result.images_served += served_images
            result.unservable_requests += images - served_images

        offers = []
        for name, p in pools.items():
            units_per_replica = p.slots * util * length / latency[name]
            replicas = max(floor[name], used[name] / units_per_replica)
            result.replica_hours[name] += replicas * length / 3600.0
            result.cost_usd += replicas * state[name].price_per_hour_usd * length / 3600.0
            least = int(floor[name])
            usable = state[name].usable
            offers.append(
                PoolOffer(
                    name,
                    units_per_replica if usable else 0.0,
                    state[name].price_per_hour_usd * length / 3600.0,
                    least,
                    max(state[name].max_replicas, least) if usable else least,
                )
            )
        whole = cheapest_whole_replicas(offers, _nested(confined))
        allocation.append((whole, {o.name: o.price for o in offers}))
        for offer in offers:
            result.whole_replica_hours[offer.name] += whole[offer.name] * length / 3600.0
            result.whole_cost_usd += whole[offer.name] * offer.price
        result.cumulative_cost_usd.append((start + length, result.cost_usd))
    result.held_cost_usd = _held_cost(scenario, allocation)
    return result


def _held_cost(
    scenario: Scenario, allocation: list[tuple[dict[str, int], dict[str, float]]]
) -> float:
    """Cost of the per-bucket replicas held for the scale-down window and started early."""
    bucket_s = scenario.oracle_bucket_s
    behind = math.ceil(scenario.autoscaler.scale_down_cooldown_s / bucket_s)
    cost = 0.0
    for pool in scenario.pools:
        ahead = math.ceil(pool.cold_start_s / bucket_s)
        counts = [replicas[pool.name] for replicas, _ in allocation]
        for b, (_, price) in enumerate(allocation):
            cost += max(counts[max(0, b - behind) : b + ahead + 1]) * price[pool.name]
    return cost


@dataclass(frozen=True, slots=True)
class PoolOffer:
    """One pool in one bucket: units a replica serves, its price, and its replica range."""

    name: str
    units: float
    price: float
    least: int
    most: int


def _nested(confined: dict[frozenset[str], float]) -> list[tuple[frozenset[str], float]]:
    """(set, demand of the classes confined to it), for every feasible set, smallest first.

    The demand of a set includes that of the sets inside it: the constraint
    "the set's pools cover it" is then one per set.
    """
    ordered = sorted(confined, key=lambda f: (len(f), sorted(f)))
    return [(f, sum(d for g, d in confined.items() if g <= f)) for f in ordered]


def cheapest_whole_replicas(
    offers: Sequence[PoolOffer], needs: Sequence[tuple[frozenset[str], float]]
) -> dict[str, int]:
    """The cheapest whole replicas per pool whose capacity covers every (set, demand) need.

    Branch and bound over the pools, dearest per unit last; a branch is cut
    when its cost plus the cheapest fractional completion of its worst need
    cannot beat the best found. Needs beyond what the pools could ever cover
    are taken as what they can (the fractional bound counts the rest unservable).
    """
    order = sorted(offers, key=lambda o: (o.price / o.units if o.units else math.inf, o.name))
    most_units = {f: sum(o.units * o.most for o in offers if o.name in f) for f, _ in needs}
    needs = [(f, min(d, most_units[f]) - 1e-9) for f, d in needs]
    best_cost = math.inf
    best: dict[str, int] = {o.name: o.most for o in offers}
    chosen: dict[str, int] = {}

    def short(n_fixed: int) -> float:
        """A lower bound on what the pools after the first n_fixed must still cost."""
        rest = order[n_fixed:]
        bound = 0.0
        for f, demand in needs:
            have = sum(o.units * chosen[o.name] for o in order[:n_fixed] if o.name in f)
            have += sum(o.units * o.least for o in rest if o.name in f)
            if demand <= have:
                continue
            unit = min((o.price / o.units for o in rest if o.name in f and o.units), default=None)
            if unit is None:
                return math.inf
            bound = max(bound, (demand - have) * unit)
        return bound + sum(o.price * o.least for o in rest)

    def branch(i: int, cost: float) -> None:
        nonlocal best_cost, best
        if cost + short(i) >= best_cost - 1e-12:
            return
        if i == len(order):
            best_cost, best = cost, dict(chosen)
            return
        o = order[i]
        for count in range(o.least, o.most + 1):
            if cost + o.price * count >= best_cost:
                break  # more replicas of this pool only cost more
            chosen[o.name] = count
            branch(i + 1, cost + o.price * count)
        chosen.pop(o.name, None)

    branch(0, 0.0)
    return best


def _apply(event: object, state: dict[str, _PoolState], pools: dict[str, Any]) -> None:
    if isinstance(event, LoseReplicas):
        return  # replicas come back at once under instant scaling
    if isinstance(event, MaxReplicas):
        state[event.pool].max_replicas = event.max_replicas
    elif isinstance(event, CapacityErrors):
        state[event.pool].usable = False
    elif isinstance(event, Slowdown):
        state[event.pool].slowdown = event.factor
    elif isinstance(event, Recover):
        s = state[event.pool]
        s.usable = True
        s.slowdown = 1.0
        s.max_replicas = pools[event.pool].replicas.max
    elif isinstance(event, PriceChange):
        state[event.pool].price_per_hour_usd = event.price_per_hour
