"""The control loop: once a `control_interval_s`, signals in, weights out.

Each tick reads one snapshot, advances the capacity state machine, asks the
optimizer for the allocation of the mode in force, and publishes per-class
weights and controller pool states on the registry in one assignment each.
The hot path never waits for it: it reads whatever was published last, and
its own per-request filters and scores still react to failures at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

from backends.clock import Clock
from gateway.control.capacity import CapacityStateMachine, Mode, PoolSignal, Transition
from gateway.control.optimizer import Allocation, ClassDemand, PoolSupply, allocate
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry
from gateway.scheduling.types import PoolView, Priority, Snapshot
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.control")

# Modes whose routing the optimizer drives; the others are plain policies.
OPTIMIZED_MODES = ("auto", "cost", "capacity")
TRANSITION_HISTORY = 100
HISTORY_POINTS = 600  # ten minutes at the default interval


@dataclass
class ControlStatus:
    """What the last tick decided, for `/v1/pools`, metrics and the status page."""

    mode: str = "auto"  # the operator's setting
    effective_mode: str = Mode.COST.value  # what routes now: cost or capacity (or a plain policy)
    allocation: Allocation | None = None
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


def supply_of(view: PoolView, *, usable: bool) -> PoolSupply:
    return PoolSupply(
        name=view.name,
        capacity_images_per_s=view.capacity_images_per_s,
        latency_s=view.latency_s,
        cost_per_image_usd=view.cost_per_image_usd,
        price_per_hour_usd=view.price_per_hour_usd,
        slots_per_replica=view.slots_per_replica,
        healthy_replicas=len(view.healthy_replicas),
        usable=usable,
    )


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
        now = self.clock.now()
        slo = self.settings.slo
        return [
            ClassDemand(
                Priority.INTERACTIVE,
                self.registry.arrivals_by_class[Priority.INTERACTIVE].rate(now),
                slo.interactive_seconds,
            ),
            ClassDemand(
                Priority.BATCH,
                self.registry.arrivals_by_class[Priority.BATCH].rate(now),
                slo.batch_seconds,
            ),
        ]

    def tick(self) -> ControlStatus:
        """One control step; returns the published status."""
        now = self.clock.now()
        snap = self.registry.snapshot()
        demand = self.demand()
        signals = [self._signal(view, now) for view in snap.pools]
        # A pool that lost some replicas still serves with the rest; one that answers
        # with capacity errors, has no healthy replica or is drained gets no new share.
        usable = {
            s.name: not (s.draining or s.capacity_errors or s.healthy_replicas == 0)
            for s in signals
        }
        supplies = [supply_of(v, usable=usable[v.name]) for v in snap.pools]
        target = self.settings.target_utilization
        # The plan if every pool were whole: the pools it uses are the preferred ones.
        ideal = allocate(
            [supply_of(v, usable=True) for v in self._whole(snap)],
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
        capacity_per_s = sum(s.capacity_images_per_s * target for s in supplies if s.usable)
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
        admit = 1.0
        limited: str | None = None
        if operator in OPTIMIZED_MODES:
            allocation = allocate(supplies, demand, mode=effective, target_utilization=target)
            admit = _batch_admit(allocation, demand)
            allocation, admit, limited = self._guard_spend(allocation, supplies, demand, admit)
            self.registry.weights = {p: dict(w) for p, w in allocation.weights.items()}
        else:
            self.registry.weights = {}
        self.registry.control_states = dict(self.machine.pools)
        self.status.effective_mode = effective
        self.status.allocation = allocation
        self.status.batch_admit_fraction = admit
        self.status.spend_limited = limited
        self.status.ticks += 1
        self._export(allocation)
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

    def _export(self, allocation: Allocation | None) -> None:
        if allocation is None:
            return
        for name, replicas in allocation.desired_replicas.items():
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
    return ClassDemand(d.priority, d.rate_per_s * fraction, d.slo_s)


def _relaxed(d: ClassDemand) -> ClassDemand:
    return ClassDemand(d.priority, d.rate_per_s, math.inf)


def _batch_admit(allocation: Allocation, demand: list[ClassDemand]) -> float:
    """Share of batch work to admit: under a shortfall, batch gives way first."""
    batch = sum(d.rate_per_s for d in demand if d.priority is Priority.BATCH)
    deficit = allocation.total_deficit_per_s
    if deficit <= 0 or batch <= 0:
        return 1.0
    return max(0.0, 1.0 - deficit / batch)
