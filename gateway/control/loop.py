"""The control loop: once a `control_interval_s`, signals in, weights and a replica plan out.

Each tick reads one snapshot, advances the capacity state machine, asks the
optimizer for the allocation of the mode in force, and publishes per-class
(and per-shape-group) weights and controller pool states on the registry in
one assignment each. It also plans each pool's replicas for its autoscaler
(`ScalePlan`, exported as `sd_gateway_pool_desired_replicas`).
The hot path never waits for it: it reads whatever was published last, and
its own per-request filters and scores still react to failures at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from backends.clock import Clock
from gateway.control.capacity import CapacityStateMachine, Mode, PoolSignal, Transition
from gateway.control.optimizer import (
    COST_TIER_REL,
    Allocation,
    ClassDemand,
    PoolSupply,
    allocate,
    ceil_replicas,
)
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry
from gateway.scheduling.types import PoolView, Priority, Snapshot
from gateway.settings import GatewaySettings, PoolConfig

log = logging.getLogger("gateway.control")

# Modes whose routing the optimizer drives; the others are plain policies.
OPTIMIZED_MODES = ("auto", "cost", "capacity")
TRANSITION_HISTORY = 100
HISTORY_POINTS = 600  # ten minutes at the default interval
# A pool answering with capacity errors for this long while it has free slots is planned
# no replicas: it cannot serve (a full queue only marks it constrained for capacity_hold_s).
PLAN_CONSTRAINED_AFTER_S = 10.0
# An autoscaler may scale down to the least it was asked for within its stabilization
# window (HPA's default is 300 s): a pool falling below that lost replicas nobody asked
# it to lose.
STABILIZATION_S = 300.0


@dataclass(frozen=True, slots=True)
class ScalePlan:
    """Replicas per pool the autoscalers should run, for `sd_gateway_pool_desired_replicas`.

    `desired_replicas` is the cost-optimal allocation of the measured demand
    over what each pool could grow to (`attainable_replicas`: its maximum, or
    what it has while it is taken to be out of nodes, listed in `capped`),
    never below the pool's minimum nor above its maximum, and never below what
    the current routing fills while cheaper replicas are still coming. `replicas_share` is
    the same before rounding and without the minimum: the part of each pool
    this gateway's demand needs. It is what `sd_gateway_pool_desired_replicas`
    exports, so that a sum over gateway pods (the KEDA query) rounds once.
    """

    desired_replicas: Mapping[str, int]
    replicas_share: Mapping[str, float]  # this gateway's part, unrounded: what it exports
    attainable_replicas: Mapping[str, int]
    capped: frozenset[str]


@dataclass
class ControlStatus:
    """What the last tick decided, for `/v1/pools`, metrics and the status page."""

    mode: str = "auto"  # the operator's setting
    effective_mode: str = Mode.COST.value  # what routes now: cost or capacity (or a plain policy)
    allocation: Allocation | None = None
    plan: ScalePlan | None = None
    batch_admit_fraction: float = 1.0
    spend_limited: str | None = None  # why the spend guardrail acted, if it did
    ticks: int = 0
    transitions: collections.deque[Transition] = field(
        default_factory=lambda: collections.deque(maxlen=TRANSITION_HISTORY)
    )
    # One point a tick for the status page: (wall-clock seconds, {pool: {series: value}}).
    history: collections.deque[tuple[float, dict[str, dict[str, float | None]]]] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY_POINTS)
    )


def supply_of(
    view: PoolView,
    *,
    usable: bool,
    latency_s: float | None = None,
    replicas: int | None = None,
    config: PoolConfig | None = None,
) -> PoolSupply:
    """A pool's supply from its view; `latency_s` and `replicas` override the view's.

    `config` gives the pool's minimum (its floor) and `max_share`.
    """
    latency = view.latency_s if latency_s is None else latency_s
    count = len(view.healthy_replicas) if replicas is None else replicas
    slots = view.healthy_slots if replicas is None else replicas * view.slots_per_replica
    return PoolSupply(
        name=view.name,
        capacity_images_per_s=slots / latency if slots > 0 else 0.0,
        latency_s=latency,
        cost_per_image_usd=view.price_per_hour_usd * latency / (3600.0 * view.slots_per_replica),
        price_per_hour_usd=view.price_per_hour_usd,
        slots_per_replica=view.slots_per_replica,
        healthy_replicas=count,
        usable=usable,
        floor_replicas=0 if config is None else config.min_replicas,
        max_share=None if config is None else config.max_share,
    )


@dataclass
class _Growth:
    """How one pool has followed the plan: when it last had what it was asked for, or grew."""

    replicas: int
    since: float
    wanted: int
    cap: int | None = None  # taken to be out of nodes at this many replicas
    history: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def remember(self, now: float, wanted: int) -> None:
        self.history.append((now, wanted))
        while self.history and self.history[0][0] < now - STABILIZATION_S:
            self.history.popleft()

    def least_wanted(self) -> int:
        """The fewest replicas asked for lately: an autoscaler may go down to that."""
        return min((w for _, w in self.history), default=self.wanted)


class ControlLoop:
    """Periodic optimizer; owns the capacity state machine and the published weights."""

    def __init__(
        self,
        registry: PoolRegistry,
        settings: GatewaySettings,
        clock: Clock,
        metrics: GatewayMetrics,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.status = ControlStatus(mode=settings.mode)
        self._growth: dict[str, _Growth] = {}
        self._first_tick_at = math.inf
        self._constrained_since: dict[str, float] = {}
        self.machine = CapacityStateMachine(
            enter_share=settings.capacity_enter_share,
            exit_share=settings.capacity_exit_share,
            hold_s=settings.capacity_mode_hold_s,
            recovery_hold_s=settings.recovery_hold_s,
            on_transition=self._on_transition,
        )

    def set_mode(self, mode: str) -> None:
        self.status.mode = mode
        self.tick()

    def _on_transition(self, t: Transition) -> None:
        self.status.transitions.append(t)
        kind = "mode" if t.subject == "mode" else "pool"
        self.metrics.transitions.labels(kind, t.subject, t.new).inc()

    def demand(self) -> list[ClassDemand]:
        """Measured demand per class: one entry any pool can serve, one per restricted group.

        A group is the set of pools that can serve some shapes (768x768 only on
        GPUs, say); the demand any pool can serve is the class's whole arrival
        rate less its groups'.
        """
        return self._measure()[0]

    def _measure(self) -> tuple[list[ClassDemand], list[ClassDemand]]:
        """`demand()`, and the replica plan's: each entry over the longer
        `PLAN_DEMAND_WINDOW_S`, or at the current rate when that is higher."""
        now = self.clock.now()
        slo = {
            Priority.INTERACTIVE: self.settings.slo.interactive_seconds,
            Priority.BATCH: self.settings.slo.batch_seconds,
        }
        groups = []
        restricted = dict.fromkeys(Priority, 0.0)
        plan: dict[tuple[Priority, frozenset[str] | None], ClassDemand] = {}
        for priority, group, rate, size in self.registry.group_demand():
            entry = ClassDemand(priority, rate, slo[priority], pools=group, size=size)
            plan[(priority, group)] = entry
            if group is not None:
                restricted[priority] += rate
                groups.append(entry)
        demand = [
            ClassDemand(
                p,
                max(0.0, self.registry.arrivals_by_class[p].rate(now) - restricted[p]),
                slo[p],
                size=plan[(p, None)].size if (p, None) in plan else 1.0,
            )
            for p in Priority
        ]
        window_s, sigmas = self.settings.rate_window_s, self.settings.plan_rise_sigmas
        for d in demand:  # plan for a rise at once, for a fall only once it lasts
            planned = plan.get((d.priority, None))
            # A rise is the short-window rate above the long one by more than its Poisson
            # noise, sqrt(rate / window): the autoscaler holds every rise for minutes, so
            # planning on noise would only ratchet replicas up.
            noise = sigmas * math.sqrt(d.rate_per_s / window_s)
            if planned is None or d.rate_per_s > planned.rate_per_s + noise:
                plan[(d.priority, None)] = d
        routing = demand + sorted(groups, key=lambda d: (d.priority, sorted(d.pools or ())))
        return routing, list(plan.values())

    def tick(self) -> ControlStatus:
        """One control step; returns the published status."""
        now = self.clock.now()
        self._first_tick_at = min(self._first_tick_at, now)
        self.registry.forget_shapes()
        snap = self.registry.snapshot()
        demand, plan_demand = self._measure()
        signals = [self._signal(view, now) for view in snap.pools]
        # A pool that lost some replicas still serves with the rest; one that answers
        # with capacity errors, has no healthy replica or is drained gets no new share.
        usable = {
            s.name: not (s.draining or s.capacity_errors or s.healthy_replicas == 0)
            for s in signals
        }
        # Allocation goes by seconds per 512x512-equivalent image (the views carry it).
        config = {v.name: self.registry.get(v.name).config for v in snap.pools}
        supplies = [
            supply_of(v, usable=usable[v.name], latency_s=v.unit_latency_s, config=config[v.name])
            for v in snap.pools
        ]
        target = self.settings.target_utilization
        # The plan if every pool were whole: the pools it uses are the preferred ones.
        ideal = allocate(
            [
                supply_of(v, usable=True, latency_s=v.unit_latency_s, config=config[v.name])
                for v in self._whole(snap)
            ],
            demand,
            mode="cost",
            target_utilization=target,
        )
        preferred = frozenset(
            name
            for per_class in ideal.assigned.values()
            for name, rate in per_class.items()
            if rate > 0
        ) or frozenset(self._cheapest(snap))
        # Demand against what the pools can grow to: nearing what they have now is the
        # autoscalers' business, not a shortfall.
        reach, capped = self._reach(snap, now)
        capacity_per_s = sum(s.capacity_images_per_s * target for s in reach if s.usable)
        total_demand = sum(d.rate_per_s for d in demand)
        mode = self.machine.update(
            now,
            signals,
            demand_per_s=total_demand,
            capacity_per_s=capacity_per_s,
            preferred=preferred,
        )
        operator = self.status.mode
        effective = mode.value if operator == "auto" else operator
        allocation: Allocation | None = None
        plan: ScalePlan | None = None
        admit = 1.0
        limited: str | None = None
        if operator in OPTIMIZED_MODES:
            allocation = allocate(supplies, demand, mode=effective, target_utilization=target)
            admit = self._batch_admit(allocation, supplies, demand, effective)
            allocation, admit, limited = self._guard_spend(allocation, supplies, demand, admit)
            self.registry.weights = {p: dict(w) for p, w in allocation.weights.items()}
            self.registry.group_weights = {
                g: {p: dict(w) for p, w in per_class.items()}
                for g, per_class in allocation.group_weights.items()
            }
            plan = self._plan(reach, capped, allocation, plan_demand)
        else:
            self.registry.weights = {}
            self.registry.group_weights = {}
        self.registry.control_states = dict(self.machine.pools)
        self.status.effective_mode = effective
        self.status.allocation = allocation
        self.status.plan = plan
        self.status.batch_admit_fraction = admit
        self.status.spend_limited = limited
        self.status.ticks += 1
        self._export(plan)
        self._record(snap)
        return self.status

    def _record(self, snap: Snapshot) -> None:
        weights = self.registry.weights.get(Priority.INTERACTIVE)
        point: dict[str, dict[str, float | None]] = {}
        for view in snap.pools:
            point[view.name] = {
                "weight": weights.get(view.name, 0.0) if weights is not None else None,
                "latency_s": view.latency_s,
                "queue_s": view.wait_s if math.isfinite(view.wait_s) else None,
                "cost_per_image_usd": view.cost_per_image_usd,
            }
        self.status.history.append((time.time(), point))

    def _signal(self, view: PoolView, now: float) -> PoolSignal:
        pool = self.registry.get(view.name)
        healthy = sum(1 for r in pool.replicas.values() if r.healthy(now))
        return PoolSignal(
            name=view.name,
            healthy_replicas=healthy,
            known_replicas=len(pool.replicas),
            capacity_errors=now < pool.constrained_until,
            draining=pool.draining,
        )

    def _whole(self, snap: Snapshot) -> list[PoolView]:
        """Every pool as if all its replicas were healthy (for the preferred set)."""
        whole = []
        for view in snap.pools:
            replicas = tuple(dataclasses.replace(r, healthy=True) for r in view.replicas)
            whole.append(dataclasses.replace(view, replicas=replicas))
        return whole

    @staticmethod
    def _cheapest(snap: Snapshot) -> list[str]:
        if not snap.pools:
            return []
        best = min(p.cost_per_image_usd for p in snap.pools)
        return [p.name for p in snap.pools if math.isclose(p.cost_per_image_usd, best)]

    def _guard_spend(
        self,
        allocation: Allocation,
        supplies: list[PoolSupply],
        demand: list[ClassDemand],
        admit: float,
    ) -> tuple[Allocation, float, str | None]:
        """Keep projected spend under `max_spend_per_hour_usd`: defer batch, then go cheaper."""
        cap = self.settings.max_spend_per_hour_usd
        if cap is None or allocation.spend_per_hour_usd <= cap:
            return allocation, admit, None
        target = self.settings.target_utilization
        interactive = [d for d in demand if d.priority is Priority.INTERACTIVE]
        batch = [d for d in demand if d.priority is Priority.BATCH]
        alone = allocate(
            supplies,
            interactive + [_scaled(b, 0.0) for b in batch],
            mode="cost",
            target_utilization=target,
        )
        if alone.spend_per_hour_usd <= cap:
            full, base = allocation.spend_per_hour_usd, alone.spend_per_hour_usd
            fraction = max(0.0, min(1.0, (cap - base) / (full - base))) if full > base else 0.0
            scaled = allocate(
                supplies,
                interactive + [_scaled(b, fraction) for b in batch],
                mode="cost",
                target_utilization=target,
            )
            reason = (
                f"projected ${allocation.spend_per_hour_usd:.2f}/h over the "
                f"${cap:.2f}/h limit: batch admitted at {fraction:.0%}"
            )
            return scaled, min(admit, fraction), reason
        # Interactive alone is over the limit: serve it from the cheapest pools, late if need be.
        cheap = allocate(
            supplies,
            [_relaxed(d) for d in interactive] + [_scaled(b, 0.0) for b in batch],
            mode="cost",
            target_utilization=target,
        )
        reason = (
            f"projected ${alone.spend_per_hour_usd:.2f}/h for interactive work alone is over the "
            f"${cap:.2f}/h limit: batch deferred, interactive sent to the cheapest pools"
        )
        return cheap, 0.0, reason

    def _batch_admit(
        self,
        allocation: Allocation,
        supplies: list[PoolSupply],
        demand: list[ClassDemand],
        mode: str,
    ) -> float:
        """Share of batch work to admit now.

        Routing fills pools to `target_utilization`; the headroom above it is
        for bursts and for the minutes a scale-up takes. Batch work, whose
        objective is long, may use part of it (`batch_admit_utilization`), so
        it is shed only when the demand would fill the pools beyond that, not
        whenever a rise outpaces the autoscaler. In capacity mode (pools out of
        nodes) the headroom is kept for interactive work. Under a shortfall,
        batch gives way first: the deficit comes out of its share.
        """
        batch = sum(d.rate_per_s for d in demand if d.priority is Priority.BATCH)
        if allocation.total_deficit_per_s <= 0 or batch <= 0:
            return 1.0
        target = self.settings.target_utilization
        roomy = self.settings.batch_admit_utilization
        if roomy is None:
            roomy = (1.0 + target) / 2
        if roomy > target and mode != Mode.CAPACITY.value:  # never below: settings check it
            allocation = allocate(supplies, demand, mode=mode, target_utilization=roomy)
        return max(0.0, 1.0 - allocation.total_deficit_per_s / batch)

    def _reach(self, snap: Snapshot, now: float) -> tuple[list[PoolSupply], frozenset[str]]:
        """Each pool as it could grow (its maximum, or what it has while out of nodes)."""
        supplies = []
        capped = set()
        for view in snap.pools:
            pool = self.registry.get(view.name)
            config = pool.config
            have = self._have(view.name)
            if config.max_replicas is None:  # a pool that does not scale: what it has
                reach = max(have, config.min_replicas)
            else:
                reach = max(config.max_replicas, config.min_replicas)
                cap = self._follow(view.name, have, now).cap
                if cap is not None:
                    reach = min(reach, cap)
                    capped.add(view.name)
            # Capacity errors from a pool whose slots are all taken mean a full queue: it
            # needs more replicas, not fewer. From one with room, the pool cannot serve.
            saturated = view.healthy_slots > 0 and view.outstanding >= view.healthy_slots
            if now < pool.constrained_until and not saturated:
                since = self._constrained_since.setdefault(view.name, now)
            else:
                since = self._constrained_since.pop(view.name, now)
            usable = not pool.draining and now - since < PLAN_CONSTRAINED_AFTER_S
            supplies.append(
                supply_of(
                    view,
                    usable=usable and reach > 0,
                    latency_s=pool.plan_latency.value,
                    replicas=reach,
                    config=config,
                )
            )
        return supplies, frozenset(capped)

    def _plan(
        self,
        reach: list[PoolSupply],
        capped: frozenset[str],
        routing: Allocation,
        demand: list[ClassDemand],
    ) -> ScalePlan:
        """Replicas per pool: the demand placed cheapest first over what pools could grow to."""
        now = self.clock.now()
        mode = "capacity" if self.status.mode == "capacity" else "cost"
        ideal = allocate(
            reach,
            demand,
            mode=mode,
            target_utilization=self.settings.target_utilization,
        )
        floor = self._routing_floor(reach, ideal, routing)
        desired: dict[str, int] = {}
        share: dict[str, float] = {}
        for supply in reach:
            name = supply.name
            config = self.registry.get(name).config
            exact = max(ideal.exact_replicas[name], floor[name])
            cap = supply.healthy_replicas
            if name in capped and ceil_replicas(exact) >= cap:
                # Ask for one more than the cap, which the cluster grants once it can; as a
                # share, so that the sum over several gateways asks for one more too.
                exact = exact * (cap + 1) / cap if cap > 0 else max(exact, 1.0)
            wanted = max(ceil_replicas(exact), config.min_replicas)
            if config.max_replicas is not None:
                wanted = min(wanted, config.max_replicas)
            desired[name] = wanted
            share[name] = exact
            growth = self._growth.get(name)
            if growth is not None:
                growth.wanted = wanted
                if now - self._first_tick_at >= self.settings.rate_window_s:
                    growth.remember(now, wanted)  # not while the demand estimate warms up
        return ScalePlan(
            desired_replicas=desired,
            replicas_share=share,
            attainable_replicas={s.name: s.healthy_replicas for s in reach},
            capped=capped,
        )

    def _routing_floor(
        self, reach: list[PoolSupply], ideal: Allocation, routing: Allocation
    ) -> dict[str, float]:
        """Replicas per pool the plan keeps of what the current routing fills.

        A pool carries what routing gives it until the cheaper replicas the plan
        asks for are up, so while a cheaper pool has fewer replicas than planned
        the plan never goes below what the pool fills now. Once they are up, a
        dearer pool's spill is a burst above the cheaper pools' target: their
        headroom's business, not a reason for replicas the autoscaler would hold
        for minutes. The cheapest price tier keeps what it fills (its own
        headroom for a crowd that outruns a cold start).
        """
        usable = [s for s in reach if s.usable]
        cheapest = min((s.cost_per_image_usd for s in usable), default=0.0)
        short = [
            s.cost_per_image_usd
            for s in usable
            if self._have(s.name) < ceil_replicas(ideal.exact_replicas[s.name])
        ]
        floor = {}
        for s in reach:
            cost = s.cost_per_image_usd
            tier = cost <= cheapest * (1.0 + COST_TIER_REL)
            waiting = any(c * (1.0 + COST_TIER_REL) < cost for c in short)
            floor[s.name] = routing.placed_replicas[s.name] if tier or waiting else 0.0
        return floor

    def _have(self, name: str) -> int:
        """Replicas the pool has, those being retired left out."""
        return sum(1 for r in self.registry.get(name).replicas.values() if not r.retiring)

    def _follow(self, name: str, have: int, now: float) -> _Growth:
        """Track whether a pool gets the replicas the plan asks for; infer a shortfall.

        A pool is taken to be out of nodes, and capped at the replicas it has,
        when it loses replicas nobody asked it to lose (evicted, reclaimed),
        or stays below its desired count for `scale_up_timeout_s` without
        growing. The cap holds until the pool grows past it: the plan keeps
        asking for one replica more, which the cluster grants once it can.
        """
        growth = self._growth.get(name)
        if growth is None:
            growth = self._growth[name] = _Growth(replicas=have, since=now, wanted=have)
        lost = growth.replicas - have
        if growth.cap is not None and have > growth.cap:
            log.info("pool %s grew to %d replicas: no longer planned as short", name, have)
            growth.cap = None
        if have > growth.replicas or have >= growth.wanted:
            growth.since = now
        growth.replicas = have
        if growth.cap is not None:
            return growth
        if lost > 0 and have < growth.least_wanted():
            why = f"lost {lost} replica(s) while at least {growth.least_wanted()} were wanted"
        elif now - growth.since >= self.settings.scale_up_timeout_s:
            why = f"stayed below the {growth.wanted} wanted for {now - growth.since:.0f} s"
        else:
            return growth
        growth.cap = have
        log.warning("pool %s %s: planned as out of capacity at %d replicas", name, why, have)
        return growth

    def _export(self, plan: ScalePlan | None) -> None:
        if plan is None:
            return
        for name, replicas in plan.replicas_share.items():
            self.metrics.desired_replicas.labels(name).set(replicas)

    async def run(self) -> None:
        """Tick every `control_interval_s` until cancelled."""
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("control tick failed; keeping the last published weights")
            await self.clock.sleep(self.settings.control_interval_s)


def _scaled(d: ClassDemand, fraction: float) -> ClassDemand:
    return dataclasses.replace(d, rate_per_s=d.rate_per_s * fraction)


def _relaxed(d: ClassDemand) -> ClassDemand:
    return dataclasses.replace(d, slo_s=math.inf)
