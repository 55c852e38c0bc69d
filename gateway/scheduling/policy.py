"""Named routing policies: filters, then scorers, then pickers, over one frozen snapshot.

`Policy.decide` is the whole per-request decision. It is synchronous, reads no
clock and does no I/O; its only state is the pickers' (smooth round-robin
current weights, round-robin cursors, a seeded random generator). Cost is
O(pools + replicas) apart from the cost weighting's sort of pools; replicas
are never sorted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType

from gateway.scheduling.filters import (
    CapacityFilter,
    Filter,
    HealthFilter,
    ShapeFilter,
    SloFilter,
)
from gateway.scheduling.pickers import PowerOfTwoChoices, RoundRobin, SmoothWeightedRoundRobin
from gateway.scheduling.scorers import LatencyScorer, QueueScorer, Scorer
from gateway.scheduling.types import (
    CapacityState,
    Decision,
    PoolView,
    ReplicaView,
    RequestProfile,
    Snapshot,
)
from gateway.scheduling.weights import shares, static_weights

POLICY_NAMES = ("cost", "capacity", "latency", "round_robin", "least_request")

# Multipliers on a pool's effective weight (or rank, or replica attractiveness)
# by capacity state. A RECOVERING pool came back but is not yet trusted at full
# weight (0.5). A CONSTRAINED pool is answering with capacity errors; the named
# policies drop it with `CapacityFilter` while any other pool is left, so 0.1
# (a probe's worth of traffic) matters only to policies composed without it.
STATE_WEIGHT_FACTORS: Mapping[CapacityState, float] = MappingProxyType(
    {
        CapacityState.AVAILABLE: 1.0,
        CapacityState.CONSTRAINED: 0.1,
        CapacityState.RECOVERING: 0.5,
        CapacityState.UNAVAILABLE: 0.0,
    }
)


class PoolSelection(StrEnum):
    """How a policy chooses among candidate pools."""

    WEIGHTED = "weighted"  # smooth WRR over weight x combined score x state factor
    BEST = "best"  # argmax of combined score x state factor; random among ties
    NONE = "none"  # ignore pools: power of two choices across all their replicas


class ReplicaSelection(StrEnum):
    """How a policy chooses a replica inside the chosen pool."""

    POWER_OF_TWO = "power_of_two"
    ROUND_ROBIN = "round_robin"


class Policy:
    """A routing policy composed of stages.

    - `filters` are hard constraints (shape, health): a pool failing one is
      never chosen.
    - `objectives` are soft ones (the SLO): when they leave no pool, the policy
      serves best effort from the filter survivors and sets `meets_slo=False`.
    - `scorers` are (scorer, weight > 0) pairs; the combined score is their
      weighted mean (1.0 with no scorers).
    - `weighting` names the `static_weights` strategy used when any candidate
      lacks a control-loop weight (`PoolView.weight is None`).

    `rng` seeds every random choice, so a seeded policy fed the same snapshots
    makes the same decisions. Raises ValueError on a non-positive or
    non-finite scorer weight, or two scorers sharing a name.
    """

    def __init__(
        self,
        name: str,
        *,
        rng: random.Random,
        filters: Sequence[Filter] = (),
        objectives: Sequence[Filter] = (),
        scorers: Sequence[tuple[Scorer, float]] = (),
        weighting: str | None = None,
        pool_selection: PoolSelection = PoolSelection.WEIGHTED,
        replica_selection: ReplicaSelection = ReplicaSelection.POWER_OF_TWO,
    ) -> None:
        names = [scorer.name for scorer, _ in scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorer names must be unique, got {names}")
        for scorer, weight in scorers:
            if not (math.isfinite(weight) and weight > 0.0):
                raise ValueError(f"scorer {scorer.name!r} needs a positive weight, got {weight}")
        self.name = name
        self.filters = tuple(filters)
        self.objectives = tuple(objectives)
        self.scorers = tuple(scorers)
        self.weighting = weighting if weighting is not None else name
        self.pool_selection = pool_selection
        self.replica_selection = replica_selection
        self._rng = rng
        self._pool_picker = SmoothWeightedRoundRobin()
        self._replica_picker = PowerOfTwoChoices(rng)
        # One cursor per pool, so rotation inside one pool is not skewed by
        # picks in others; bounded by the number of pool names.
        self._round_robins: dict[str, RoundRobin] = {}

    def decide(
        self,
        request: RequestProfile,
        snapshot: Snapshot,
        exclude: frozenset[str] = frozenset(),
    ) -> Decision | None:
        """Chooses a pool and replica for `request`, or None when no pool can take it.

        `exclude` names pools that already failed this request; they are not
        considered. The decision's `scores` hold the chosen pool's score per
        scorer name, `combined`, and (weighted selection) `weight`, its share
        of the effective weights; for `PoolSelection.NONE`, `load`.
        """
        pools: list[PoolView] = [p for p in snapshot.pools if p.name not in exclude]
        for hard in self.filters:
            pools = hard(request, pools)
        # A decision names a replica, so this holds whatever filters a policy has.
        pools = [p for p in pools if any(r.healthy for r in p.replicas)]
        if not pools:
            return None
        preferred = pools
        for soft in self.objectives:
            preferred = soft(request, preferred)
        meets_slo = bool(preferred)
        candidates = preferred if meets_slo else pools

        if self.pool_selection is PoolSelection.NONE:
            return self._least_request(request, candidates, meets_slo)

        combined, per_scorer = self._combined_scores(request, candidates)
        scores: dict[str, float] = {}
        if self.pool_selection is PoolSelection.BEST:
            pool = self._best(candidates, combined)
        elif not meets_slo:
            pool = self._soonest(request, candidates)
        else:
            pool, share = self._weighted(candidates, combined, snapshot)
            scores["weight"] = share
        scores.update({name: values.get(pool.name, 0.0) for name, values in per_scorer.items()})
        scores["combined"] = combined[pool.name]
        replica = self._pick_replica(pool)
        return Decision(
            pool=pool.name,
            replica=replica.url,
            predicted_completion_s=pool.completion_s(request),
            cost_per_image_usd=pool.cost_per_image_usd,
            replica_completion_s=pool.replica_completion_s(replica, request),
            meets_slo=meets_slo,
            scores=scores,
        )

    def _combined_scores(
        self, request: RequestProfile, candidates: Sequence[PoolView]
    ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        per_scorer = {scorer.name: scorer.score(request, candidates) for scorer, _ in self.scorers}
        total_weight = math.fsum(weight for _, weight in self.scorers)
        combined: dict[str, float] = {}
        for pool in candidates:
            if not self.scorers:
                combined[pool.name] = 1.0
                continue
            mean = (
                math.fsum(
                    weight * _clamp_score(per_scorer[scorer.name].get(pool.name, 0.0))
                    for scorer, weight in self.scorers
                )
                / total_weight
            )
            combined[pool.name] = mean
        return combined, per_scorer

    def _best(self, candidates: Sequence[PoolView], combined: Mapping[str, float]) -> PoolView:
        # A seeded shuffle then max() equals a shuffle then a stable sort by
        # rank, taking the head: ties go to a random pool instead of the first
        # by name, so equal pools are not herded onto one of them.
        order = list(candidates)
        self._rng.shuffle(order)
        return max(order, key=lambda p: combined[p.name] * _state_factor(p))

    def _weighted(
        self,
        candidates: Sequence[PoolView],
        combined: Mapping[str, float],
        snapshot: Snapshot,
    ) -> tuple[PoolView, float]:
        if all(p.weight is not None for p in candidates):
            base = shares({p.name: p.weight if p.weight is not None else 0.0 for p in candidates})
        else:
            base = static_weights(self.weighting, candidates, snapshot)
        effective = {
            p.name: base.get(p.name, 0.0) * combined[p.name] * _state_factor(p) for p in candidates
        }
        chosen = self._pool_picker.pick(effective)
        by_name = {p.name: p for p in candidates}
        return by_name[chosen], shares(effective)[chosen]

    def _soonest(self, request: RequestProfile, candidates: Sequence[PoolView]) -> PoolView:
        """Best effort: the pool expected to finish the request first.

        Weights place demand where it meets its objective; when no pool can,
        they would pile the overflow onto the pools they favour. Each decision
        adds to the chosen pool's queue, so the next one sees it: overflow
        spreads as the queues even out. A CONSTRAINED pool's time counts ten
        times, as its weight would count a tenth.
        """
        order = list(candidates)
        self._rng.shuffle(order)  # ties go to a random pool
        return min(order, key=lambda p: p.completion_s(request) / max(_state_factor(p), 1e-9))

    def _pick_replica(self, pool: PoolView) -> ReplicaView:
        if self.replica_selection is ReplicaSelection.ROUND_ROBIN:
            healthy = {r.url: r for r in pool.replicas if r.healthy}
            cursor = self._round_robins.setdefault(pool.name, RoundRobin())
            return healthy[cursor.pick(list(healthy))]
        return self._replica_picker.pick(pool.replicas)

    def _least_request(
        self, request: RequestProfile, candidates: Sequence[PoolView], meets_slo: bool
    ) -> Decision:
        factors = {p.name: _state_factor(p) for p in candidates}

        def load(replica: ReplicaView) -> float:
            # Dividing by the state factor makes a CONSTRAINED pool's replicas
            # look ten times as loaded: one that fails fast with capacity errors
            # holds few requests and would otherwise attract the most traffic.
            return replica.load / max(factors[replica.pool], 1e-9)

        replicas = [r for p in candidates for r in p.replicas if r.healthy]
        replica = self._replica_picker.pick(replicas, load=load)
        pool = next(p for p in candidates if p.name == replica.pool)
        return Decision(
            pool=pool.name,
            replica=replica.url,
            predicted_completion_s=pool.completion_s(request),
            cost_per_image_usd=pool.cost_per_image_usd,
            replica_completion_s=pool.replica_completion_s(replica, request),
            meets_slo=meets_slo,
            scores={"load": replica.load},
        )


def _state_factor(pool: PoolView) -> float:
    return STATE_WEIGHT_FACTORS.get(pool.capacity_state, 1.0)


def _clamp_score(score: float) -> float:
    return min(max(score, 0.0), 1.0) if not math.isnan(score) else 0.0


def build_policy(name: str, rng: random.Random) -> Policy:
    """Builds one of `POLICY_NAMES`; raises ValueError naming the valid ones otherwise.

    Every policy filters on shape, health and capacity (a CONSTRAINED pool is
    a candidate only when every pool is) and prefers pools meeting the SLO.
    - `cost`: cheapest-first weights; queue score pulls traffic off a pool whose
      backlog builds faster than the weights (about 1 s old) reflect.
    - `capacity`: headroom weights, with the same queue score.
    - `latency`: the best mean of latency and queue scores.
    - `round_robin`: equal weights, round-robin over replicas.
    - `least_request`: pools ignored; power of two choices on load over every
      healthy replica of the candidate pools (Envoy's and Ray Serve's default).
    """
    filters: tuple[Filter, ...] = (ShapeFilter(), HealthFilter(), CapacityFilter())
    objectives: tuple[Filter, ...] = (SloFilter(),)
    if name in ("cost", "capacity"):
        return Policy(
            name, rng=rng, filters=filters, objectives=objectives, scorers=[(QueueScorer(), 1.0)]
        )
    if name == "latency":
        return Policy(
            name,
            rng=rng,
            filters=filters,
            objectives=objectives,
            scorers=[(LatencyScorer(), 1.0), (QueueScorer(), 1.0)],
            pool_selection=PoolSelection.BEST,
        )
    if name == "round_robin":
        return Policy(
            name,
            rng=rng,
            filters=filters,
            objectives=objectives,
            replica_selection=ReplicaSelection.ROUND_ROBIN,
        )
    if name == "least_request":
        return Policy(
            name,
            rng=rng,
            filters=filters,
            objectives=objectives,
            pool_selection=PoolSelection.NONE,
        )
    raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(POLICY_NAMES)}")
