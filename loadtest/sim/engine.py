"""The discrete-event core: one policy, one scenario, on a virtual clock.

The gateway's own parts run unchanged on a `ManualClock`: a `PoolRegistry`
built from `settings_from_dict`, the `HealthTracker`, the `RetryBudget`, the
`ControlLoop` (ticking every `control_interval_s`) and `build_policy`.
Simulated replicas stand in for the model servers, and the engine feeds the
registry exactly the fields the router feeds: `requests`, in-flight counts,
`latency.update`, `latency_updated_at`, `completions`, the reported queue
depth, `record_success` / `record_failure`, and `record_arrival`.

The request path mirrors `gateway.router.Router`: batch admission, then a
decision over a fresh snapshot, then an attempt; a connect error, a capacity
answer (429) or a 503 moves the request to another pool, at most
`max_attempts` in all and within the retry budget.

Also every second: billing, probes (every `probe_interval_s`), discovery
(every `discovery_interval_s`: the registry learns the cluster's READY
replicas), and the autoscaler (every `period_s`), whose orders the `Cluster`
carries out. Events sit in one heap of
(time, sequence, kind, payload); arrivals come from a pre-drawn list merged
with the heap, so the heap holds only completions, timers and scenario events.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from typing import Any

from backends.clock import ManualClock
from backends.engines.base import GenerationRequest
from gateway.admission import RetryBudget
from gateway.control.loop import OPTIMIZED_MODES, ControlLoop
from gateway.health import Failure, HealthTracker
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry, PoolState, ReplicaState
from gateway.scheduling.types import Priority, RequestProfile
from loadtest.sim.autoscaler import Autoscaler
from loadtest.sim.baselines import (
    PAPER_ALB_WEIGHTS,
    GatewayPolicy,
    LatencyEwmaPolicy,
    SimPolicy,
    StaticAlbPolicy,
)
from loadtest.sim.cluster import Cluster
from loadtest.sim.recorder import Recorder
from loadtest.sim.scenario import Scenario
from loadtest.sim.workload import Arrival
from loadtest.sim.world import Job, ReplicaPhase, Request

GATEWAY_POLICIES = ("auto", "cost", "capacity", "latency", "round_robin", "least_request")
BASELINES = ("latency_ewma", "static_alb")
POLICIES = ("auto", "cost", "capacity", "round_robin", "least_request", *BASELINES)
# Policies whose scaler also follows the control loop's plan (ours).
PLAN_SCALED = OPTIMIZED_MODES

_DONE, _READY, _TICK, _EVENT = 0, 1, 2, 3


class PolicyRun:
    """One policy through one scenario; `run()` returns the recorder."""

    def __init__(
        self,
        scenario: Scenario,
        policy: str,
        seed: int,
        arrivals: Sequence[Arrival],
        duration_s: float | None = None,
    ) -> None:
        if policy not in GATEWAY_POLICIES + BASELINES:
            valid = ", ".join(GATEWAY_POLICIES + BASELINES)
            raise ValueError(f"unknown policy {policy!r}; valid: {valid}")
        self.scenario = scenario
        self.policy_name = policy
        self.duration_s = scenario.duration_s if duration_s is None else duration_s
        self.arrivals = arrivals
        self.clock = ManualClock(0.0)
        mode = policy if policy in GATEWAY_POLICIES else "round_robin"
        self.settings = scenario.gateway_settings(mode, seed)
        self.registry = PoolRegistry(self.settings, self.clock)
        self.health = HealthTracker(self.registry, self.settings, self.clock)
        self.budget = RetryBudget(
            self.settings.retry_budget_ratio,
            self.settings.retry_budget_min_per_s,
            window_s=self.settings.rate_window_s,
            clock=self.clock,
        )
        self.rng = random.Random(seed)
        self.loop: ControlLoop | None = None
        if policy in GATEWAY_POLICIES:
            metrics = GatewayMetrics(self.registry.snapshot, lambda: mode)
            self.loop = ControlLoop(self.registry, self.settings, self.clock, metrics)
        self.policy = self._make_policy(policy)
        self._heap: list[tuple[float, int, int, Any]] = []
        self.scaler = Autoscaler(scenario.autoscaler, scenario.pools)
        self.cluster = Cluster(
            scenario,
            seed,
            scaler=self.scaler,
            registry=self.registry,
            schedule_ready=lambda at, replica: self._push(at, _READY, replica),
            fail_over=self._fail_over,
        )
        self.world = self.cluster.pools
        self.replicas = self.cluster.replicas
        self.recorder = Recorder(list(self.world), self.duration_s, scenario.bucket_s)
        self.recorder.faults = self.cluster.faults
        self._seq = 0
        self._profiles = self._request_kinds()
        self._next_id = 0
        slo = scenario.slo
        self._slo = {
            Priority.INTERACTIVE: slo.interactive_seconds,
            Priority.BATCH: slo.batch_seconds,
        }

    # set-up ----------------------------------------------------------------------------------

    def _make_policy(self, name: str) -> SimPolicy:
        if name == "latency_ewma":
            return LatencyEwmaPolicy(self.rng, self.clock)
        if name == "static_alb":
            weights = {
                p.name: p.alb_weight
                if p.alb_weight is not None
                else PAPER_ALB_WEIGHTS.get(p.name, 1.0)
                for p in self.scenario.pools
            }
            return StaticAlbPolicy(weights)
        loop = self.loop
        if name == "auto" and loop is not None:
            return GatewayPolicy(name, self.rng, lambda: loop.status.effective_mode)
        return GatewayPolicy(name, self.rng, lambda: name)

    def _request_kinds(self) -> dict[tuple[bool, int], tuple[RequestProfile, GenerationRequest]]:
        kinds = {}
        spec = self.scenario.arrivals
        for batch in (False, True):
            priority = Priority.BATCH if batch else Priority.INTERACTIVE
            slo = (
                self.scenario.slo.batch_seconds if batch else self.scenario.slo.interactive_seconds
            )
            for i, share in enumerate(spec.shapes):
                width, height = share.size
                profile = RequestProfile(
                    width=width,
                    height=height,
                    n=spec.images_per_request,
                    priority=priority,
                    slo_s=slo,
                )
                gen = GenerationRequest(
                    prompt="sim", width=width, height=height, n=spec.images_per_request
                )
                kinds[(batch, i)] = (profile, gen)
        return kinds

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    # the loop --------------------------------------------------------------------------------

    def run(self) -> Recorder:
        for event in self.scenario.events:
            if event.at_s < self.duration_s:
                self._push(event.at_s, _EVENT, event)
        self._push(0.0, _TICK, 0)
        heap = self._heap
        arrivals = self.arrivals
        clock = self.clock
        count = len(arrivals)
        i = 0
        while True:
            next_arrival = arrivals[i].t_s if i < count else math.inf
            if heap and heap[0][0] <= next_arrival:
                at, _, kind, payload = heapq.heappop(heap)
                clock.advance(at - clock.now())
                if kind == _DONE:
                    self._done(payload)
                elif kind == _TICK:
                    self._tick(payload)
                elif kind == _READY:
                    self.cluster.ready(payload)
                else:
                    self.cluster.apply(payload, at)
            elif i < count:
                arrival = arrivals[i]
                i += 1
                clock.advance(arrival.t_s - clock.now())
                self._arrive(arrival)
            else:
                break
        return self.recorder

    # requests --------------------------------------------------------------------------------

    def _arrive(self, arrival: Arrival) -> None:
        profile, gen = self._profiles[(arrival.batch, arrival.shape)]
        priority = profile.priority
        self.recorder.classes[priority].arrivals += 1
        self.registry.record_arrival(priority, profile.n, profile.shape, profile.size)
        request = Request(self._next_id, arrival.t_s, profile, gen)
        self._next_id += 1
        if priority is Priority.BATCH and self.loop is not None:
            admit = self.loop.status.batch_admit_fraction
            if self.rng.random() >= admit:
                self.recorder.unserved(
                    priority, arrival.t_s, shed=True, capacity_sufficed=False, why=["admission"]
                )
                return
        self.budget.start_request()
        self._route(request)

    def _route(self, request: Request) -> None:
        """Attempts until one is accepted, or the request ends unserved."""
        max_attempts = self.settings.max_attempts
        overload_factor = self.settings.overload_slo_factor
        registry = self.registry
        profile = request.profile
        while request.counted < max_attempts:
            if request.counted > 0 and not self.budget.try_retry():
                break
            decision = self.policy.decide(
                profile,
                registry.snapshot(profile.priority, profile.shape),
                frozenset(request.excluded),
            )
            if decision is None:
                break
            if (
                not decision.meets_slo
                and decision.replica_completion_s > overload_factor * profile.slo_s
            ):
                # As the router does: overloaded everywhere, refuse rather than queue late work.
                request.failures.append(Failure.CAPACITY.value)
                request.excluded.append("overload")
                break
            pool = registry.pools[decision.pool]
            state = pool.replicas[decision.replica]
            request.tries += 1
            failure = self._dispatch(request, pool, state)
            if failure is None:
                return
            if failure is not Failure.UNSUPPORTED:
                request.counted += 1
            request.failures.append(failure.value)
            request.excluded.append(pool.name)
        self._unserved(request)

    def _dispatch(self, request: Request, pool: PoolState, state: ReplicaState) -> Failure | None:
        now = self.clock.now()
        pool.requests.add(now)
        self.recorder.attempt(pool.name, now)
        replica = self.replicas.get(state.url)
        if replica is None or replica.phase is ReplicaPhase.GONE:
            return self._fail(state, Failure.CONNECT)
        if replica.phase is ReplicaPhase.PROVISIONING:
            return self._fail(state, Failure.NOT_READY)
        world = replica.pool
        if not world.spec.supports(request.profile.shape):
            return self._fail(state, Failure.UNSUPPORTED)
        if world.capacity_errors:
            return self._fail(state, Failure.CAPACITY, replica.retry_after_s())
        job = Job(request, replica, state, now)
        if replica.busy < world.spec.slots:
            self._start(job, now)
        elif len(replica.queue) < world.spec.max_queue:
            replica.queue.append(job)
        else:
            return self._fail(state, Failure.CAPACITY, replica.retry_after_s())
        state.in_flight += 1
        return None

    def _fail(self, state: ReplicaState, failure: Failure, retry_after_s: int = 0) -> Failure:
        self.health.record_failure(state, failure, "simulated")
        if failure is Failure.CAPACITY and retry_after_s:
            self.health.note_retry_after(state, retry_after_s)
        self.policy.on_failure(state.pool, failure, self.clock.now())
        return failure

    def _start(self, job: Job, now: float) -> None:
        replica = job.replica
        replica.busy += 1
        replica.running.append(job)
        job.service_s = replica.pool.service_time_s(job.request.gen)
        self._push(now + job.service_s, _DONE, job)

    def _done(self, job: Job) -> None:
        if job.cancelled:
            return
        now = self.clock.now()
        replica = job.replica
        depth = replica.depth
        replica.running.remove(job)
        replica.busy -= 1
        if replica.queue:
            self._start(replica.next_job(), now)
        elif replica.phase is ReplicaPhase.DRAINING and replica.busy == 0:
            self.cluster.drained(replica)
        # What the router records on a 200: X-Inference-Seconds per image, X-Queue-Depth.
        request = job.request
        state = job.state
        pool = self.registry.pools[state.pool]
        n = request.profile.n
        state.in_flight -= 1
        pool.record_latency(job.service_s / n, request.area, now)
        pool.completions.add(now, n)
        state.reported_queue_depth = depth
        self.health.record_success(state)
        self.policy.on_success(state.pool, now - job.dispatched_s, now)
        self.budget.end_request()
        if request.tries > 1:
            self.recorder.retried += 1
        priority = request.profile.priority
        self.recorder.served(
            priority, state.pool, n, now - request.arrived_s, self._slo[priority], now
        )

    def _unserved(self, request: Request) -> None:
        """Mirrors `Router._no_answer`: batch work turned away for capacity is shed."""
        self.budget.end_request()
        if request.tries > 1:
            self.recorder.retried += 1
        priority = request.profile.priority
        upstream_only = bool(request.failures) and set(request.failures) <= {
            Failure.SERVER_ERROR.value,
            Failure.TIMEOUT.value,
        }
        shed = priority is Priority.BATCH and not upstream_only
        sufficed = False
        if not shed:
            sufficed = self.cluster.capacity_suffices(request.profile.shape, self.clock.now())
        self.recorder.unserved(
            priority,
            self.clock.now(),
            shed=shed,
            capacity_sufficed=sufficed,
            why=[
                f"{pool}:{failure}"
                for pool, failure in zip(request.excluded, request.failures, strict=True)
            ]
            or ["no pool"],
        )

    def _fail_over(self, jobs: list[Job]) -> None:
        """Work lost with its replica: a dropped connection, then the next attempt."""
        for job in jobs:
            job.state.in_flight -= 1
        for job in jobs:
            request = job.request
            self._fail(job.state, Failure.CONNECT)
            request.counted += 1
            request.failures.append(Failure.CONNECT.value)
            request.excluded.append(job.state.pool)
            self._route(request)

    # once a second ---------------------------------------------------------------------------

    def _tick(self, second: int) -> None:
        now = float(second)
        settings = self.settings
        recorder = self.recorder
        for pool in self.world.values():
            billed = len(pool.replicas)
            ready = pool.count(ReplicaPhase.READY)
            recorder.second(now, pool.name, billed, ready, pool.price_per_hour_usd)
            busy = sum(r.busy for r in pool.replicas.values() if r.phase is ReplicaPhase.READY)
            self.scaler.observe(pool.name, now, busy, ready * pool.spec.slots)
        if self.loop is not None and second % _every(settings.control_interval_s) == 0:
            self.loop.tick()
            recorder.mode(now, self.loop.status.effective_mode)
        if second % _every(settings.probe_interval_s) == 0:
            self._probe()
        if second % _every(settings.discovery_interval_s) == 0:
            self._discover()
        if second % _every(self.scenario.autoscaler.period_s) == 0:
            self._scale(now)
        self.policy.on_tick(now, self.scaler.events)
        if isinstance(self.policy, StaticAlbPolicy):
            recorder.mode(now, self.policy.mode)
        if second + 1 < self.duration_s:
            self._push(second + 1.0, _TICK, second + 1)

    def _probe(self) -> None:
        for state in list(self.registry.replicas()):
            replica = self.replicas.get(state.url)
            ready = replica is not None and replica.phase in (
                ReplicaPhase.READY,
                ReplicaPhase.DRAINING,
            )
            self.health.record_probe(state, ready, replica.depth if replica is not None else None)

    def _discover(self) -> None:
        now = self.clock.now()
        for pool in self.world.values():
            urls = pool.ready_urls()
            state = self.registry.get(pool.name)
            if list(state.replicas) != urls:
                state.set_replicas(urls, now)
            for replica in pool.in_phase(ReplicaPhase.DRAINING):
                if replica.busy == 0 and not replica.queue:
                    self.cluster.drained(replica)

    def _scale(self, now: float) -> None:
        plan = None
        if self.policy_name in PLAN_SCALED and self.loop is not None:
            status = self.loop.status
            # What the gateway exports: each pool's unrounded share (KEDA sums and rounds).
            plan = status.plan.replicas_share if status.plan is not None else None
        for pool in self.world.values():
            ready = pool.count(ReplicaPhase.READY)
            live = pool.count(ReplicaPhase.READY, ReplicaPhase.PROVISIONING)
            if plan is None:
                wanted = self.scaler.utilization_recommendation(pool.name, ready, live)
            else:
                wanted = self.scaler.recommendation(pool.name, plan[pool.name], live)
            self.scaler.apply(pool.name, now, wanted, pool.max_now)
            self.cluster.reconcile(pool, now)


def _every(interval_s: float) -> int:
    return max(1, round(interval_s))
