"""Runtime state of pools and replicas, and frozen snapshots of it for the scheduler.

Mutated only by the event loop of one worker: the router records outcomes,
the health checker records probes, the control loop publishes weights.
`PoolRegistry.snapshot()` copies what the scheduler needs into frozen views.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping

from backends.clock import Clock
from gateway.scheduling.types import CapacityState, PoolView, Priority, ReplicaView, Snapshot
from gateway.settings import GatewaySettings, PoolConfig
from gateway.stats import Ewma, WindowCounter

# How many recent outcomes a replica remembers for success-rate outlier detection.
OUTCOME_HISTORY = 20
# A latency estimate older than this starts relaxing back toward the prior, so a
# pool that was slow once is tried again instead of being starved of samples forever.
LATENCY_STALE_AFTER_S = 10.0
LATENCY_RELAX_TAU_S = 20.0
DEMAND_MIN_SPAN_S = 5.0


class ReplicaState:
    """One model server: probe state, outlier state, load."""

    def __init__(self, url: str, pool: str, slots: int, now: float) -> None:
        self.url = url
        self.pool = pool
        self.slots = slots
        # Optimistic until its first probe answers; that first answer decides at once
        # (the gateway probes every replica once before it starts serving).
        self.probe_ok = True
        self.probed = False
        self.probe_successes = 0
        self.probe_failures = 0
        self.consecutive_failures = 0
        self.outcomes: collections.deque[bool] = collections.deque(maxlen=OUTCOME_HISTORY)
        self.ejections = 0
        self.ejected_until = -math.inf
        self.in_flight = 0
        self.reported_queue_depth = 0
        self.joined_at = now - 1e9  # configured replicas start at full weight
        self.capabilities: dict[str, object] | None = None
        self.last_error: str | None = None
        self.retiring = False  # gone from discovery; kept only until its in-flight work ends

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def healthy(self, now: float) -> bool:
        return self.probe_ok and not self.retiring and not self.ejected(now)

    def shapes(self) -> frozenset[str] | None:
        """Shapes from the replica's `/v1/capabilities` (None: any, or not known yet)."""
        shapes = (self.capabilities or {}).get("shapes")
        return frozenset(str(s) for s in shapes) if isinstance(shapes, list) else None

    def max_batch(self) -> int | None:
        value = (self.capabilities or {}).get("max_batch")
        return value if isinstance(value, int) and value > 0 else None

    def slow_start_factor(self, now: float, slow_start_s: float) -> float:
        if slow_start_s <= 0:
            return 1.0
        return min(1.0, max(0.1, (now - self.joined_at) / slow_start_s))


class PoolState:
    """One pool: its config, replicas, latency estimate, rates and capacity signals."""

    def __init__(self, config: PoolConfig, settings: GatewaySettings, now: float) -> None:
        self.config = config
        self.name = config.name
        self.replicas: dict[str, ReplicaState] = {}
        self.latency = Ewma(config.expected_latency_seconds, settings.ewma_alpha)
        self.latency_updated_at = now
        self.constrained_until = -math.inf
        self.recovering_until = -math.inf
        self.weight: float | None = None
        self.requests = WindowCounter(settings.rate_window_s)
        self.errors = WindowCounter(settings.rate_window_s)
        self.capacity_errors = WindowCounter(settings.rate_window_s)
        self.completions = WindowCounter(settings.rate_window_s)
        self.price_per_hour_usd = config.price_per_hour
        self.draining = False
        self._slow_start_s = settings.slow_start_s
        self._populated = False
        self.set_replicas(config.replicas, now)

    def set_replicas(self, urls: Iterable[str], now: float) -> None:
        """Replace the replica set, keeping the state of replicas that stay.

        A replica that joins after the first set warms up under slow start. One
        that vanished stops taking new work at once and is dropped when its
        in-flight requests have finished (see `drop_retired`).
        """
        wanted = list(dict.fromkeys(urls))
        fresh = {}
        for url in wanted:
            state = self.replicas.get(url)
            if state is None or state.retiring:
                state = ReplicaState(url, self.name, self.config.slots_per_replica, now)
                if self._populated:
                    state.joined_at = now
            fresh[url] = state
        for url, state in self.replicas.items():
            if url not in fresh and state.in_flight > 0:
                state.retiring = True
                fresh[url] = state
        self.replicas = fresh
        self._populated = self._populated or bool(wanted)

    def drop_retired(self) -> None:
        """Forget retiring replicas whose last request has finished."""
        if any(r.retiring and r.in_flight == 0 for r in self.replicas.values()):
            self.replicas = {
                u: r for u, r in self.replicas.items() if not (r.retiring and r.in_flight == 0)
            }

    def effective_shapes(self) -> frozenset[str] | None:
        """Config shapes if given (an override); else the shapes every replica reports."""
        if self.config.shapes is not None:
            return frozenset(self.config.shapes)
        reported = [r.shapes() for r in self.replicas.values() if r.capabilities is not None]
        if not reported or any(s is None for s in reported):
            return None
        common = frozenset.intersection(*[s for s in reported if s is not None])
        return common

    def max_batch(self) -> int | None:
        """The smallest batch any replica reports (None when none reports one)."""
        values = [b for r in self.replicas.values() if (b := r.max_batch()) is not None]
        return min(values) if values else None

    def estimated_latency_s(self, now: float) -> float:
        """The EWMA service time, relaxing toward the prior once it is stale."""
        prior = self.config.expected_latency_seconds
        value = self.latency.value
        age = now - self.latency_updated_at
        if self.latency.samples == 0 or age <= LATENCY_STALE_AFTER_S:
            return value
        keep = math.exp(-(age - LATENCY_STALE_AFTER_S) / LATENCY_RELAX_TAU_S)
        return prior + (value - prior) * keep

    def outstanding(self) -> int:
        return sum(max(r.in_flight, r.reported_queue_depth) for r in self.replicas.values())

    def capacity_state(self, now: float) -> CapacityState:
        if self.draining or not any(r.healthy(now) for r in self.replicas.values()):
            return CapacityState.UNAVAILABLE
        if now < self.constrained_until:
            return CapacityState.CONSTRAINED
        if now < self.recovering_until:
            return CapacityState.RECOVERING
        return CapacityState.AVAILABLE

    def error_rate(self, now: float) -> float:
        requests = self.requests.count(now)
        return min(1.0, self.errors.count(now) / requests) if requests else 0.0

    def view(self, now: float, *, panic: bool) -> PoolView:
        replicas = tuple(
            ReplicaView(
                url=r.url,
                pool=self.name,
                healthy=(panic and not r.retiring) or r.healthy(now),
                in_flight=r.in_flight,
                reported_queue_depth=r.reported_queue_depth,
                slots=r.slots,
                slow_start_factor=r.slow_start_factor(now, self._slow_start_s),
            )
            for r in self.replicas.values()
        )
        state = self.capacity_state(now)
        if panic and state is CapacityState.UNAVAILABLE and replicas and not self.draining:
            state = CapacityState.CONSTRAINED
        return PoolView(
            name=self.name,
            accelerator=self.config.accelerator,
            price_per_hour_usd=self.price_per_hour_usd,
            slots_per_replica=self.config.slots_per_replica,
            latency_s=self.estimated_latency_s(now),
            replicas=replicas,
            shapes=self.effective_shapes(),
            max_batch=self.max_batch(),
            outstanding=self.outstanding(),
            capacity_state=state,
            weight=self.weight,
            error_rate=self.error_rate(now),
        )


class PoolRegistry:
    """All pools of one gateway worker, and the gateway-wide arrival rate."""

    def __init__(self, settings: GatewaySettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        now = clock.now()
        self.pools: dict[str, PoolState] = {
            p.name: PoolState(p, settings, now) for p in settings.pools
        }
        # Demand estimates feed mode switches: read the first seconds over 5 s, not 1 s.
        window, span = settings.rate_window_s, DEMAND_MIN_SPAN_S
        self.arrivals = WindowCounter(window, span)
        self.arrivals_by_class = {p: WindowCounter(window, span) for p in Priority}
        # Published by the control loop, replaced whole (never mutated) so a
        # reader always sees one consistent tick: weights per class, and the
        # controller's pool states (with hysteresis).
        self.weights: Mapping[Priority, Mapping[str, float]] = {}
        self.control_states: Mapping[str, CapacityState] = {}

    def __iter__(self) -> Iterator[PoolState]:
        return iter(self.pools.values())

    def replicas(self) -> Iterator[ReplicaState]:
        for pool in self.pools.values():
            yield from pool.replicas.values()

    def get(self, name: str) -> PoolState:
        return self.pools[name]

    def replica(self, pool: str, url: str) -> ReplicaState:
        return self.pools[pool].replicas[url]

    def in_panic(self, now: float) -> bool:
        """True when no replica anywhere is healthy: then ejected replicas are tried again."""
        live = (r for p in self.pools.values() if not p.draining for r in p.replicas.values())
        return not any(r.healthy(now) for r in live)

    def record_arrival(self, priority: Priority, images: int) -> None:
        now = self.clock.now()
        self.arrivals.add(now, images)
        self.arrivals_by_class[priority].add(now, images)

    def snapshot(self, priority: Priority | None = None) -> Snapshot:
        """A frozen view of every pool for one scheduling decision.

        With a `priority`, pools carry the control loop's weights for that
        class (None until the loop has published).
        """
        now = self.clock.now()
        panic = self.in_panic(now)
        weights = self.weights.get(priority) if priority is not None else None
        views = []
        for pool in self.pools.values():
            pool.drop_retired()
            view = pool.view(now, panic=panic)
            control = self.control_states.get(pool.name)
            if (
                view.capacity_state is CapacityState.AVAILABLE
                and control is CapacityState.RECOVERING
            ):
                view = dataclasses.replace(view, capacity_state=control)
            if weights is not None:
                view = dataclasses.replace(view, weight=weights.get(pool.name, 0.0))
            views.append(view)
        return Snapshot(
            pools=tuple(views),
            arrival_rate_per_s=self.arrivals.rate(now),
            target_utilization=self.settings.target_utilization,
        )
