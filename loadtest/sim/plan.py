"""Our scaler's plan: replicas per pool from the gateway's optimizer, shape by shape.

The control loop publishes `desired_replicas`, but sizes them against the
replicas a pool has now, so a cheap pool could never grow past them. The plan
here runs the same optimizer (`gateway.control.optimizer.allocate`, cost mode)
against what each pool could grow to (its maximum, or what the cluster last
said it can hold) at the autoscaler's target utilization, on the demand of the
last `demand_window_s`:

- shapes are placed one at a time, those served by the fewest pools first, each
  over the pools serving it, from the slots the earlier ones left;
- a pool's cost and capacity use its mean service time per 512x512-equivalent
  image over the window (the gateway's EWMA reacts fast, for routing, and is
  too noisy to rank pools a few percent apart), and pools within
  `COST_TIER_REL` of a cheaper one share its price tier, so that near-equal
  pools are not swapped from one sync to the next;
- a pool answering with capacity errors at `CONSTRAINED_SYNCS_TO_DROP` syncs in
  a row is left out;
- a pool never gets fewer replicas than the slots it keeps busy now, so it does
  not shrink under its load while the plan's cheaper pools come up.

This is what a KEDA trigger on the gateway's desired-replica metric would need
from the gateway; see docs/evaluation.md for the hook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from gateway.control.optimizer import ClassDemand, PoolSupply, allocate
from gateway.pools import PoolRegistry
from gateway.scheduling.types import Priority
from gateway.stats import WindowCounter
from loadtest.sim.autoscaler import Autoscaler
from loadtest.sim.scenario import Scenario

COST_TIER_REL = 0.05
CONSTRAINED_SYNCS_TO_DROP = 2


class Planner:
    """Feeds on arrivals and completions; `desired(now)` gives replicas per pool."""

    def __init__(
        self,
        scenario: Scenario,
        registry: PoolRegistry,
        scaler: Autoscaler,
        live: Callable[[str], int],
    ) -> None:
        self.scenario = scenario
        self.registry = registry
        self.scaler = scaler
        self.live = live  # replicas starting or ready in a pool
        window = scenario.autoscaler.demand_window_s
        self.window_s = window
        self.util = scenario.autoscaler.target_utilization
        shapes = scenario.arrivals.shapes
        self.areas = [s.size[0] * s.size[1] / 512**2 for s in shapes]
        serving = [tuple(p.name for p in scenario.pools if p.supports(s.shape)) for s in shapes]
        self.serving = serving
        # Most constrained shape first; larger images first among equals.
        self.order = sorted(range(len(shapes)), key=lambda i: (len(serving[i]), -self.areas[i], i))
        self.demand = {
            (priority, i): WindowCounter(window)
            for priority in Priority
            for i in range(len(shapes))
        }
        self.units = {p.name: WindowCounter(window) for p in scenario.pools}
        self.busy_s = {p.name: WindowCounter(window) for p in scenario.pools}
        self.streaks = {p.name: 0 for p in scenario.pools}
        self.slo = {
            Priority.INTERACTIVE: scenario.slo.interactive_seconds,
            Priority.BATCH: scenario.slo.batch_seconds,
        }

    def on_arrival(self, priority: Priority, shape: int, images: int, now: float) -> None:
        self.demand[(priority, shape)].add(now, images)

    def on_completion(
        self, pool: str, shape_area: float, images: int, service_s: float, now: float
    ) -> None:
        self.units[pool].add(now, images * shape_area)
        self.busy_s[pool].add(now, service_s)

    def _unit_latency_s(self, pool: str, now: float) -> float:
        units = self.units[pool].count(now)
        if units > 0:
            return self.busy_s[pool].count(now) / units
        return self.registry.get(pool).config.expected_latency_seconds

    def desired(self, now: float) -> dict[str, int]:
        names = [p.name for p in self.scenario.pools]
        unit_latency = {n: self._unit_latency_s(n, now) for n in names}
        slots_free: dict[str, float] = {}
        caps: dict[str, int] = {}
        usable: dict[str, bool] = {}
        for name in names:
            state = self.registry.get(name)
            constrained = now < state.constrained_until
            self.streaks[name] = self.streaks[name] + 1 if constrained else 0
            cap = self.scaler.attainable_max(name, now, self.live(name))
            caps[name] = cap
            usable[name] = (
                cap > 0 and self.streaks[name] < CONSTRAINED_SYNCS_TO_DROP and not state.draining
            )
            slots_free[name] = float(cap * state.config.slots_per_replica)
        busy = dict.fromkeys(names, 0.0)  # slot-seconds per second the plan puts on each pool
        for shape in self.order:
            area = self.areas[shape]
            demand = [
                ClassDemand(p, self.demand[(p, shape)].rate(now), self.slo[p]) for p in Priority
            ]
            if not any(d.rate_per_s > 0 for d in demand):
                continue
            supplies = []
            for name in self.serving[shape]:
                state = self.registry.get(name)
                slots = state.config.slots_per_replica
                latency_s = unit_latency[name] * area
                supplies.append(
                    PoolSupply(
                        name=name,
                        capacity_images_per_s=max(slots_free[name], 0.0) / latency_s,
                        latency_s=latency_s,
                        cost_per_image_usd=state.price_per_hour_usd * latency_s / (3600.0 * slots),
                        price_per_hour_usd=state.price_per_hour_usd,
                        slots_per_replica=slots,
                        healthy_replicas=caps[name],
                        usable=usable[name],
                    )
                )
            plan = allocate(_tiered(supplies), demand, mode="cost", target_utilization=self.util)
            for supply in supplies:
                load = plan.utilization[supply.name] * supply.capacity_images_per_s
                if not math.isfinite(load) or load <= 0:
                    continue
                slot_s = load * supply.latency_s
                busy[supply.name] += slot_s
                slots_free[supply.name] -= slot_s / self.util
        desired = {}
        for name in names:
            slots = self.registry.get(name).config.slots_per_replica
            planned = math.ceil(busy[name] / (slots * self.util) - 1e-9)
            carried = math.ceil(self.busy_s[name].count(now) / self.window_s / slots - 1e-9)
            desired[name] = max(planned, carried)
        return desired


def _tiered(supplies: list[PoolSupply]) -> list[PoolSupply]:
    """Pools within `COST_TIER_REL` of a cheaper one's $/image get its price tier."""
    ordered = sorted(supplies, key=lambda s: (s.cost_per_image_usd, s.name))
    tiered: list[PoolSupply] = []
    tier_cost = -1.0
    for supply in ordered:
        cost = supply.cost_per_image_usd
        if tier_cost < 0 or cost > tier_cost * (1 + COST_TIER_REL):
            tier_cost = cost
        tiered.append(dataclasses.replace(supply, cost_per_image_usd=tier_cost))
    return tiered
