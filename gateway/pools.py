"""Runtime state of pools and replicas, and frozen snapshots of it for the scheduler.

Mutated only by the event loop of one worker: the router records outcomes,
the health checker records probes, the control loop publishes weights.
`PoolRegistry.snapshot()` copies what the scheduler needs into frozen views.

Snapshots are taken for every routing attempt, so a pool keeps its replica
views between them: a `ReplicaState` field that a `ReplicaView` copies is a
`_ViewField`, whose setter marks that replica's view stale, and a snapshot
rebuilds only the stale views (plus those that change with time: replicas
warming up under slow start). The cost of a snapshot is then O(pools +
replicas changed since the last one), not O(replicas).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar, overload

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
MAX_SHAPES_REMEMBERED = 256  # shape -> pool group cache, cleared every control tick
# The replica plan follows demand over a minute and latency over about 50 completions:
# autoscalers act on it for minutes, so it must not chase a 10-second blip.
PLAN_DEMAND_WINDOW_S = 60.0
PLAN_LATENCY_ALPHA = 0.02


T = TypeVar("T")


class _ViewField(Generic[T]):
    """A `ReplicaState` attribute that views depend on: setting it tells the pool.

    Only setting goes through the descriptor. The value is kept in the
    instance's `__dict__` under the attribute's own name and, as the class
    defines no `__get__` at run time, a read finds it there at plain
    attribute speed. `shapes`: the field also decides the pool's shapes and
    batch limit.
    """

    def __init__(self, *, shapes: bool = False) -> None:
        self._shapes = shapes
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    if TYPE_CHECKING:  # what a read returns, for the type checker only

        @overload
        def __get__(self, obj: None, owner: type) -> _ViewField[T]: ...

        @overload
        def __get__(self, obj: ReplicaState, owner: type) -> T: ...

        def __get__(self, obj: ReplicaState | None, owner: type) -> T | _ViewField[T]: ...

    def __set__(self, obj: ReplicaState, value: T) -> None:
        obj.__dict__[self._name] = value
        listener = obj.on_change
        if listener is not None:
            listener(obj, self._shapes)


class ReplicaState:
    """One model server: probe state, outlier state, load."""

    # What a ReplicaView copies, and what decides the pool's shapes and batch limit.
    slots: _ViewField[int] = _ViewField()
    probe_ok: _ViewField[bool] = _ViewField()
    ejected_until: _ViewField[float] = _ViewField()
    in_flight: _ViewField[int] = _ViewField()
    reported_queue_depth: _ViewField[int] = _ViewField()
    joined_at: _ViewField[float] = _ViewField()
    retiring: _ViewField[bool] = _ViewField()
    capabilities: _ViewField[dict[str, object] | None] = _ViewField(shapes=True)

    def __init__(self, url: str, pool: str, slots: int, now: float) -> None:
        # Called with (replica, shapes changed) when a view field is set; the pool's hook.
        self.on_change: Callable[[ReplicaState, bool], None] | None = None
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
        self.capabilities = None
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
        # Seconds per 512x512-equivalent image: what the control loop allocates with, and
        # a smoother one its replica plan ranks pools by (a few percent apart in $/image).
        self.unit_latency = Ewma(config.expected_latency_seconds, settings.ewma_alpha)
        self.plan_latency = Ewma(
            config.expected_latency_seconds, PLAN_LATENCY_ALPHA, PLAN_LATENCY_ALPHA
        )
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
        self._has_retiring = False
        self._views = _ReplicaViews()
        # effective_shapes() and max_batch(), until capabilities or membership change.
        self._limits: tuple[frozenset[str] | None, int | None] | None = None
        self._limits_of: tuple[object, object] | None = None
        self.set_replicas(config.replicas, now)

    def record_latency(self, per_image_s: float, size: float, now: float) -> None:
        """One completion's service seconds per image, of images `size` times 512x512."""
        self.latency.update(per_image_s)
        self.latency_updated_at = now
        if size > 0.0:
            self.unit_latency.update(per_image_s / size)
            self.plan_latency.update(per_image_s / size)

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
                state.on_change = self._replica_changed
            fresh[url] = state
        for url, state in self.replicas.items():
            if url not in fresh and state.in_flight > 0:
                state.retiring = True
                self._has_retiring = True
                fresh[url] = state
        self.replicas = fresh
        self._populated = self._populated or bool(wanted)

    def drop_retired(self) -> None:
        """Forget retiring replicas whose last request has finished."""
        if not self._has_retiring:
            return
        self._has_retiring = any(r.retiring for r in self.replicas.values())
        if any(r.retiring and r.in_flight == 0 for r in self.replicas.values()):
            self.replicas = {
                u: r for u, r in self.replicas.items() if not (r.retiring and r.in_flight == 0)
            }

    def _replica_changed(self, replica: ReplicaState, shapes: bool) -> None:
        self._views.stale.add(replica)
        if shapes:
            self._limits = None
        if replica.retiring:
            self._has_retiring = True

    def _shape_limits(self) -> tuple[frozenset[str] | None, int | None]:
        limits, of = self._limits, self._limits_of
        if limits is None or of is None or of[0] is not self.config or of[1] is not self.replicas:
            limits = self._limits = (self._compute_shapes(), self._compute_max_batch())
            self._limits_of = (self.config, self.replicas)
        return limits

    def effective_shapes(self) -> frozenset[str] | None:
        """Config shapes if given (an override); else the shapes every replica reports."""
        return self._shape_limits()[0]

    def max_batch(self) -> int | None:
        """The smallest batch any replica reports (None when none reports one)."""
        return self._shape_limits()[1]

    def _compute_shapes(self) -> frozenset[str] | None:
        if self.config.shapes is not None:
            return frozenset(self.config.shapes)
        reported = [r.shapes() for r in self.replicas.values() if r.capabilities is not None]
        if not reported or any(s is None for s in reported):
            return None
        common = frozenset.intersection(*[s for s in reported if s is not None])
        return common

    def _compute_max_batch(self) -> int | None:
        values = [b for r in self.replicas.values() if (b := r.max_batch()) is not None]
        return min(values) if values else None

    def estimated_latency_s(self, now: float, *, unit: bool = False) -> float:
        """The EWMA service time, relaxing toward the prior once it is stale.

        `unit`: per 512x512-equivalent image rather than per image served.
        """
        prior = self.config.expected_latency_seconds
        ewma = self.unit_latency if unit else self.latency
        value = ewma.value
        age = now - self.latency_updated_at
        if ewma.samples == 0 or age <= LATENCY_STALE_AFTER_S:
            return value
        keep = math.exp(-(age - LATENCY_STALE_AFTER_S) / LATENCY_RELAX_TAU_S)
        return prior + (value - prior) * keep

    def outstanding(self) -> int:
        return sum(max(r.in_flight, r.reported_queue_depth) for r in self.replicas.values())

    def capacity_state(self, now: float) -> CapacityState:
        return self._capacity_state(now, any(r.healthy(now) for r in self.replicas.values()))

    def _capacity_state(self, now: float, any_healthy: bool) -> CapacityState:
        if self.draining or not any_healthy:
            return CapacityState.UNAVAILABLE
        if now < self.constrained_until:
            return CapacityState.CONSTRAINED
        if now < self.recovering_until:
            return CapacityState.RECOVERING
        return CapacityState.AVAILABLE

    def error_rate(self, now: float) -> float:
        requests = self.requests.count(now)
        return min(1.0, self.errors.count(now) / requests) if requests else 0.0

    def view(
        self,
        now: float,
        *,
        panic: bool,
        weights: Mapping[str, float] | None = None,
        control_state: CapacityState | None = None,
    ) -> PoolView:
        """The pool as the scheduler sees it at `now`.

        `panic`: every replica that is not retiring counts as healthy. With
        `weights` (the control loop's, by pool name) the pool's weight is its
        entry there, 0.0 if absent. A `control_state` of RECOVERING turns an
        AVAILABLE pool RECOVERING.
        """
        views = self._views
        replicas = views.refresh(self, now, panic)
        if panic:
            # In panic no replica of a live pool is healthy, so capacity_state(now)
            # would say UNAVAILABLE: try it anyway, as CONSTRAINED.
            state = (
                CapacityState.CONSTRAINED
                if replicas and not self.draining
                else CapacityState.UNAVAILABLE
            )
        else:
            state = self._capacity_state(now, views.healthy > 0)
        if state is CapacityState.AVAILABLE and control_state is CapacityState.RECOVERING:
            state = CapacityState.RECOVERING
        shapes, max_batch = self._shape_limits()
        return PoolView(
            name=self.name,
            accelerator=self.config.accelerator,
            price_per_hour_usd=self.price_per_hour_usd,
            slots_per_replica=self.config.slots_per_replica,
            latency_s=self.estimated_latency_s(now),
            unit_latency_s=self.estimated_latency_s(now, unit=True),
            replicas=replicas,
            shapes=shapes,
            max_batch=max_batch,
            outstanding=views.outstanding,
            capacity_state=state,
            weight=self.weight if weights is None else weights.get(self.name, 0.0),
            error_rate=self.error_rate(now),
        )

    def replica_view(self, replica: ReplicaState, now: float, panic: bool) -> ReplicaView:
        return ReplicaView(
            url=replica.url,
            pool=self.name,
            healthy=(panic and not replica.retiring) or replica.healthy(now),
            in_flight=replica.in_flight,
            reported_queue_depth=replica.reported_queue_depth,
            slots=replica.slots,
            slow_start_factor=replica.slow_start_factor(now, self._slow_start_s),
        )

    def warm_until(self, replica: ReplicaState) -> float:
        """When the replica's view stops changing with time (its slow start ends)."""
        return replica.joined_at + max(self._slow_start_s, 0.0)


class _ReplicaViews:
    """One pool's replica views, kept between snapshots, with their totals.

    A full rebuild happens when the replica set, the panic flag or a time
    boundary (an ejection ending, a slow start ending) has moved; otherwise
    only stale replicas (a view field was set) and warming ones are rebuilt.
    """

    def __init__(self) -> None:
        self.stale: set[ReplicaState] = set()
        self.outstanding = 0  # sum of max(in_flight, reported_queue_depth)
        self.healthy = 0  # views with healthy=True
        self._of: dict[str, ReplicaState] | None = None  # the replica dict they were built from
        self._panic = False
        self._valid_until = -math.inf
        self._list: list[ReplicaView] = []
        self._index: dict[ReplicaState, int] = {}
        self._warming: set[ReplicaState] = set()  # rebuilt at every refresh
        self._tuple: tuple[ReplicaView, ...] = ()

    def refresh(self, pool: PoolState, now: float, panic: bool) -> tuple[ReplicaView, ...]:
        if (
            self._of is not pool.replicas
            or len(self._list) != len(pool.replicas)
            or panic != self._panic
            or now >= self._valid_until
        ):
            return self._rebuild(pool, now, panic)
        changed, warming = self.stale, self._warming
        if not changed and not warming:
            return self._tuple
        for replica in (*changed, *warming):
            i = self._index.get(replica)
            if i is None:
                continue  # a replica that has left the pool
            old = self._list[i]
            new = self._list[i] = pool.replica_view(replica, now, panic)
            self.outstanding += max(new.in_flight, new.reported_queue_depth) - max(
                old.in_flight, old.reported_queue_depth
            )
            self.healthy += new.healthy - old.healthy
            self._watch_time(pool, replica, now)
        changed.clear()
        self._tuple = tuple(self._list)
        return self._tuple

    def _watch_time(self, pool: PoolState, replica: ReplicaState, now: float) -> None:
        """Note when this replica's view next changes by itself: an ejection or slow start ends."""
        if replica.ejected(now):
            self._valid_until = min(self._valid_until, replica.ejected_until)
        warm_until = pool.warm_until(replica)
        if now < warm_until and replica not in self._warming:
            self._warming.add(replica)
            self._valid_until = min(self._valid_until, warm_until)

    def _rebuild(self, pool: PoolState, now: float, panic: bool) -> tuple[ReplicaView, ...]:
        self.stale.clear()
        self._of, self._panic = pool.replicas, panic
        self._list = [pool.replica_view(r, now, panic) for r in pool.replicas.values()]
        self._index = {r: i for i, r in enumerate(pool.replicas.values())}
        self.outstanding = sum(max(v.in_flight, v.reported_queue_depth) for v in self._list)
        self.healthy = sum(v.healthy for v in self._list)
        self._warming = set()
        self._valid_until = math.inf
        for replica in pool.replicas.values():
            replica.on_change = pool._replica_changed  # also one put in the dict by hand
            self._watch_time(pool, replica, now)
        self._tuple = tuple(self._list)
        return self._tuple


GroupKey = tuple[Priority, frozenset[str] | None]


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
        # Demand per (class, shape group) over PLAN_DEMAND_WINDOW_S: images and
        # 512x512-equivalent images. A group is the set of pools that can serve a
        # shape; None: every pool can.
        self.group_arrivals: dict[GroupKey, tuple[WindowCounter, WindowCounter]] = {}
        self._groups: dict[str, frozenset[str] | None] = {}
        # Published by the control loop, replaced whole (never mutated) so a
        # reader always sees one consistent tick: weights per class (and per
        # class of each shape group), and the controller's pool states.
        self.weights: Mapping[Priority, Mapping[str, float]] = {}
        self.group_weights: Mapping[frozenset[str], Mapping[Priority, Mapping[str, float]]] = {}
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

    def record_arrival(
        self, priority: Priority, images: int, shape: str | None = None, size: float = 1.0
    ) -> None:
        """Count an arrival of `images` of `shape` (`size` times 512x512 each)."""
        now = self.clock.now()
        self.arrivals.add(now, images)
        self.arrivals_by_class[priority].add(now, images)
        group = self.group_of(shape) if shape is not None else None
        key = (priority, group)
        counters = self.group_arrivals.get(key)
        if counters is None:
            window, span = PLAN_DEMAND_WINDOW_S, DEMAND_MIN_SPAN_S
            counters = (WindowCounter(window, span), WindowCounter(window, span))
            self.group_arrivals[key] = counters
        counters[0].add(now, images)
        counters[1].add(now, images * size)

    def group_of(self, shape: str) -> frozenset[str] | None:
        """The pools that can serve `shape`, or None when every pool can (cached per tick)."""
        if shape in self._groups:
            return self._groups[shape]
        serving = frozenset(
            p.name
            for p in self.pools.values()
            if (shapes := p.effective_shapes()) is None or shape in shapes
        )
        group = None if not serving or len(serving) == len(self.pools) else serving
        if len(self._groups) >= MAX_SHAPES_REMEMBERED:
            self._groups.clear()
        self._groups[shape] = group
        return group

    def group_demand(self) -> list[tuple[Priority, frozenset[str] | None, float, float]]:
        """(class, group, images/s, size) per group with recent arrivals; forgets the rest."""
        now = self.clock.now()
        demand = []
        for key, (images, units) in list(self.group_arrivals.items()):
            count = images.count(now)
            if count <= 0:
                del self.group_arrivals[key]
                continue
            demand.append((key[0], key[1], images.rate(now), units.count(now) / count))
        return demand

    def forget_shapes(self) -> None:
        """Forget which pools serve which shape, so that capabilities learned since apply."""
        self._groups.clear()

    def weights_for(
        self, priority: Priority | None, shape: str | None = None
    ) -> Mapping[str, float] | None:
        """The control loop's weights for a class and shape; None until it has published."""
        if priority is None:
            return None
        if shape is not None and self.group_weights:
            group = self.group_of(shape)
            if group is not None:
                per_class = self.group_weights.get(group)
                if per_class is not None and priority in per_class:
                    return per_class[priority]
        return self.weights.get(priority)

    def snapshot(self, priority: Priority | None = None, shape: str | None = None) -> Snapshot:
        """A frozen view of every pool for one scheduling decision.

        With a `priority`, pools carry the control loop's weights for that
        class, and with a `shape` those of the shape's pool group (None until
        the loop has published).
        """
        now = self.clock.now()
        panic = self.in_panic(now)
        weights = self.weights_for(priority, shape)
        control = self.control_states
        views = []
        for pool in self.pools.values():
            pool.drop_retired()
            views.append(
                pool.view(now, panic=panic, weights=weights, control_state=control.get(pool.name))
            )
        return Snapshot(
            pools=tuple(views),
            arrival_rate_per_s=self.arrivals.rate(now),
            target_utilization=self.settings.target_utilization,
        )
