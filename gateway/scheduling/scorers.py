"""Scorers: the second stage, which rates each candidate pool in [0, 1] (higher is better).

Scores are normalised across the candidate set passed in, so they only rank
pools against each other: a lone candidate gets 1.0 and equal pools get equal
scores. Every scorer here uses a ratio to the best candidate rather than
min-max scaling, because a policy multiplies pool weights by scores and
min-max would give the worst candidate exactly 0 and starve it, however small
the gap:

- lower is better:  score_p = (best + offset) / (value_p + offset)
- higher is better: score_p = value_p / best

Non-finite or NaN values (e.g. the infinite wait of a pool without a healthy
slot) score 0, even for a lone candidate. No scorer ever returns NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.scheduling.types import PoolView, RequestProfile


class Scorer(Protocol):
    """Rates candidate pools for one request.

    Contract: returns one entry per pool name in `pools`, each a float in
    [0, 1], higher is better; never NaN; must not raise on any pool.
    """

    @property
    def name(self) -> str: ...

    def score(self, request: RequestProfile, pools: Sequence[PoolView]) -> dict[str, float]: ...


def lower_is_better(values: Mapping[str, float], offset: float = 0.0) -> dict[str, float]:
    """Ratio-to-best scores for a quantity where smaller is better.

    `score = (best + offset) / (value + offset)`, where `best` is the smallest
    finite value; negative values count as 0; non-finite values score 0. When
    `best + offset` is 0, pools at that best value score 1.0 and the rest 0.
    """
    cleaned = {k: max(v, 0.0) if math.isfinite(v) else math.inf for k, v in values.items()}
    finite = [v for v in cleaned.values() if math.isfinite(v)]
    if not finite:
        return dict.fromkeys(cleaned, 0.0)
    offset = max(offset, 0.0) if math.isfinite(offset) else 0.0
    best = min(finite) + offset
    scores: dict[str, float] = {}
    for key, value in cleaned.items():
        denominator = value + offset
        if not math.isfinite(denominator):
            scores[key] = 0.0
        elif denominator <= 0.0:
            scores[key] = 1.0
        else:
            scores[key] = min(best / denominator, 1.0)
    return scores


def higher_is_better(values: Mapping[str, float]) -> dict[str, float]:
    """Ratio-to-best scores for a quantity where larger is better.

    `score = value / best`; negative and non-finite values score 0; when the
    best is 0 every pool scores 1.0 (none is better than another).
    """
    cleaned = {k: max(v, 0.0) if math.isfinite(v) else 0.0 for k, v in values.items()}
    best = max(cleaned.values(), default=0.0)
    if best <= 0.0:
        return dict.fromkeys(cleaned, 1.0)
    return {k: v / best for k, v in cleaned.items()}


class LatencyScorer:
    """Lower EWMA service time per image (`latency_s`) is better: `min_L / L_p`."""

    name: str = "latency"

    def score(self, request: RequestProfile, pools: Sequence[PoolView]) -> dict[str, float]:
        return lower_is_better({p.name: p.latency_s for p in pools})


class QueueScorer:
    """Less waiting work (`wait_s`, the queue in seconds) is better.

    `score = (min_W + L_min) / (W_p + L_min)`, where `L_min` is the smallest
    candidate latency: one service time of slack, so that an empty queue next
    to a nearly empty one does not read as infinitely better (a backlog of
    one service time over the best halves the score). Infinite wait scores 0.
    """

    name: str = "queue"

    def score(self, request: RequestProfile, pools: Sequence[PoolView]) -> dict[str, float]:
        latencies = [p.latency_s for p in pools if math.isfinite(p.latency_s) and p.latency_s > 0]
        offset = min(latencies, default=0.0)
        return lower_is_better({p.name: p.wait_s for p in pools}, offset=offset)


class CostScorer:
    """Cheaper `cost_per_image_usd` is better: `min_c / c_p`."""

    name: str = "cost"

    def score(self, request: RequestProfile, pools: Sequence[PoolView]) -> dict[str, float]:
        return lower_is_better({p.name: p.cost_per_image_usd for p in pools})


def spare_images_per_s(pool: PoolView) -> float:
    """Spare capacity in images/s: T_p * (1 - min(utilization, 1)); 0 without healthy slots."""
    capacity = pool.capacity_images_per_s
    if capacity <= 0.0 or not math.isfinite(capacity):
        return 0.0
    return capacity * (1.0 - min(pool.utilization, 1.0))


class HeadroomScorer:
    """More spare capacity (images/s) is better: `spare_p / max_spare`."""

    name: str = "headroom"

    def score(self, request: RequestProfile, pools: Sequence[PoolView]) -> dict[str, float]:
        return higher_is_better({p.name: spare_images_per_s(p) for p in pools})
