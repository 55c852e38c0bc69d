"""Table tests for the control loop's optimizer: pools and demand in, an allocation out.

Figures are the paper's public sample deployment (FACTS.md: Stable Diffusion,
10 steps, 512x512, on-demand USD/h and latency s). Expected values are written
as the arithmetic that produces them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from gateway.control.optimizer import Allocation, ClassDemand, PoolSupply, allocate
from gateway.scheduling.types import Priority

I = Priority.INTERACTIVE  # noqa: E741
B = Priority.BATCH

# (price_per_hour_usd, latency_s), FACTS.md "The paper's public sample deployment".
INF2 = (0.7582, 0.67)
TRN1 = (1.3438, 0.51)
G5 = (1.006, 0.92)  # g5.xlarge, diffusers CUDA
G6 = (0.8048, 0.96)
G6_SPOT = (0.8048 * 0.3, 0.96)  # hypothetical spot price at 30% of on-demand: cheap but slow
TRITON = (1.006, 0.68)  # g5.xlarge with Triton
GPUS = frozenset({"g5-triton", "g6"})  # the pools that serve 768x768
LARGE = 2.25  # 768x768 against 512x512: 2.25 times the pixels and the service time


def pool(
    name: str,
    price_per_hour_usd: float,
    latency_s: float,
    *,
    replicas: int = 1,
    slots: int = 1,
    usable: bool = True,
    cost_scale: float = 1.0,
) -> PoolSupply:
    """A pool whose capacity and cost follow DESIGN.md: T = R s / L, c = price L / (3600 s)."""
    return PoolSupply(
        name=name,
        capacity_images_per_s=replicas * slots / latency_s,
        latency_s=latency_s,
        cost_per_image_usd=price_per_hour_usd * latency_s / (3600.0 * slots) * cost_scale,
        price_per_hour_usd=price_per_hour_usd,
        slots_per_replica=slots,
        healthy_replicas=replicas,
        usable=usable,
    )


def interactive(rate_per_s: float, slo_s: float = 2.0) -> ClassDemand:
    return ClassDemand(I, rate_per_s, slo_s)


def batch(rate_per_s: float, slo_s: float = 60.0) -> ClassDemand:
    return ClassDemand(B, rate_per_s, slo_s)


def assert_per_class(actual: Any, expected: dict[Priority, dict[str, float]]) -> None:
    assert set(actual) == set(expected)
    for prio, per_pool in expected.items():
        assert actual[prio] == pytest.approx(per_pool), prio


# Target capacities (u = 0.8) used below.
INF2_X1 = 0.8 / 0.67
INF2_X2 = 1.6 / 0.67
G6_X1 = 0.8 / 0.96
G6_X2 = 1.6 / 0.96
TRN1_X2_LEFT = 1.6 / 0.51 - 1.0  # trn1 x2 after interactive took 1 img/s
FULL_INF2_G6 = 1 / 0.67 + 1 / 0.96  # full capacity of inf2 x1 + g6 x1

# pools, demand, mode, assigned, weights, deficit_per_s, best_effort
ALLOCATION_CASES = [
    pytest.param(
        [pool("inf2", *INF2, replicas=2), pool("g6", *G6, replicas=2), pool("g5", *G5, replicas=2)],
        [interactive(3.0)],
        "cost",
        {I: {"inf2": INF2_X2, "g6": 3.0 - INF2_X2}},
        {I: {"inf2": INF2_X2 / 3.0, "g6": 1.0 - INF2_X2 / 3.0}},
        {I: 0.0},
        set(),
        id="cost-cheapest-first-then-spill",
    ),
    pytest.param(
        [pool("inf2", *INF2, replicas=2), pool("g6", *G6, replicas=2)],
        [interactive(1.0)],
        "cost",
        {I: {"inf2": 1.0}},
        {I: {"inf2": 1.0}},
        {I: 0.0},
        set(),
        id="cost-cheapest-alone-below-target",
    ),
    pytest.param(
        [pool("a", *INF2, replicas=1), pool("b", *INF2, replicas=3), pool("g6", *G6, replicas=4)],
        [interactive(2.0)],
        "cost",
        {I: {"a": 0.5, "b": 1.5}},
        {I: {"a": 0.25, "b": 0.75}},
        {I: 0.0},
        set(),
        id="cost-equal-costs-split-by-capacity",
    ),
    pytest.param(
        [pool("a", *INF2, replicas=1, cost_scale=1 - 0.04), pool("b", *INF2, replicas=3)],
        [interactive(2.0)],
        "cost",
        {I: {"a": 0.5, "b": 1.5}},
        {I: {"a": 0.25, "b": 0.75}},
        {I: 0.0},
        set(),
        id="cost-within-5-percent-is-one-tier",
    ),
    pytest.param(
        [pool("a", *INF2, replicas=1, cost_scale=1 - 0.06), pool("b", *INF2, replicas=3)],
        [interactive(2.0)],
        "cost",
        {I: {"a": INF2_X1, "b": 2.0 - INF2_X1}},
        {I: {"a": INF2_X1 / 2.0, "b": 1.0 - INF2_X1 / 2.0}},
        {I: 0.0},
        set(),
        id="cost-6-percent-apart-fills-in-order",
    ),
    pytest.param(
        [pool("inf2", *INF2), pool("g6", *G6)],
        [interactive(4.0)],
        "cost",
        {I: {"inf2": INF2_X1, "g6": G6_X1}},
        {I: {"inf2": (1 / 0.67) / FULL_INF2_G6, "g6": (1 / 0.96) / FULL_INF2_G6}},
        {I: 4.0 - INF2_X1 - G6_X1},
        set(),
        id="cost-demand-above-capacity-spreads-by-capacity",
    ),
    pytest.param(
        [pool("inf2", *INF2), pool("g6", *G6)],
        [interactive(4.0)],
        "capacity",
        {I: {"inf2": INF2_X1, "g6": G6_X1}},
        {I: {"inf2": (1 / 0.67) / FULL_INF2_G6, "g6": (1 / 0.96) / FULL_INF2_G6}},
        {I: 4.0 - INF2_X1 - G6_X1},
        set(),
        id="capacity-demand-above-capacity-spreads-by-capacity",
    ),
    pytest.param(
        [
            pool("inf2", *INF2, replicas=0),
            pool("trn1", *TRN1, replicas=2, usable=False),
            pool("g6", *G6, replicas=2),
        ],
        [interactive(1.0)],
        "cost",
        {I: {"g6": 1.0}},
        {I: {"g6": 1.0}},
        {I: 0.0},
        set(),
        id="cost-empty-and-unusable-pools-get-nothing",
    ),
    pytest.param(
        [pool("g6-spot", *G6_SPOT, replicas=2), pool("trn1", *TRN1, replicas=2)],
        [interactive(1.0, slo_s=0.9), batch(1.0)],
        "cost",
        {I: {"trn1": 1.0}, B: {"g6-spot": 1.0}},
        {I: {"trn1": 1.0}, B: {"g6-spot": 1.0}},
        {I: 0.0, B: 0.0},
        set(),
        id="cost-cheap-slow-pool-takes-batch-only",
    ),
    pytest.param(
        [pool("g6-spot", *G6_SPOT, replicas=2), pool("trn1", *TRN1, replicas=2)],
        [interactive(1.0, slo_s=0.9), batch(3.0)],
        "cost",
        {I: {"trn1": 1.0}, B: {"g6-spot": G6_X2, "trn1": 3.0 - G6_X2}},
        {I: {"trn1": 1.0}, B: {"g6-spot": G6_X2 / 3.0, "trn1": 1.0 - G6_X2 / 3.0}},
        {I: 0.0, B: 0.0},
        set(),
        id="cost-batch-spills-into-what-interactive-left",
    ),
    pytest.param(
        [pool("trn1", *TRN1)],
        [batch(1.0), interactive(1.0, slo_s=0.9)],
        "cost",
        {I: {"trn1": 1.0}, B: {"trn1": 0.8 / 0.51 - 1.0}},
        {I: {"trn1": 1.0}, B: {"trn1": 1.0}},
        {I: 0.0, B: 2.0 - 0.8 / 0.51},
        set(),
        id="cost-interactive-served-first-whatever-the-order",
    ),
    pytest.param(
        [pool("trn1", *TRN1, replicas=2), pool("g6", *G6, replicas=2)],
        [interactive(1.0, slo_s=0.9), batch(1.0)],
        "capacity",
        {
            I: {"trn1": 1.0},
            B: {
                "trn1": TRN1_X2_LEFT / (TRN1_X2_LEFT + G6_X2),
                "g6": G6_X2 / (TRN1_X2_LEFT + G6_X2),
            },
        },
        {
            I: {"trn1": 1.0},
            B: {
                "trn1": TRN1_X2_LEFT / (TRN1_X2_LEFT + G6_X2),
                "g6": G6_X2 / (TRN1_X2_LEFT + G6_X2),
            },
        },
        {I: 0.0, B: 0.0},
        set(),
        id="capacity-spreads-by-headroom-not-capacity",
    ),
    pytest.param(
        [pool("g6", *G6), pool("trn1", *TRN1), pool("inf2", *INF2)],
        [interactive(0.0), batch(0.0)],
        "cost",
        {I: {}, B: {}},
        {I: {"inf2": 1.0}, B: {"inf2": 1.0}},
        {I: 0.0, B: 0.0},
        set(),
        id="cost-zero-demand-cheapest-gets-all-weight",
    ),
    pytest.param(
        [pool("g6", *G6), pool("trn1", *TRN1), pool("inf2", *INF2)],
        [interactive(0.0)],
        "capacity",
        {I: {}},
        {
            I: {
                "inf2": (1 / 0.67) / (1 / 0.67 + 1 / 0.51 + 1 / 0.96),
                "trn1": (1 / 0.51) / (1 / 0.67 + 1 / 0.51 + 1 / 0.96),
                "g6": (1 / 0.96) / (1 / 0.67 + 1 / 0.51 + 1 / 0.96),
            }
        },
        {I: 0.0},
        set(),
        id="capacity-zero-demand-weights-follow-capacity",
    ),
    pytest.param(
        [pool("inf2", *INF2), pool("g6", *G6)],
        [interactive(1e-4)],
        "cost",
        {I: {"inf2": 1e-4}},
        {I: {"inf2": 1.0}},
        {I: 0.0},
        set(),
        id="cost-tiny-demand-keeps-real-assigned",
    ),
    pytest.param(
        [pool("g5", *G5), pool("g6", *G6)],
        [interactive(0.5, slo_s=0.8), batch(0.0)],
        "cost",
        {I: {"g6": 0.5}, B: {}},
        {I: {"g6": 1.0}, B: {"g6": 1.0}},
        {I: 0.0, B: 0.0},
        {I},
        id="cost-best-effort-when-no-pool-is-fast-enough",
    ),
    pytest.param(
        [pool("inf2", *INF2, replicas=0), pool("g6", *G6, replicas=0)],
        [interactive(1.0)],
        "cost",
        {I: {}},
        {I: {"g6": 0.5, "inf2": 0.5}},
        {I: 1.0},
        {I},
        id="cost-all-usable-pools-empty-split-equally",
    ),
    pytest.param(
        [pool("inf2", *INF2, usable=False)],
        [interactive(1.0)],
        "cost",
        {I: {}},
        {I: {}},
        {I: 1.0},
        set(),
        id="no-usable-pool-no-weights",
    ),
]


@pytest.mark.parametrize(
    ("pools", "demand", "mode", "assigned", "weights", "deficit", "best_effort"),
    ALLOCATION_CASES,
)
def test_allocation(
    pools: list[PoolSupply],
    demand: list[ClassDemand],
    mode: str,
    assigned: dict[Priority, dict[str, float]],
    weights: dict[Priority, dict[str, float]],
    deficit: dict[Priority, float],
    best_effort: set[Priority],
) -> None:
    result = allocate(pools, demand, mode=mode)

    assert result.mode == mode
    assert_per_class(result.assigned, assigned)
    assert_per_class(result.weights, weights)
    assert result.deficit_per_s == pytest.approx(deficit)
    assert result.total_deficit_per_s == pytest.approx(sum(deficit.values()))
    assert result.best_effort == frozenset(best_effort)
    for per_pool in result.weights.values():
        assert not per_pool or sum(per_pool.values()) == pytest.approx(1.0)


# pools, demand, kwargs, utilization, desired_replicas, spend_per_hour_usd
REPLICA_CASES = [
    pytest.param(
        [pool("p", 0.7582, 0.5)],
        [interactive(2.0)],
        {},
        {"p": 1.0},
        {"p": 2},  # ceil(2 * 0.5 / 0.8) = ceil(1.25)
        2 * 0.7582,
        id="known-case-rounds-up",
    ),
    pytest.param(
        [pool("p", 0.7582, 0.5)],
        [interactive(1.6)],
        {},
        {"p": 0.8},
        {"p": 1},  # 1.6 * 0.5 / 0.8 = 1.0 exactly (up to float error)
        0.7582,
        id="exact-multiple-does-not-round-up",
    ),
    pytest.param(
        [pool("inf2", *INF2, replicas=3)],
        [interactive(0.8 * 3 / 0.67)],
        {},
        {"inf2": 0.8},
        {"inf2": 3},  # (2.4 / 0.67) * 0.67 / 0.8 is 3.0000000000000004 in floats
        3 * 0.7582,
        id="steady-state-at-target-keeps-replicas",
    ),
    pytest.param(
        [pool("p", 0.7582, 0.5, slots=2)],
        [interactive(3.2)],
        {},
        {"p": 0.8},
        {"p": 1},  # 3.2 * 0.5 / (2 * 0.8) = 1.0
        0.7582,
        id="slots-per-replica-count",
    ),
    pytest.param(
        [pool("p", 0.7582, 0.5)],
        [interactive(2.0)],
        {"target_utilization": 1.0},
        {"p": 1.0},
        {"p": 1},
        0.7582,
        id="full-target-utilization",
    ),
    pytest.param(
        [pool("inf2", *INF2), pool("g6", *G6)],
        [interactive(4.0)],
        {},
        {"inf2": 4.0 / FULL_INF2_G6, "g6": 4.0 / FULL_INF2_G6},
        {"inf2": 2, "g6": 2},  # 4 / 2.534 / 0.8 = 1.97 replicas each, above the 1 running
        2 * 0.7582 + 2 * 0.8048,
        id="demand-above-capacity-asks-for-more",
    ),
    pytest.param(
        [
            pool("inf2", *INF2, replicas=2),
            pool("g6", *G6),
            pool("trn1", *TRN1, replicas=2, usable=False),
        ],
        [interactive(1.0)],
        {},
        {"inf2": 1.0 / (2 / 0.67), "g6": 0.0, "trn1": 0.0},
        {"inf2": 1, "g6": 0, "trn1": 0},  # ceil(1 * 0.67 / 0.8)
        0.7582,
        id="idle-and-unusable-pools-want-none",
    ),
    pytest.param(
        [pool("inf2", *INF2, replicas=0), pool("g6", *G6, replicas=0)],
        [interactive(1.0)],
        {},
        {"inf2": math.inf, "g6": math.inf},
        {"inf2": 1, "g6": 1},  # ceil(0.5 * 0.67 / 0.8), ceil(0.5 * 0.96 / 0.8)
        0.7582 + 0.8048,
        id="empty-usable-pools-scale-from-zero",
    ),
]


@pytest.mark.parametrize(
    ("pools", "demand", "kwargs", "utilization", "desired", "spend"), REPLICA_CASES
)
def test_utilization_replicas_and_spend(
    pools: list[PoolSupply],
    demand: list[ClassDemand],
    kwargs: dict[str, Any],
    utilization: dict[str, float],
    desired: dict[str, int],
    spend: float,
) -> None:
    result = allocate(pools, demand, mode="cost", **kwargs)

    assert result.utilization == pytest.approx(utilization)
    assert result.desired_replicas == desired
    assert result.spend_per_hour_usd == pytest.approx(spend)


@pytest.mark.parametrize(
    ("pools", "demand", "kwargs", "match"),
    [
        pytest.param(
            [pool("p", *INF2)], [interactive(1.0)], {"mode": "cheapest"}, "mode", id="mode"
        ),
        pytest.param(
            [pool("p", *INF2)], [interactive(1.0)], {"mode": "Cost"}, "mode", id="mode-case"
        ),
        pytest.param([], [], {"target_utilization": 0.0}, "target_util", id="utilization-zero"),
        pytest.param([], [], {"target_utilization": 1.5}, "target_util", id="utilization-above-1"),
        pytest.param([], [], {"target_utilization": math.nan}, "target_util", id="utilization-nan"),
        pytest.param([], [], {"min_demand_per_s": 0.0}, "min_demand", id="min-demand-zero"),
        pytest.param([], [interactive(-1.0)], {}, "rate_per_s", id="negative-rate"),
        pytest.param([], [interactive(math.inf)], {}, "rate_per_s", id="infinite-rate"),
        pytest.param([pool("p", *INF2), pool("p", *G6)], [], {}, "pool names", id="duplicate-pool"),
        pytest.param([], [interactive(1.0), interactive(2.0)], {}, "priority", id="dup-priority"),
        pytest.param(
            [],
            [ClassDemand(I, 1.0, 2.0, pools=GPUS), ClassDemand(I, 2.0, 2.0, pools=GPUS)],
            {},
            "priority and pool group",
            id="dup-priority-in-group",
        ),
        pytest.param([], [ClassDemand(I, 1.0, 2.0, size=0.0)], {}, "size", id="zero-size"),
        pytest.param(
            [dataclasses.replace(pool("p", *INF2), floor_replicas=-1)],
            [],
            {},
            "floor_replicas",
            id="negative-floor",
        ),
        pytest.param(
            [dataclasses.replace(pool("p", *INF2), slots_per_replica=0)],
            [],
            {},
            "slots_per_replica",
            id="zero-slots",
        ),
    ],
)
def test_invalid_input_raises(
    pools: list[PoolSupply], demand: list[ClassDemand], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        allocate(pools, demand, **{"mode": "cost", **kwargs})


@pytest.mark.parametrize("mode", ["cost", "capacity"])
def test_input_order_does_not_change_the_result(mode: str) -> None:
    pools = [
        pool("inf2", *INF2, replicas=2),
        pool("inf2-b", *INF2, replicas=1),
        pool("trn1", *TRN1),
        pool("g6", *G6, replicas=3),
        pool("g5", *G5, usable=False),
    ]
    demand = [interactive(3.0, slo_s=0.9), batch(5.0)]

    forward = allocate(pools, demand, mode=mode)
    backward = allocate(pools[::-1], demand[::-1], mode=mode)

    assert isinstance(forward, Allocation)
    assert forward == backward
    assert forward.total_deficit_per_s > 0.0


def test_replicas_that_run_anyway_are_filled_before_the_cheapest_pool() -> None:
    pools = [
        pool("inf2", *INF2, replicas=2),
        dataclasses.replace(pool("g6", *G6), floor_replicas=1),
    ]

    result = allocate(pools, [interactive(1.0)], mode="cost")

    # The floor (g6's one replica, target 0.8 / 0.96 img/s) is free: it fills first.
    assert result.assigned[I] == pytest.approx({"g6": 0.8 / 0.96, "inf2": 1.0 - 0.8 / 0.96})
    assert result.desired_replicas == {"inf2": 1, "g6": 1}


def test_the_floor_is_shared_by_headroom_and_capped_by_healthy_replicas() -> None:
    pools = [
        dataclasses.replace(pool("inf2", *INF2, replicas=1), floor_replicas=3),
        dataclasses.replace(pool("g6", *G6, replicas=2), floor_replicas=1),
        pool("trn1", *TRN1, replicas=2),
    ]

    result = allocate(pools, [interactive(1.0)], mode="cost")

    inf2_room = 0.8 / 0.67  # one healthy replica, whatever the floor says
    g6_room = 0.8 / 0.96  # one floor replica of two
    total = inf2_room + g6_room
    assert result.assigned[I] == pytest.approx({"inf2": inf2_room / total, "g6": g6_room / total})


def test_capacity_mode_ignores_the_floor() -> None:
    pools = [
        dataclasses.replace(pool("inf2", *INF2), floor_replicas=1),
        pool("g6", *G6),
    ]

    result = allocate(pools, [interactive(1.0)], mode="capacity")

    total = 0.8 / 0.67 + 0.8 / 0.96
    assert result.assigned[I] == pytest.approx(
        {"inf2": 0.8 / 0.67 / total, "g6": 0.8 / 0.96 / total}
    )


def test_a_shape_group_is_placed_first_on_its_own_pools_with_its_own_weights() -> None:
    pools = [
        pool("inf2", *INF2, replicas=4),
        pool("g5-triton", *TRITON, replicas=4),
        pool("g6", *G6, replicas=4),
    ]
    demand = [
        interactive(2.0),
        ClassDemand(I, 1.0, 2.0, pools=GPUS, size=LARGE),
        ClassDemand(B, 0.5, 60.0, pools=GPUS, size=LARGE),
    ]

    result = allocate(pools, demand, mode="cost")

    # Large interactive images meet 2 s only on g5-triton (0.68 * 2.25 = 1.53 s; g6 2.16 s);
    # large batch goes to the cheaper GPU per image, g5-triton again ($0.000190 against
    # g6's $0.000215), into what interactive left.
    assert result.group_weights[GPUS][I] == {"g5-triton": 1.0}
    assert result.group_weights[GPUS][B] == {"g5-triton": 1.0}
    # 512x512 work, placed last, keeps to the cheapest pool and never sees the GPU group.
    assert result.weights[I] == {"inf2": 1.0}
    assert result.assigned[I] == pytest.approx({"inf2": 2.0, "g5-triton": 1.0})
    assert result.assigned[B] == pytest.approx({"g5-triton": 0.5})
    # g5-triton keeps 1.5 * 0.68 * 2.25 slots busy: ceil(2.295 / 0.8) = 3 replicas.
    assert result.desired_replicas["g5-triton"] == 3
    assert result.utilization["g5-triton"] == pytest.approx(1.5 * 0.68 * LARGE / 4)


def test_a_group_takes_its_room_before_the_demand_any_pool_can_serve() -> None:
    pools = [pool("inf2", *INF2, replicas=1), pool("g5-triton", *TRITON, replicas=1)]
    demand = [interactive(1.5), ClassDemand(I, 0.4, 2.0, pools=frozenset({"g5-triton"}))]

    result = allocate(pools, demand, mode="cost")

    # The group takes 0.4 of g5-triton's 0.8 / 0.68 target; the rest goes cheapest first.
    assert result.group_weights[frozenset({"g5-triton"})][I] == {"g5-triton": 1.0}
    assert result.assigned[I] == pytest.approx(
        {"inf2": 0.8 / 0.67, "g5-triton": 0.4 + 1.5 - 0.8 / 0.67}
    )


def test_weights_exist_for_a_class_seen_only_in_a_group() -> None:
    pools = [pool("inf2", *INF2), pool("g6", *G6)]
    demand = [ClassDemand(I, 0.5, 2.0, pools=frozenset({"g6"}))]

    result = allocate(pools, demand, mode="cost")

    assert result.weights[I] == {"inf2": 1.0}  # as if a trickle of any-shape work arrived
    assert result.group_weights[frozenset({"g6"})][I] == {"g6": 1.0}


def test_input_order_does_not_change_the_result_with_shape_groups() -> None:
    pools = [
        pool("inf2", *INF2, replicas=2),
        pool("g5-triton", *TRITON, replicas=2),
        pool("g6", *G6, replicas=2),
        pool("trn1", *TRN1, replicas=1),
    ]
    # Two groups of the same width compete for g5-triton: the result must not depend on
    # which is listed first.
    demand = [
        interactive(2.0),
        ClassDemand(I, 1.0, 2.0, pools=GPUS, size=LARGE),
        ClassDemand(I, 1.0, 2.0, pools=frozenset({"g5-triton", "trn1"})),
        ClassDemand(B, 0.5, 60.0, pools=GPUS, size=LARGE),
    ]

    forward = allocate(pools, demand, mode="cost")
    backward = allocate(pools[::-1], demand[::-1], mode="cost")

    assert forward == backward


def test_a_pool_with_a_max_share_takes_that_share_while_others_have_room() -> None:
    pools = [
        dataclasses.replace(pool("inf2", *INF2, replicas=10), max_share=0.4),
        pool("trn1", *TRN1, replicas=10),
    ]
    # 3 img/s of interactive and 1 img/s of 768x768 batch work (2.25 each): 5.25 units in
    # all, of which inf2 may take 0.4 x 5.25 = 2.1. Interactive goes first: 2.1 on inf2.
    demand = [interactive(3.0), ClassDemand(B, 1.0, 60.0, size=LARGE)]

    result = allocate(pools, demand, mode="cost")

    assert result.assigned[I] == pytest.approx({"inf2": 2.1, "trn1": 0.9})
    assert result.assigned[B] == pytest.approx({"trn1": 1.0})
    assert result.total_deficit_per_s == 0.0


def test_a_max_share_gives_way_when_no_other_pool_has_room() -> None:
    pools = [
        dataclasses.replace(pool("inf2", *INF2, replicas=10), max_share=0.4),
        pool("trn1", *TRN1, replicas=1),  # room for 0.8 / 0.51 = 1.57 img/s at target
    ]

    result = allocate(pools, [interactive(4.0)], mode="cost")

    # inf2 takes its 1.6, trn1 is full at 1.57, and the rest goes back to inf2.
    trn1 = 0.8 / 0.51
    assert result.assigned[I] == pytest.approx({"inf2": 4.0 - trn1, "trn1": trn1})
    assert result.total_deficit_per_s == 0.0


def test_a_max_share_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match="max_share"):
        allocate(
            [dataclasses.replace(pool("inf2", *INF2), max_share=1.5)],
            [interactive(1.0)],
            mode="cost",
        )
