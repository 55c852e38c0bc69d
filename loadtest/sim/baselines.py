"""What the simulator routes with: the gateway's own policies and two outside baselines.

Every policy answers `decide(request, snapshot, exclude)` over the registry's
snapshot, like `gateway.scheduling.policy.Policy`, and hears about outcomes:

- `GatewayPolicy`: `build_policy` unchanged; for `auto` the control loop's
  effective mode picks the policy, as `gateway.app.Gateway.policy` does.
- `LatencyEwmaPolicy` (`latency_ewma`): LiteLLM's latency-based router. The
  deployment with the lowest mean of its last 10 response times wins; an
  untried one counts as 0 (so new deployments get herded); a 429 cools a
  deployment down for 5 s, as do 3 other failures within a minute; with every
  deployment cooled down the request fails at once.
- `StaticAlbPolicy` (`static_alb`): the paper's sample deployment. Static ALB
  weights (inf2 40 / trn1 20 / g5-cuda 15 / g5-triton 15 / g6 10) in cost
  mode; a checker polls every 300 s for Karpenter "insufficient capacity"
  events and, once it finds one, switches to equal weights for good (nothing
  checks that the cheap capacity came back). Round-robin over the targets of
  the chosen target group.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from backends.clock import Clock
from gateway.health import Failure
from gateway.scheduling.pickers import RoundRobin, SmoothWeightedRoundRobin
from gateway.scheduling.policy import Policy, build_policy
from gateway.scheduling.types import Decision, PoolView, ReplicaView, RequestProfile, Snapshot
from loadtest.sim.autoscaler import InsufficientCapacity

LITELLM_WINDOW = 10  # latencies remembered per deployment
LITELLM_COOLDOWN_S = 5.0
LITELLM_ALLOWED_FAILS = 3  # other failures per minute before a cooldown
ALB_POLL_S = 300.0  # the sample code's CloudWatch poll


class SimPolicy(Protocol):
    name: str

    def decide(
        self, request: RequestProfile, snapshot: Snapshot, exclude: frozenset[str]
    ) -> Decision | None: ...

    def on_success(self, pool: str, response_s: float, now: float) -> None: ...

    def on_failure(self, pool: str, failure: Failure, now: float) -> None: ...

    def on_tick(self, now: float, shortfalls: Sequence[InsufficientCapacity]) -> None: ...


class GatewayPolicy:
    """`build_policy` by name; `current` names the policy in force for each decision."""

    def __init__(self, name: str, rng: random.Random, current: Callable[[], str]) -> None:
        self.name = name
        self._rng = rng
        self._current = current
        self._policies: dict[str, Policy] = {}

    def decide(
        self, request: RequestProfile, snapshot: Snapshot, exclude: frozenset[str]
    ) -> Decision | None:
        name = self._current()
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = build_policy(name, self._rng)
        return policy.decide(request, snapshot, exclude)

    def on_success(self, pool: str, response_s: float, now: float) -> None:
        return None

    def on_failure(self, pool: str, failure: Failure, now: float) -> None:
        return None

    def on_tick(self, now: float, shortfalls: Sequence[InsufficientCapacity]) -> None:
        return None


def _candidates(
    request: RequestProfile, snapshot: Snapshot, exclude: frozenset[str]
) -> list[PoolView]:
    """Pools serving the shape with a ready target (a Service or target group only has those)."""
    shape, n = request.shape, request.n
    return [
        p
        for p in snapshot.pools
        if p.name not in exclude and p.supports(shape, n) and any(r.healthy for r in p.replicas)
    ]


def _decision(pool: PoolView, replica: ReplicaView, request: RequestProfile) -> Decision:
    return Decision(
        pool=pool.name,
        replica=replica.url,
        predicted_completion_s=pool.completion_s(request),
        cost_per_image_usd=pool.cost_per_image_usd,
        replica_completion_s=pool.replica_completion_s(replica, request),
    )


class LatencyEwmaPolicy:
    """LiteLLM's latency-based routing (see the module docstring)."""

    name = "latency_ewma"

    def __init__(self, rng: random.Random, clock: Clock) -> None:
        self._rng = rng
        self._clock = clock
        self._latencies: dict[str, collections.deque[float]] = {}
        self._cooldown_until: dict[str, float] = {}
        self._fails: dict[str, collections.deque[float]] = {}

    def _mean(self, pool: str) -> float:
        window = self._latencies.get(pool)
        return sum(window) / len(window) if window else 0.0  # untried counts as 0

    def decide(
        self, request: RequestProfile, snapshot: Snapshot, exclude: frozenset[str]
    ) -> Decision | None:
        now = self._clock.now()
        pools = [
            p
            for p in _candidates(request, snapshot, exclude)
            if self._cooldown_until.get(p.name, -1.0) <= now
        ]
        if not pools:
            return None
        self._rng.shuffle(pools)
        pool = min(pools, key=lambda p: self._mean(p.name))
        # Behind each deployment a Kubernetes Service picks a ready pod at random.
        healthy = [r for r in pool.replicas if r.healthy]
        return _decision(pool, healthy[self._rng.randrange(len(healthy))], request)

    def on_success(self, pool: str, response_s: float, now: float) -> None:
        window = self._latencies.get(pool)
        if window is None:
            window = self._latencies[pool] = collections.deque(maxlen=LITELLM_WINDOW)
        window.append(response_s)

    def on_failure(self, pool: str, failure: Failure, now: float) -> None:
        if failure is Failure.CAPACITY:
            self._cooldown_until[pool] = now + LITELLM_COOLDOWN_S
            return
        fails = self._fails.setdefault(pool, collections.deque())
        fails.append(now)
        while fails and fails[0] < now - 60.0:
            fails.popleft()
        if len(fails) >= LITELLM_ALLOWED_FAILS:
            self._cooldown_until[pool] = now + LITELLM_COOLDOWN_S

    def on_tick(self, now: float, shortfalls: Sequence[InsufficientCapacity]) -> None:
        return None


# arXiv 2503.20074 sample deployment: cost-mode ALB weights per pool.
PAPER_ALB_WEIGHTS: Mapping[str, float] = {
    "inf2": 40.0,
    "trn1": 20.0,
    "g5-cuda": 15.0,
    "g5-triton": 15.0,
    "g6": 10.0,
}


class StaticAlbPolicy:
    """The paper's static ALB weights and 300 s capacity checker (see the module docstring)."""

    name = "static_alb"

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.cost_weights = dict(weights)
        self.mode = "cost"
        self.switched_at: float | None = None
        self._next_poll = ALB_POLL_S
        self._seen = 0
        self._picker = SmoothWeightedRoundRobin()
        self._targets: dict[str, RoundRobin] = {}

    def decide(
        self, request: RequestProfile, snapshot: Snapshot, exclude: frozenset[str]
    ) -> Decision | None:
        pools = _candidates(request, snapshot, exclude)
        if not pools:
            return None
        if self.mode == "cost":
            weights = {p.name: self.cost_weights.get(p.name, 0.0) for p in pools}
        else:
            weights = {p.name: 1.0 for p in pools}
        chosen = self._picker.pick(weights)
        pool = next(p for p in pools if p.name == chosen)
        healthy = {r.url: r for r in pool.replicas if r.healthy}
        cursor = self._targets.setdefault(pool.name, RoundRobin())
        return _decision(pool, healthy[cursor.pick(list(healthy))], request)

    def on_success(self, pool: str, response_s: float, now: float) -> None:
        return None

    def on_failure(self, pool: str, failure: Failure, now: float) -> None:
        return None

    def on_tick(self, now: float, shortfalls: Sequence[InsufficientCapacity]) -> None:
        if now < self._next_poll:
            return
        self._next_poll += ALB_POLL_S
        fresh = shortfalls[self._seen :]
        self._seen = len(shortfalls)
        if fresh and self.mode == "cost":
            self.mode = "capacity"
            self.switched_at = now
