"""Policies end to end over snapshots: filters, fallbacks, weights, pickers."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from gateway.scheduling.filters import CapacityFilter, HealthFilter, ShapeFilter
from gateway.scheduling.policy import (
    POLICY_NAMES,
    Policy,
    PoolSelection,
    ReplicaSelection,
    build_policy,
)
from gateway.scheduling.scorers import LatencyScorer
from gateway.scheduling.types import (
    CapacityState,
    Decision,
    RequestProfile,
    Snapshot,
)

REQUEST = RequestProfile()


def route(
    policy: Policy, snapshot: Snapshot, count: int, request: RequestProfile = REQUEST
) -> Counter[str]:
    """Pool name -> decisions, over `count` decisions on one unchanging snapshot."""
    picks: Counter[str] = Counter()
    for _ in range(count):
        decision = policy.decide(request, snapshot)
        assert decision is not None
        picks[decision.pool] += 1
    return picks


def replica_of(policy: Policy, snapshot: Snapshot) -> str:
    decision = policy.decide(REQUEST, snapshot)
    assert decision is not None
    return decision.replica


def assert_valid(decision: Decision | None, snapshot: Snapshot) -> Decision:
    assert decision is not None
    pool = snapshot.pool(decision.pool)
    assert decision.replica in {r.url for r in pool.replicas if r.healthy}
    assert decision.predicted_completion_s == pool.predicted_completion_s
    assert decision.cost_per_image_usd == pool.cost_per_image_usd
    return decision


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_each_policy_makes_a_valid_decision(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    snapshot = make_snapshot(
        make_pool("inf2", price_per_hour_usd=0.7582, latency_s=0.67, shapes=frozenset({"512x512"})),
        make_pool("g5", price_per_hour_usd=1.006, latency_s=0.92, unhealthy=1, outstanding=1),
        make_pool("g6", price_per_hour_usd=0.8048, latency_s=0.96, replicas=1),
        arrival_rate_per_s=2.0,
    )
    policy = build_policy(name, rng)
    for _ in range(50):
        decision = assert_valid(policy.decide(REQUEST, snapshot), snapshot)
        assert decision.meets_slo


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_equal_pools_share_traffic(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    snapshot = make_snapshot(*(make_pool(n) for n in ("a", "b", "c")))
    picks = route(build_policy(name, rng), snapshot, 3000)
    for pool in "abc":
        assert picks[pool] / 3000 == pytest.approx(1 / 3, abs=0.05), picks


def test_untried_faster_pool_is_not_flooded_at_steady_rate(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    # Same price; "new" carries a prior of 0.5 s (so a lower $/image) and has no
    # measurements. It gets its 0.8-utilization share (3.2 of 6 images/s), not all.
    snapshot = make_snapshot(
        make_pool("new", latency_s=0.5),
        make_pool("old-a"),
        make_pool("old-b"),
        arrival_rate_per_s=6.0,
    )
    picks = route(build_policy("cost", rng), snapshot, 3000)
    assert picks["new"] / 3000 == pytest.approx(3.2 / 6.0, abs=0.02)
    assert picks["old-a"] / 3000 == pytest.approx(1.4 / 6.0, abs=0.02)
    assert picks["old-b"] / 3000 == pytest.approx(1.4 / 6.0, abs=0.02)


@pytest.mark.parametrize("slo_s", [2.0, 60.0], ids=["interactive", "batch"])
def test_untried_faster_pool_is_not_flooded_by_a_burst(
    make_pool: Any, rng: random.Random, slo_s: float
) -> None:
    # A burst of 30 concurrent requests before any completes, with the arrival
    # rate still reading 0: each decision's work shows up in the next snapshot.
    # "new" (T = 4 images/s) would take all of it if demand read as zero, up to
    # its SLO limit (7 queued) for interactive work and without end for batch.
    pools = {p.name: p for p in (make_pool("new", latency_s=0.5), make_pool("a"), make_pool("b"))}
    policy = build_policy("cost", rng)
    sequence: list[str] = []
    for _ in range(30):
        decision = policy.decide(RequestProfile(slo_s=slo_s), Snapshot(pools=tuple(pools.values())))
        assert decision is not None
        sequence.append(decision.pool)
        chosen = pools[decision.pool]
        pools[chosen.name] = replace(chosen, outstanding=chosen.outstanding + 1)
    # Spill starts once the work in service passes 0.8 of "new"'s capacity.
    assert {"a", "b"} <= set(sequence[:6]), sequence
    # Over the burst each pool gets about its share of capacity (4 : 2 : 2).
    assert sequence.count("new") / 30 == pytest.approx(0.5, abs=0.1), sequence
    assert sequence.count("a") / 30 == pytest.approx(0.25, abs=0.1), sequence


def test_cost_policy_fills_cheapest_then_spills(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    # Each pool: T = 2 images/s, 0.8 T = 1.6.
    pools = (
        make_pool("dear", price_per_hour_usd=2.0),
        make_pool("cheap", price_per_hour_usd=0.5),
        make_pool("mid", price_per_hour_usd=1.0),
    )
    policy = build_policy("cost", rng)
    for rate in (0.0, 1.0, 1.6):
        picks = route(policy, make_snapshot(*pools, arrival_rate_per_s=rate), 500)
        assert picks == {"cheap": 500}, (rate, picks)
    picks = route(policy, make_snapshot(*pools, arrival_rate_per_s=2.0), 1000)
    assert picks == {"cheap": 800, "mid": 200}
    picks = route(policy, make_snapshot(*pools, arrival_rate_per_s=4.0), 1000)
    assert picks == {"cheap": 400, "mid": 400, "dear": 200}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_pool_without_the_shape_is_never_chosen(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    # The neuron pool is cheapest, fastest and idle, but compiled for 512x512 only.
    neuron = make_pool("inf2", price_per_hour_usd=0.1, latency_s=0.2, shapes=frozenset({"512x512"}))
    gpu = make_pool("g5", outstanding=2)
    snapshot = make_snapshot(neuron, gpu)
    request = RequestProfile(width=768, height=768, slo_s=10.0)
    assert route(build_policy(name, rng), snapshot, 200, request) == {"g5": 200}
    unsupported = RequestProfile(width=1024, height=1024)
    assert build_policy(name, rng).decide(unsupported, make_snapshot(neuron)) is None


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_slo_fallback_is_best_effort(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    # E = 3 * 1 / 2 + 1 = 2.5 s and 2 * 2 / 2 + 2 = 4 s: neither meets 2 s.
    snapshot = make_snapshot(
        make_pool("a", outstanding=3), make_pool("b", latency_s=2.0, outstanding=2)
    )
    policy = build_policy(name, rng)
    decision = assert_valid(policy.decide(RequestProfile(slo_s=2.0), snapshot), snapshot)
    assert decision.meets_slo is False
    assert decision.predicted_completion_s > 2.0
    relaxed = assert_valid(policy.decide(RequestProfile(slo_s=60.0), snapshot), snapshot)
    assert relaxed.meets_slo is True


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_slo_filter_prefers_pools_that_meet_it(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    # The backed-up pool is cheaper, but 5 queued images put it at 3.5 s > 2 s.
    snapshot = make_snapshot(
        make_pool("cheap-late", price_per_hour_usd=0.1, outstanding=5),
        make_pool("on-time"),
        arrival_rate_per_s=0.5,
    )
    picks = route(build_policy(name, rng), snapshot, 200, RequestProfile(slo_s=2.0))
    assert picks == {"on-time": 200}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_exclude_skips_pools_that_already_failed(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    snapshot = make_snapshot(make_pool("a", price_per_hour_usd=0.1), make_pool("b"), make_pool("c"))
    policy = build_policy(name, rng)
    for _ in range(100):
        decision = policy.decide(REQUEST, snapshot, exclude=frozenset({"a"}))
        assert decision is not None
        assert decision.pool in {"b", "c"}
    assert policy.decide(REQUEST, snapshot, exclude=frozenset({"a", "b", "c"})) is None


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_none_when_nothing_is_healthy(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    snapshot = make_snapshot(
        make_pool("a", replicas=0, unhealthy=2),
        make_pool("b", state=CapacityState.UNAVAILABLE),
    )
    assert build_policy(name, rng).decide(REQUEST, snapshot) is None
    assert build_policy(name, rng).decide(REQUEST, make_snapshot()) is None


def test_unhealthy_replicas_are_never_chosen(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    snapshot = make_snapshot(
        make_pool("a", replicas=1, unhealthy=3), make_pool("b", replicas=1, unhealthy=3)
    )
    for name in POLICY_NAMES:
        policy = build_policy(name, rng)
        urls = {replica_of(policy, snapshot) for _ in range(100)}
        assert urls == {"http://a-0:8000", "http://b-0:8000"}


def test_published_weights_are_used_only_when_every_pool_has_one(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    published = make_snapshot(make_pool("a", weight=3.0), make_pool("b", weight=1.0))
    assert route(build_policy("cost", rng), published, 400) == {"a": 300, "b": 100}
    # "b" has no loop weight yet: the static cost fill (equal tier) applies to both.
    partial = make_snapshot(make_pool("a", weight=3.0), make_pool("b"))
    assert route(build_policy("cost", rng), partial, 400) == {"a": 200, "b": 200}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_constrained_pool_is_skipped_while_another_can_serve(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    # Cheaper and idle, but answering with capacity errors.
    hurt = make_pool("hurt", price_per_hour_usd=0.1, state=CapacityState.CONSTRAINED)
    busy = make_pool("busy", outstanding=1)
    policy = build_policy(name, rng)
    assert route(policy, make_snapshot(hurt, busy), 200) == {"busy": 200}
    also_hurt = replace(busy, capacity_state=CapacityState.CONSTRAINED)
    picks = route(policy, make_snapshot(hurt, also_hurt), 200)
    assert set(picks) <= {"hurt", "busy"}


@pytest.mark.parametrize("name", ["cost", "capacity", "round_robin"])
def test_recovering_pool_gets_half_weight(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    snapshot = make_snapshot(make_pool("ok"), make_pool("back", state=CapacityState.RECOVERING))
    picks = route(build_policy(name, rng), snapshot, 3000)
    assert picks["back"] / 3000 == pytest.approx(0.5 / 1.5, abs=0.01)


def without_capacity_filter(policy: Policy) -> Policy:
    """The same composition with CONSTRAINED pools left in, to see the state factor."""
    return Policy(
        policy.name,
        rng=random.Random(5),
        filters=[f for f in policy.filters if not isinstance(f, CapacityFilter)],
        objectives=policy.objectives,
        scorers=policy.scorers,
        weighting=policy.weighting,
        pool_selection=policy.pool_selection,
        replica_selection=policy.replica_selection,
    )


@pytest.mark.parametrize("name", ["cost", "capacity", "round_robin"])
def test_constrained_factor_when_not_filtered(
    make_pool: Any, make_snapshot: Any, rng: random.Random, name: str
) -> None:
    policy = without_capacity_filter(build_policy(name, rng))
    snapshot = make_snapshot(make_pool("ok"), make_pool("hurt", state=CapacityState.CONSTRAINED))
    picks = route(policy, snapshot, 2200)
    assert picks["hurt"] / 2200 == pytest.approx(0.1 / 1.1, abs=0.01)


def test_constrained_factor_in_latency_and_least_request(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    snapshot = make_snapshot(make_pool("ok"), make_pool("hurt", state=CapacityState.CONSTRAINED))
    latency = without_capacity_filter(build_policy("latency", rng))
    assert route(latency, snapshot, 200) == {"ok": 200}
    # Fast-failing capacity errors leave the constrained pool looking idle.
    idle_but_hurt = make_snapshot(
        make_pool("ok", outstanding=2), make_pool("hurt", state=CapacityState.CONSTRAINED)
    )
    least_request = without_capacity_filter(build_policy("least_request", rng))
    picks = route(least_request, idle_but_hurt, 1000)
    assert picks["hurt"] < picks["ok"] / 2


def test_latency_policy_picks_best_predicted_pool(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    snapshot = make_snapshot(
        make_pool("slow", latency_s=0.96),
        make_pool("fast", latency_s=0.51, price_per_hour_usd=5.0),
    )
    assert route(build_policy("latency", rng), snapshot, 100) == {"fast": 100}
    busy_fast = make_snapshot(
        make_pool("slow", latency_s=0.96),
        make_pool("fast", latency_s=0.51, outstanding=4),
    )
    assert route(build_policy("latency", rng), busy_fast, 100) == {"slow": 100}


def test_replica_choice_within_pool(make_pool: Any, rng: random.Random) -> None:
    base = make_pool("p", replicas=3)
    loaded = replace(
        base,
        replicas=(
            replace(base.replicas[0], in_flight=5),
            base.replicas[1],
            replace(base.replicas[2], in_flight=2),
        ),
    )
    snapshot = Snapshot(pools=(loaded,))
    cost = build_policy("cost", rng)
    p2c = Counter(replica_of(cost, snapshot) for _ in range(900))
    assert p2c["http://p-0:8000"] == 0
    assert p2c["http://p-1:8000"] > p2c["http://p-2:8000"]
    policy = build_policy("round_robin", rng)
    rr = [replica_of(policy, snapshot) for _ in range(6)]
    assert rr == [r.url for r in loaded.replicas] * 2


def test_decision_reports_scores(make_pool: Any, make_snapshot: Any, rng: random.Random) -> None:
    snapshot = make_snapshot(make_pool("a"), make_pool("b", outstanding=2))
    decision = build_policy("latency", rng).decide(REQUEST, snapshot)
    assert decision is not None
    assert decision.pool == "a"
    assert decision.scores == {"latency": 1.0, "queue": 1.0, "combined": 1.0}
    weighted = build_policy("cost", rng).decide(REQUEST, snapshot)
    assert weighted is not None
    assert set(weighted.scores) == {"weight", "queue", "combined"}
    assert 0.0 < weighted.scores["weight"] <= 1.0


def test_same_seed_same_decisions(make_pool: Any, make_snapshot: Any) -> None:
    snapshot = make_snapshot(*(make_pool(n, outstanding=i % 2) for i, n in enumerate("abcd")))
    for name in POLICY_NAMES:
        runs = []
        for _ in range(2):
            policy = build_policy(name, random.Random(3))
            runs.append([policy.decide(REQUEST, snapshot) for _ in range(50)])
        assert runs[0] == runs[1]


def test_build_policy_rejects_unknown_names(rng: random.Random) -> None:
    with pytest.raises(ValueError, match="cost, capacity, latency, round_robin, least_request"):
        build_policy("cheapest", rng)


def test_policy_validates_scorers(rng: random.Random) -> None:
    with pytest.raises(ValueError, match="positive weight"):
        Policy("x", rng=rng, scorers=[(LatencyScorer(), 0.0)])
    with pytest.raises(ValueError, match="unique"):
        Policy("x", rng=rng, scorers=[(LatencyScorer(), 1.0), (LatencyScorer(), 1.0)])


def test_custom_policy_without_health_filter_still_needs_a_healthy_replica(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    policy = Policy(
        "bare",
        rng=rng,
        filters=[ShapeFilter()],
        weighting="round_robin",
        pool_selection=PoolSelection.WEIGHTED,
        replica_selection=ReplicaSelection.POWER_OF_TWO,
    )
    snapshot = make_snapshot(make_pool("down", replicas=0, unhealthy=2), make_pool("up"))
    assert route(policy, snapshot, 50) == {"up": 50}
    health_only = Policy("h", rng=rng, filters=[HealthFilter()], weighting="cost")
    assert health_only.decide(REQUEST, make_snapshot(make_pool("down", replicas=0))) is None


def test_best_effort_goes_where_the_request_finishes_first(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    # Neither pool meets 1 s. The loop's weights send everything to "a", but "a" has a
    # queue (3 x 1.5 s / 4 slots + 1.5 s = 2.6 s) and "b" none (1.5 s): best effort
    # takes "b", whatever the weights, so the overflow is not piled onto "a".
    snapshot = make_snapshot(
        make_pool("a", replicas=4, latency_s=1.5, outstanding=3, weight=1.0),
        make_pool("b", replicas=4, latency_s=1.5, weight=0.0),
    )
    late = RequestProfile(slo_s=1.0)
    assert route(build_policy("cost", rng), snapshot, 50, late) == {"b": 50}
    decision = build_policy("cost", rng).decide(late, snapshot)
    assert decision is not None
    assert decision.meets_slo is False
    assert decision.predicted_completion_s == pytest.approx(1.5)
    # Within the objective, the published weights decide alone.
    assert route(build_policy("cost", rng), snapshot, 100, RequestProfile(slo_s=60.0)) == {"a": 100}


def test_a_large_image_is_predicted_at_its_own_size(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    # Both pools read 1.0 s per image served, but "mixed" serves mostly 512x512 work at
    # 0.9 s per 512x512 image, and "large" only 768x768 work at 0.6 s per 512x512 image.
    mixed = replace(make_pool("mixed", latency_s=1.0), unit_latency_s=0.9)
    large = replace(make_pool("large", latency_s=1.0), unit_latency_s=0.6)
    snapshot = make_snapshot(mixed, large)
    request = RequestProfile(width=768, height=768, slo_s=2.0)

    decision = build_policy("latency", rng).decide(request, snapshot)

    # 0.9 x 2.25 = 2.03 s misses 2 s; 0.6 x 2.25 = 1.35 s meets it.
    assert decision is not None
    assert decision.pool == "large"
    assert decision.predicted_completion_s == pytest.approx(0.6 * 2.25)
    assert mixed.completion_s(request) == pytest.approx(0.9 * 2.25)
    assert mixed.completion_s(RequestProfile()) == pytest.approx(0.9)


def test_a_decision_predicts_the_finish_on_its_own_replica(
    make_pool: Any, make_snapshot: Any, rng: random.Random
) -> None:
    pool = make_pool("a", replicas=2, latency_s=1.0, outstanding=3)
    busy, idle = pool.replicas
    pool = replace(pool, replicas=(replace(busy, in_flight=3), idle), unit_latency_s=0.8)
    small, large = RequestProfile(), RequestProfile(width=768, height=768)
    busy, idle = pool.replicas
    # Nothing ahead on the idle replica; on the busy one, two images wait behind the one
    # running (half done on average): 2.5 service times, then the request's own.
    assert pool.replica_completion_s(idle, small) == pytest.approx(0.8)
    assert pool.replica_completion_s(busy, small) == pytest.approx(2.5 * 1.0 + 0.8)
    assert pool.replica_completion_s(idle, large) == pytest.approx(0.8 * 2.25)
    # With 4 slots, 6 outstanding: 2 wait, the first a half service time per slot.
    wide = replace(busy, slots=4, in_flight=6)
    assert pool.replica_completion_s(wide, small) == pytest.approx(2.5 * 1.0 / 4 + 0.8)
    assert pool.replica_completion_s(replace(busy, in_flight=0, reported_queue_depth=2), small) == (
        pytest.approx(1.5 * 1.0 + 0.8)
    )

    decision = build_policy("least_request", rng).decide(small, make_snapshot(pool))
    assert decision is not None
    assert decision.replica == idle.url
    assert decision.predicted_completion_s == pytest.approx(3 * 1.0 / 2 + 0.8)  # the pool's E_p
    assert decision.replica_completion_s == pytest.approx(0.8)
