"""The Kubernetes side of a run: replicas per pool, their lifecycle, faults, billing inputs.

The cluster follows the autoscaler's desired replicas (`reconcile`), applies
the scenario's events (`apply`), and tells the engine, through callbacks, when
a replica will be ready (`schedule_ready`) and which accepted work died with a
lost replica (`fail_over`). What the gateway knows of all this it learns only
through discovery, probes and the answers to its requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gateway.pools import PoolRegistry
from loadtest.sim.autoscaler import Autoscaler
from loadtest.sim.recorder import FaultRecord
from loadtest.sim.scenario import (
    CapacityErrors,
    Event,
    LoseReplicas,
    MaxReplicas,
    PriceChange,
    Recover,
    Scenario,
    Slowdown,
)
from loadtest.sim.world import Job, ReplicaPhase, SimPool, SimReplica

LIVE = (ReplicaPhase.PROVISIONING, ReplicaPhase.READY)


class Cluster:
    """Every pool's replicas as the cluster has them; see the module docstring."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        scaler: Autoscaler,
        registry: PoolRegistry,
        schedule_ready: Callable[[float, SimReplica], None],
        fail_over: Callable[[list[Job]], None],
    ) -> None:
        self.scenario = scenario
        self.scaler = scaler
        self.registry = registry
        self.schedule_ready = schedule_ready
        self.fail_over = fail_over
        self.pools: dict[str, SimPool] = {
            p.name: SimPool(p, random.Random(f"service:{seed}:{p.name}")) for p in scenario.pools
        }
        self.rng = random.Random(f"world:{seed}")
        self.replicas: dict[str, SimReplica] = {}  # every replica not GONE, by URL
        self.faults: list[FaultRecord] = []
        for pool in self.pools.values():
            for _ in range(pool.spec.replicas.initial):
                self._add(pool, ReplicaPhase.READY, 0.0)

    def _add(self, pool: SimPool, phase: ReplicaPhase, now: float) -> SimReplica:
        replica = pool.add(phase, now)
        self.replicas[replica.url] = replica
        return replica

    # lifecycle -------------------------------------------------------------------------------

    def ready(self, replica: SimReplica) -> None:
        if replica.phase is ReplicaPhase.PROVISIONING:
            replica.phase = ReplicaPhase.READY

    def terminate(self, replica: SimReplica) -> None:
        replica.pool.remove(replica)
        self.replicas.pop(replica.url, None)

    def drain(self, replica: SimReplica) -> None:
        replica.phase = ReplicaPhase.DRAINING
        if replica.busy == 0 and not replica.queue:
            self.drained(replica)

    def drained(self, replica: SimReplica) -> None:
        """An idle draining replica goes once the gateway's discovery has dropped it.

        A preStop sleep keeps a replica being scaled down serving until then, so
        the gateway never meets a refusal on a planned scale-down.
        """
        state = self.registry.get(replica.pool.name).replicas.get(replica.url)
        if state is None or state.retiring:
            self.terminate(replica)

    def lose(self, replicas: Sequence[SimReplica]) -> None:
        """The replicas vanish; the work they held goes to `fail_over`."""
        orphans: list[Job] = []
        for replica in replicas:
            orphans.extend(replica.running)
            orphans.extend(replica.queue)
            replica.running.clear()
            replica.queue.clear()
            replica.busy = 0
            self.terminate(replica)
        for job in orphans:
            job.cancelled = True
        if orphans:
            self.fail_over(orphans)

    def reconcile(self, pool: SimPool, now: float) -> None:
        """Make the pool's live replicas follow the scaler, within the cluster's maximum.

        Missing replicas start provisioning (ready after `cold_start_s`); surplus
        ones go newest-pending first, then the least loaded ready ones drain.
        """
        target = min(self.scaler.desired(pool.name), pool.max_now)
        live = [r for r in pool.replicas.values() if r.phase in LIVE]
        if len(live) < target:
            for _ in range(target - len(live)):
                replica = self._add(pool, ReplicaPhase.PROVISIONING, now)
                self.schedule_ready(now + pool.spec.cold_start_s, replica)
            return
        excess = len(live) - target
        pending = [r for r in live if r.phase is ReplicaPhase.PROVISIONING]
        for replica in reversed(pending):
            if excess == 0:
                return
            self.terminate(replica)
            excess -= 1
        ready = sorted(
            (r for r in live if r.phase is ReplicaPhase.READY), key=lambda r: (r.depth, -r.index)
        )
        for replica in ready[:excess]:
            self.drain(replica)

    # events ----------------------------------------------------------------------------------

    def apply(self, event: Event, now: float) -> None:
        """One scenario event; faults are recorded with the capacity left after them."""
        pool = self.pools[event.pool]
        if isinstance(event, LoseReplicas):
            ready = pool.in_phase(ReplicaPhase.READY)
            self.lose(self.rng.sample(ready, min(event.count, len(ready))))
            self._fault(event.kind, pool, now)
            self.reconcile(pool, now)  # the ReplicaSet replaces them at once, if it can
        elif isinstance(event, MaxReplicas):
            pool.max_now = event.max_replicas
            if event.evict:
                self._evict(pool, event.max_replicas)
            self._fault(event.kind, pool, now)
            self.reconcile(pool, now)
        elif isinstance(event, CapacityErrors):
            pool.capacity_errors = True
            self._fault(event.kind, pool, now)
        elif isinstance(event, Slowdown):
            pool.slowdown = event.factor
            self._fault(event.kind, pool, now)
        elif isinstance(event, Recover):
            pool.capacity_errors = False
            pool.slowdown = 1.0
            pool.max_now = pool.spec.replicas.max
            self.reconcile(pool, now)
        elif isinstance(event, PriceChange):
            pool.price_per_hour_usd = event.price_per_hour
            # What `PUT /admin/pools/{name}/price` does.
            self.registry.get(pool.name).price_per_hour_usd = event.price_per_hour

    def _evict(self, pool: SimPool, keep: int) -> None:
        live = [r for r in pool.replicas.values() if r.phase in LIVE]
        surplus = len(live) - keep
        if surplus <= 0:
            return
        pending = [r for r in live if r.phase is ReplicaPhase.PROVISIONING]
        for replica in pending[:surplus]:
            self.terminate(replica)
        surplus -= min(surplus, len(pending))
        ready = pool.in_phase(ReplicaPhase.READY)
        self.lose(self.rng.sample(ready, min(surplus, len(ready))))

    def _fault(self, kind: str, pool: SimPool, now: float) -> None:
        capacity = 0.0 if pool.capacity_errors else pool.ready_capacity_per_s()
        self.faults.append(FaultRecord(now, pool.name, kind, capacity))

    # what the run measures ---------------------------------------------------------------------

    def capacity_suffices(self, shape: str, now: float) -> bool:
        """Whether READY capacity exceeded the offered work at `now`, overall and for `shape`.

        Work is in 512x512 images per second, from the scenario's rate curve;
        pools answering with capacity errors count for nothing.
        """
        usable = [p for p in self.pools.values() if not p.capacity_errors]
        arrivals = self.scenario.arrivals
        rate = arrivals.rate.at(now) * arrivals.images_per_request
        total = sum(s.share for s in arrivals.shapes)
        offered = rate * arrivals.mean_area_factor()
        offered_shape = sum(
            rate * s.share / total * s.size[0] * s.size[1] / 512**2
            for s in arrivals.shapes
            if s.shape == shape
        )
        capacity = sum(p.ready_capacity_per_s() for p in usable)
        capacity_shape = sum(p.ready_capacity_per_s() for p in usable if p.spec.supports(shape))
        return offered < capacity and offered_shape < capacity_shape
