"""The control loop's optimizer: measured demand and pool supply in, an allocation out.

Pure and deterministic: no I/O, no clock, and the result does not depend on the
order of the inputs. See DESIGN.md "Scoring, in words".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.scheduling.types import Priority
from gateway.scheduling.weights import COST_TIE_REL_TOL

MODES = ("cost", "capacity")
# Costs within this share of a tier's cheapest pool join that tier (see weights.py).
COST_TIER_REL = COST_TIE_REL_TOL
_CEIL_EPS = 1e-9  # so an exact multiple of a replica's target load does not round up
_PRIORITY_RANK = {p: i for i, p in enumerate(Priority)}


@dataclass(frozen=True, slots=True)
class PoolSupply:
    """What one pool can carry, as the control loop measured it."""

    name: str
    capacity_images_per_s: float  # full capacity: healthy_slots / latency_s
    latency_s: float  # EWMA service time per image (per 512x512 image for sized demand)
    cost_per_image_usd: float
    price_per_hour_usd: float  # per replica
    slots_per_replica: int
    healthy_replicas: int
    usable: bool = True  # False: unavailable, constrained or draining: gets no allocation
    # Replicas the pool runs whatever the routing (its minimum): their capacity costs
    # nothing extra, so cost mode fills it before it pays for any other.
    floor_replicas: int = 0
    # The most of all demand (512x512-equivalent work) the pool is given while other pools
    # have room: a hedge for a pool that can lose most of its capacity at once. None: no cap.
    max_share: float | None = None

    @property
    def slots(self) -> float:
        """Slots the capacity stands for (healthy_slots)."""
        return self.capacity_images_per_s * self.latency_s


@dataclass(frozen=True, slots=True)
class ClassDemand:
    """The measured arrival rate of one priority class (of one shape group) and its objective.

    `pools` names the pools that can serve this demand (the ones supporting its
    image shapes); None means any pool. `size` is its service time relative to
    a pool's `latency_s` (2.25 for 768x768 against a 512x512 latency).
    """

    priority: Priority
    rate_per_s: float  # measured images/s of this class
    slo_s: float  # completion objective of the class
    pools: frozenset[str] | None = None
    size: float = 1.0


@dataclass(frozen=True, slots=True)
class Allocation:
    """Where the optimizer placed each class's demand.

    All mappings are plain dicts, fresh per call; treat them as read-only.
    `assigned` and `deficit_per_s` sum each class over its shape groups;
    `weights` are the routing shares of the demand any pool can serve, and
    `group_weights` those of each restricted group (`ClassDemand.pools`).
    Per-pool mappings inside `assigned` and the weights are sparse: they hold
    only pools with a positive amount. `utilization` and `desired_replicas`
    hold every pool; `utilization` is `math.inf` for a pool with load but no
    capacity (possible only when every usable pool is empty).
    """

    mode: str
    assigned: Mapping[Priority, Mapping[str, float]]  # images/s within target capacity
    weights: Mapping[Priority, Mapping[str, float]]  # sum 1; empty if no usable pool
    deficit_per_s: Mapping[Priority, float]  # demand that did not fit
    best_effort: frozenset[Priority]  # classes no pool can serve within their objective
    utilization: Mapping[str, float]  # busy slots / healthy slots, deficit included
    desired_replicas: Mapping[str, int]  # replicas to carry the load at target utilization
    spend_per_hour_usd: float  # sum(desired_replicas * price_per_hour_usd)
    group_weights: Mapping[frozenset[str], Mapping[Priority, Mapping[str, float]]] = field(
        default_factory=dict
    )
    # The same before rounding up, and that of only what was placed (no deficit): sums
    # over several gateways' allocations stay exact.
    exact_replicas: Mapping[str, float] = field(default_factory=dict)
    placed_replicas: Mapping[str, float] = field(default_factory=dict)

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

    Shape groups are placed one at a time, those served by the fewest pools
    first (demand any pool can serve last), each from the target capacity
    (`target_utilization` of every pool's slots) the earlier ones left. Within
    a group, classes go in order of increasing `slo_s` (interactive first on a
    tie). A pool is feasible for a class when it is usable, serves the group,
    has capacity and `latency_s * size` meets the class's `slo_s`; a class
    with no feasible pool is served best effort by every usable pool of its
    group. "cost" mode first fills the floor (the replicas pools run anyway),
    then the cheapest pools (costs within `COST_TIER_REL` form one tier,
    shared by headroom); "capacity" mode spreads over all of them by headroom.
    A pool with `max_share` takes at most that share of all the demand's work
    (rate times size) while other pools have room, and more only when none has.
    Demand that fits nowhere is the class's deficit, spread over its pools by
    full capacity for weights, utilization and replicas. A class below
    `min_demand_per_s` gets weights as if it had that demand, so weights exist
    whenever a usable pool does.

    Raises ValueError on an unknown mode, `target_utilization` outside (0, 1],
    `min_demand_per_s` not positive, a negative or non-finite rate, a
    non-positive size, a pool with fewer than one slot per replica, duplicate
    pool names, or two demands for one class and group.
    """
    _validate(pools, demand, mode, target_utilization, min_demand_per_s)
    ordered = sorted(pools, key=lambda p: p.name)
    by_name = {p.name: p for p in ordered}
    work = sum(d.rate_per_s * d.size for d in demand)
    room = _Room(ordered, target_utilization, work)
    busy = dict.fromkeys(by_name, 0.0)  # slots kept busy, deficit included
    busy_placed = dict.fromkeys(by_name, 0.0)  # the same without the deficit
    assigned: dict[Priority, dict[str, float]] = {}
    deficits: dict[Priority, float] = {}
    weights: dict[Priority, dict[str, float]] = {}
    group_weights: dict[frozenset[str], dict[Priority, dict[str, float]]] = {}
    best_effort: set[Priority] = set()

    def group_order(d: ClassDemand) -> tuple[int, tuple[str, ...], float, int]:
        if d.pools is None:
            return (len(ordered) + 1, (), d.slo_s, _PRIORITY_RANK[d.priority])
        return (len(d.pools), tuple(sorted(d.pools)), d.slo_s, _PRIORITY_RANK[d.priority])

    for cls in sorted(demand, key=group_order):
        serving = [p for p in ordered if p.usable and (cls.pools is None or p.name in cls.pools)]
        candidates, feasible = _candidates(serving, cls)
        if not feasible and serving and cls.pools is None:
            best_effort.add(cls.priority)
        tiers = _tiers(candidates, mode)
        placed, deficit = room.place(tiers, cls.size, cls.rate_per_s)
        served = _with_deficit(placed, candidates, deficit)
        if cls.rate_per_s < min_demand_per_s:
            as_if, as_if_deficit = room.place(tiers, cls.size, min_demand_per_s, dry_run=True)
            shares = _normalised(_with_deficit(as_if, candidates, as_if_deficit))
        else:
            shares = _normalised(served)
        if cls.pools is None:
            weights[cls.priority] = shares
        else:
            group_weights.setdefault(cls.pools, {})[cls.priority] = shares
        for name, amount in served.items():
            busy[name] += amount * by_name[name].latency_s * cls.size
        per_class = assigned.setdefault(cls.priority, {})
        for name, amount in placed.items():
            per_class[name] = per_class.get(name, 0.0) + amount
            busy_placed[name] += amount * by_name[name].latency_s * cls.size
        deficits[cls.priority] = deficits.get(cls.priority, 0.0) + deficit

    for cls in demand:
        if cls.priority not in weights:  # no demand any pool can serve: weights as if tiny
            candidates, _ = _candidates([p for p in ordered if p.usable], cls, size=1.0)
            as_if, as_if_deficit = room.place(
                _tiers(candidates, mode), 1.0, min_demand_per_s, dry_run=True
            )
            weights[cls.priority] = _normalised(_with_deficit(as_if, candidates, as_if_deficit))

    replicas = {p.name: _replicas(p, busy[p.name], target_utilization) for p in ordered}
    return Allocation(
        mode=mode,
        assigned=assigned,
        weights=weights,
        deficit_per_s=deficits,
        best_effort=frozenset(best_effort),
        utilization={p.name: _utilization(p, busy[p.name]) for p in ordered},
        desired_replicas=replicas,
        spend_per_hour_usd=sum(replicas[p.name] * p.price_per_hour_usd for p in ordered),
        group_weights=group_weights,
        exact_replicas={p.name: _exact(p, busy[p.name], target_utilization) for p in ordered},
        placed_replicas={
            p.name: _exact(p, busy_placed[p.name], target_utilization) for p in ordered
        },
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
    if len({(d.priority, d.pools) for d in demand}) != len(demand):
        raise ValueError("at most one demand per priority and pool group")
    for p in pools:
        if p.slots_per_replica < 1:
            raise ValueError(f"pool {p.name!r}: slots_per_replica must be at least 1")
        if p.floor_replicas < 0:
            raise ValueError(f"pool {p.name!r}: floor_replicas must be >= 0")
        if p.max_share is not None and not 0.0 < p.max_share <= 1.0:
            raise ValueError(f"pool {p.name!r}: max_share must be in (0, 1]")
    for d in demand:
        if not (d.rate_per_s >= 0.0 and math.isfinite(d.rate_per_s)):
            raise ValueError(f"{d.priority}: rate_per_s must be finite and >= 0")
        if not (d.size > 0.0 and math.isfinite(d.size)):
            raise ValueError(f"{d.priority}: size must be finite and > 0")


def _has_capacity(pool: PoolSupply) -> bool:
    return pool.usable and pool.capacity_images_per_s > 0.0


def _candidates(
    serving: list[PoolSupply], cls: ClassDemand, size: float | None = None
) -> tuple[list[PoolSupply], bool]:
    """(pools to place `cls` on, whether any meets its objective): the feasible ones, if any.

    A pool is feasible with capacity and `latency_s * size` within `slo_s`
    (`size` defaults to the demand's own).
    """
    size = cls.size if size is None else size
    feasible = [p for p in serving if _has_capacity(p) and p.latency_s * size <= cls.slo_s]
    return (feasible or serving), bool(feasible)


_FLOOR, _PAID, _ANY = "floor", "paid", "any"
Tier = list[tuple[PoolSupply, str]]  # pools filled together, each from one bucket of its room


def _tiers(candidates: list[PoolSupply], mode: str) -> list[Tier]:
    """Groups filled in turn: capacity mode one group; cost mode the floor, then price tiers."""
    if mode == "capacity":
        return [[(p, _ANY) for p in candidates]]
    tiers: list[Tier] = [[(p, _FLOOR) for p in candidates]]
    first_cost = 0.0
    for pool in sorted(candidates, key=lambda p: (p.cost_per_image_usd, p.name)):
        cost = pool.cost_per_image_usd
        if len(tiers) > 1 and cost <= first_cost * (1.0 + COST_TIER_REL):
            tiers[-1].append((pool, _PAID))
        else:
            tiers.append([(pool, _PAID)])
            first_cost = cost
    return tiers


class _Room:
    """Slots each pool has left below its target: the floor's and the rest, apart.

    Also the work (images/s times size) each pool with a `max_share` may still
    take of `work`, the whole demand's.
    """

    def __init__(self, pools: Sequence[PoolSupply], target_utilization: float, work: float) -> None:
        self.floor: dict[str, float] = {}
        self.paid: dict[str, float] = {}
        self.share: dict[str, float] = {}
        for p in pools:
            slots = p.slots if _has_capacity(p) else 0.0
            floor = min(float(p.floor_replicas * p.slots_per_replica), slots)
            self.floor[p.name] = target_utilization * floor
            self.paid[p.name] = target_utilization * (slots - floor)
            self.share[p.name] = math.inf if p.max_share is None else p.max_share * work
        self.passes = (True, False) if any(p.max_share is not None for p in pools) else (False,)

    def _slots(self, name: str, bucket: str) -> float:
        if bucket == _FLOOR:
            return self.floor[name]
        if bucket == _PAID:
            return self.paid[name]
        return self.floor[name] + self.paid[name]

    def _take(self, name: str, bucket: str, slots: float) -> None:
        if bucket in (_FLOOR, _ANY):
            from_floor = min(slots, self.floor[name])
            self.floor[name] -= from_floor
            slots -= from_floor
        self.paid[name] = max(0.0, self.paid[name] - slots)

    def place(
        self, tiers: list[Tier], size: float, rate_per_s: float, *, dry_run: bool = False
    ) -> tuple[dict[str, float], float]:
        """Fill tiers in turn, each shared by headroom; returns (placed per pool, left over).

        Pools' shares are kept to in a first pass; what no pool can take within
        them goes, in a second, to pools over their share.
        """
        placed: dict[str, float] = {}
        remaining = rate_per_s
        for capped in self.passes:
            for tier in tiers:
                if remaining <= 0.0:
                    break
                rooms = []
                for p, bucket in tier:
                    r = self._slots(p.name, bucket) / (p.latency_s * size)
                    if capped:
                        r = min(r, self.share[p.name] / size)
                    rooms.append((p, bucket, r))
                total = sum(r for _, _, r in rooms)
                if total <= 0.0:
                    continue
                take = min(remaining, total)
                for p, bucket, r in rooms:
                    amount = take * r / total
                    if amount > 0.0:
                        placed[p.name] = placed.get(p.name, 0.0) + amount
                        if not dry_run:
                            self._take(p.name, bucket, amount * p.latency_s * size)
                            self.share[p.name] = max(0.0, self.share[p.name] - amount * size)
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


def _utilization(pool: PoolSupply, busy_slots: float) -> float:
    slots = pool.slots
    if slots > 0.0:
        return busy_slots / slots
    return math.inf if busy_slots > 0.0 else 0.0


def _exact(pool: PoolSupply, busy_slots: float, target_utilization: float) -> float:
    if not pool.usable or busy_slots <= 0.0:
        return 0.0
    return busy_slots / (pool.slots_per_replica * target_utilization)


def _replicas(pool: PoolSupply, busy_slots: float, target_utilization: float) -> int:
    return ceil_replicas(_exact(pool, busy_slots, target_utilization))


def ceil_replicas(exact: float) -> int:
    """Whole replicas for `exact` ones; an exact multiple (up to float error) does not round up."""
    return max(0, math.ceil(exact - _CEIL_EPS))
