"""Table tests for the scheduling scorers: pools in, scores (and so their order) out."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.scheduling.scorers import (
    CostScorer,
    HeadroomScorer,
    LatencyScorer,
    QueueScorer,
    Scorer,
    higher_is_better,
    lower_is_better,
)
from gateway.scheduling.types import RequestProfile

Spec = dict[str, Any]  # keyword arguments of the `make_pool` fixture

SCORERS: list[Scorer] = [LatencyScorer(), QueueScorer(), CostScorer(), HeadroomScorer()]

CASES: list[tuple[Scorer, list[Spec], dict[str, float]]] = [
    (
        LatencyScorer(),
        [{"name": "a", "latency_s": 0.5}, {"name": "b"}, {"name": "c", "latency_s": 2.0}],
        {"a": 1.0, "b": 0.5, "c": 0.25},
    ),
    (
        # The queue is scored, not service time: two idle pools tie.
        QueueScorer(),
        [{"name": "fast", "latency_s": 0.5}, {"name": "slow", "latency_s": 2.0}],
        {"fast": 1.0, "slow": 1.0},
    ),
    (
        # L = 1 s on 2 slots: Q=2 waits 1 s, one service time over the best, so 1/(1+1).
        QueueScorer(),
        [
            {"name": "idle"},
            {"name": "busy", "outstanding": 2},
            {"name": "busier", "outstanding": 6},
            {"name": "no-slots", "replicas": 0, "unhealthy": 1},
        ],
        {"idle": 1.0, "busy": 0.5, "busier": 0.25, "no-slots": 0.0},
    ),
    (
        QueueScorer(),
        [{"name": "a", "outstanding": 2}, {"name": "b", "outstanding": 4}],
        {"a": 1.0, "b": 2.0 / 3.0},
    ),
    (
        # c_p = price L / (3600 s): two slots halve it, as do half the price or latency.
        CostScorer(),
        [
            {"name": "base"},
            {"name": "pricey", "price_per_hour_usd": 2.0},
            {"name": "slow", "latency_s": 2.0},
            {"name": "two-slots", "slots_per_replica": 2},
        ],
        {"base": 0.5, "pricey": 0.25, "slow": 0.25, "two-slots": 1.0},
    ),
    (
        # spare = T (1 - min(util, 1)), T = replicas slots / L.
        HeadroomScorer(),
        [
            {"name": "idle"},
            {"name": "half", "outstanding": 1},
            {"name": "full", "outstanding": 5},
            {"name": "big", "replicas": 4},
        ],
        {"idle": 0.5, "half": 0.25, "full": 0.0, "big": 1.0},
    ),
    (
        HeadroomScorer(),
        [{"name": "a", "outstanding": 2}, {"name": "b", "outstanding": 9}],
        {"a": 1.0, "b": 1.0},
    ),
]

IDS = [
    "latency-ratio-to-fastest",
    "queue-ignores-service-time",
    "queue-one-service-time-halves-infinite-is-zero",
    "queue-both-backlogged",
    "cost-per-image-ratio",
    "headroom-spare-images-per-s",
    "headroom-all-full-tie",
]


@pytest.mark.parametrize(("scorer", "specs", "expected"), CASES, ids=IDS)
def test_scorer_table(
    make_pool: Any, scorer: Scorer, specs: list[Spec], expected: dict[str, float]
) -> None:
    scores = scorer.score(RequestProfile(), [make_pool(**spec) for spec in specs])
    assert scores == pytest.approx(expected)
    ranked = sorted(scores, key=lambda name: -scores[name])
    assert ranked == sorted(expected, key=lambda name: -expected[name])


@pytest.mark.parametrize("scorer", SCORERS, ids=lambda s: s.name)
def test_lone_candidate_scores_one(make_pool: Any, scorer: Scorer) -> None:
    pool = make_pool("only", outstanding=7, latency_s=3.0, price_per_hour_usd=9.0)
    assert scorer.score(RequestProfile(), [pool]) == {"only": 1.0}


@pytest.mark.parametrize("scorer", SCORERS, ids=lambda s: s.name)
def test_equal_pools_score_equal(make_pool: Any, scorer: Scorer) -> None:
    pools = [make_pool(name, outstanding=1) for name in ("a", "b", "c")]
    assert scorer.score(RequestProfile(), pools) == {"a": 1.0, "b": 1.0, "c": 1.0}


@pytest.mark.parametrize("scorer", SCORERS, ids=lambda s: s.name)
def test_scores_in_unit_interval_never_nan(make_pool: Any, scorer: Scorer) -> None:
    pools = [
        make_pool("ok"),
        make_pool("dead", replicas=0, unhealthy=2, outstanding=3),
        make_pool("free", price_per_hour_usd=0.0),
        make_pool("swamped", outstanding=10_000),
        make_pool("nan-latency", latency_s=math.nan),
        make_pool("inf-latency", latency_s=math.inf),
    ]
    scores = scorer.score(RequestProfile(), pools)
    assert set(scores) == {p.name for p in pools}
    assert all(0.0 <= s <= 1.0 for s in scores.values()), scores


@pytest.mark.parametrize(
    ("values", "offset", "expected"),
    [
        ({"a": 2.0, "b": 4.0}, 0.0, {"a": 1.0, "b": 0.5}),
        ({"a": 0.0, "b": 1.0}, 1.0, {"a": 1.0, "b": 0.5}),
        ({"a": 0.0, "b": 1.0}, 0.0, {"a": 1.0, "b": 0.0}),
        ({"a": 1.0, "b": math.inf, "c": math.nan}, 0.0, {"a": 1.0, "b": 0.0, "c": 0.0}),
        ({"a": math.inf}, 0.0, {"a": 0.0}),
        ({"a": -1.0, "b": 0.0}, 0.0, {"a": 1.0, "b": 1.0}),
        ({}, 0.0, {}),
    ],
    ids=["ratio", "offset", "zero-best", "inf-and-nan", "lone-inf", "negative-as-zero", "empty"],
)
def test_lower_is_better(
    values: dict[str, float], offset: float, expected: dict[str, float]
) -> None:
    assert lower_is_better(values, offset) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": 4.0, "b": 1.0}, {"a": 1.0, "b": 0.25}),
        ({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}),
        ({"a": 2.0, "b": math.nan, "c": -3.0}, {"a": 1.0, "b": 0.0, "c": 0.0}),
        ({"a": math.inf, "b": 2.0}, {"a": 0.0, "b": 1.0}),
    ],
    ids=["ratio", "all-zero-tie", "nan-and-negative", "inf-is-invalid"],
)
def test_higher_is_better(values: dict[str, float], expected: dict[str, float]) -> None:
    assert higher_is_better(values) == pytest.approx(expected)
