"""Static pool weights: cheapest-first fill, headroom, equal."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.scheduling.types import Snapshot
from gateway.scheduling.weights import (
    WEIGHTING_NAMES,
    cheapest_first_fill,
    demand_images_per_s,
    static_weights,
)

Spec = dict[str, Any]  # keyword arguments of the `make_pool` fixture

# Each pool: 2 replicas x 1 slot at L = 1 s -> T = 2 images/s, 1.6 at 0.8 utilization.
CHEAP: Spec = {"name": "cheap", "price_per_hour_usd": 0.5}
MID: Spec = {"name": "mid", "price_per_hour_usd": 1.0}
DEAR: Spec = {"name": "dear", "price_per_hour_usd": 2.0}


@pytest.mark.parametrize(
    ("specs", "arrival_rate_per_s", "expected"),
    [
        ([DEAR, MID, CHEAP], 0.0, {"cheap": 1.0, "mid": 0.0, "dear": 0.0}),
        ([DEAR, MID, CHEAP], 1.6, {"cheap": 1.0, "mid": 0.0, "dear": 0.0}),
        ([DEAR, MID, CHEAP], 2.0, {"cheap": 0.8, "mid": 0.2, "dear": 0.0}),
        ([DEAR, MID, CHEAP], 4.0, {"cheap": 0.4, "mid": 0.4, "dear": 0.2}),
        # 4.8 fills every target; the extra 1.2 spreads by capacity, 0.4 each.
        ([DEAR, MID, CHEAP], 6.0, {"cheap": 1 / 3, "mid": 1 / 3, "dear": 1 / 3}),
        (
            # Equal cost: one tier, split by capacity (4 vs 2 replicas), not by name.
            [{"name": "b", "replicas": 4}, {"name": "a"}, DEAR],
            0.0,
            {"b": 2 / 3, "a": 1 / 3, "dear": 0.0},
        ),
        (
            # $/image, not $/hour: twice the price at a third of the latency is cheaper.
            [{"name": "fast", "price_per_hour_usd": 2.0, "latency_s": 1 / 3}, MID],
            0.0,
            {"fast": 1.0, "mid": 0.0},
        ),
    ],
    ids=[
        "zero-rate-all-to-cheapest",
        "up-to-target-stays-cheapest",
        "spills-past-target",
        "spills-twice",
        "beyond-all-capacity-by-capacity",
        "equal-cost-tier-split-by-capacity",
        "cost-per-image",
    ],
)
def test_cost_weights(
    make_pool: Any, specs: list[Spec], arrival_rate_per_s: float, expected: dict[str, float]
) -> None:
    pools = tuple(make_pool(**spec) for spec in specs)
    snapshot = Snapshot(pools=pools, arrival_rate_per_s=arrival_rate_per_s)
    weights = static_weights("cost", pools, snapshot)
    assert weights == pytest.approx(expected)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_in_service_work_is_a_floor_on_demand(make_pool: Any) -> None:
    # A burst before the rate estimator catches up: 2 images in service on the
    # cheap pool read as 2 images/s of demand, which spills past its 1.6.
    cheap = make_pool(**CHEAP, outstanding=2)
    mid = make_pool(**MID)
    snapshot = Snapshot(pools=(cheap, mid), arrival_rate_per_s=0.0)
    assert demand_images_per_s(snapshot) == pytest.approx(2.0)
    assert static_weights("cost", (cheap, mid), snapshot) == pytest.approx(
        {"cheap": 0.8, "mid": 0.2}
    )


def test_fill_returns_images_per_s(make_pool: Any) -> None:
    pools = [make_pool(**CHEAP), make_pool(**MID)]
    assert cheapest_first_fill(pools, 2.0, 0.8) == pytest.approx({"cheap": 1.6, "mid": 0.4})
    assert cheapest_first_fill(pools, 0.0, 0.8) == {"cheap": 0.0, "mid": 0.0}


def test_capacity_weights_follow_headroom(make_pool: Any) -> None:
    # Headroom = 0.8 T - in service: 1.6, 1.6 - 1 = 0.6, and a floor of 0.02 T = 0.04.
    pools = (
        make_pool("idle"),
        make_pool("half", outstanding=1),
        make_pool("full", outstanding=5),
    )
    weights = static_weights("capacity", pools, Snapshot(pools=pools))
    total = 1.6 + 0.6 + 0.04
    assert weights == pytest.approx(
        {"idle": 1.6 / total, "half": 0.6 / total, "full": 0.04 / total}
    )


@pytest.mark.parametrize("name", ["latency", "round_robin", "least_request"])
def test_unweighted_policies_get_equal_weights(make_pool: Any, name: str) -> None:
    pools = (make_pool(**CHEAP), make_pool(**DEAR, replicas=5))
    assert static_weights(name, pools, Snapshot(pools=pools)) == {"cheap": 0.5, "dear": 0.5}


@pytest.mark.parametrize("name", WEIGHTING_NAMES)
def test_no_candidates_no_weights(name: str) -> None:
    assert static_weights(name, (), Snapshot(pools=())) == {}


def test_unknown_weighting_names_valid_ones(make_pool: Any) -> None:
    with pytest.raises(ValueError, match="cost, capacity, latency, round_robin, least_request"):
        static_weights("cheapest", (make_pool("a"),), Snapshot(pools=()))
