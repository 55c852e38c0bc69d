"""Table tests for the scheduling filters: pools in, kept pool names (in order) out."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.scheduling.filters import (
    CapacityFilter,
    Filter,
    HealthFilter,
    ShapeFilter,
    SloFilter,
)
from gateway.scheduling.types import CapacityState, RequestProfile

NEURON_512 = frozenset({"512x512"})

Spec = dict[str, Any]  # keyword arguments of the `make_pool` fixture

CASES: list[tuple[Filter, RequestProfile, list[Spec], list[str]]] = [
    (
        ShapeFilter(),
        RequestProfile(width=512, height=512),
        [{"name": "inf2", "shapes": NEURON_512}, {"name": "g5"}],
        ["inf2", "g5"],
    ),
    (
        ShapeFilter(),
        RequestProfile(width=768, height=768),
        [{"name": "inf2", "shapes": NEURON_512}, {"name": "g5"}],
        ["g5"],
    ),
    (
        ShapeFilter(),
        RequestProfile(width=1024, height=1024),
        [{"name": "inf2", "shapes": NEURON_512}, {"name": "trn1", "shapes": NEURON_512}],
        [],
    ),
    (
        HealthFilter(),
        RequestProfile(),
        [
            {"name": "a"},
            {"name": "b", "replicas": 0, "unhealthy": 2},
            {"name": "c", "unhealthy": 3},
        ],
        ["a", "c"],
    ),
    (
        HealthFilter(),
        RequestProfile(),
        [
            {"name": "down", "state": CapacityState.UNAVAILABLE},
            {"name": "tight", "state": CapacityState.CONSTRAINED},
            {"name": "back", "state": CapacityState.RECOVERING},
        ],
        ["tight", "back"],
    ),
    (HealthFilter(), RequestProfile(), [{"name": "empty", "replicas": 0}], []),
    (
        # E = Q L / slots + L with L = 1 s on 2 slots: Q=0 1.0 s, Q=2 2.0 s, Q=3 2.5 s.
        SloFilter(),
        RequestProfile(slo_s=2.0),
        [{"name": "idle"}, {"name": "edge", "outstanding": 2}, {"name": "late", "outstanding": 3}],
        ["idle", "edge"],
    ),
    (
        SloFilter(),
        RequestProfile(slo_s=60.0),
        [{"name": "late", "outstanding": 3}, {"name": "no-slots", "replicas": 0, "unhealthy": 1}],
        ["late"],
    ),
    (
        CapacityFilter(),
        RequestProfile(),
        [
            {"name": "tight", "state": CapacityState.CONSTRAINED},
            {"name": "ok"},
            {"name": "back", "state": CapacityState.RECOVERING},
        ],
        ["ok", "back"],
    ),
    (
        CapacityFilter(),
        RequestProfile(),
        [
            {"name": "tight", "state": CapacityState.CONSTRAINED},
            {"name": "tighter", "state": CapacityState.CONSTRAINED},
        ],
        ["tight", "tighter"],
    ),
    (
        SloFilter(),
        RequestProfile(slo_s=0.5),
        [{"name": "slow", "latency_s": 0.67}, {"name": "nan", "latency_s": math.nan}],
        [],
    ),
]

IDS = [
    "shape-512-both",
    "shape-768-gpu-only",
    "shape-1024-none",
    "health-needs-a-healthy-replica",
    "health-drops-unavailable-keeps-constrained-and-recovering",
    "health-no-replicas",
    "slo-boundary-inclusive",
    "slo-infinite-wait-fails",
    "capacity-drops-constrained-while-others-remain",
    "capacity-keeps-all-when-all-constrained",
    "slo-nan-and-too-slow-fail",
]


@pytest.mark.parametrize(("flt", "request_profile", "specs", "expected"), CASES, ids=IDS)
def test_filter_keeps_expected_pools_in_order(
    make_pool: Any,
    flt: Filter,
    request_profile: RequestProfile,
    specs: list[Spec],
    expected: list[str],
) -> None:
    pools = [make_pool(**spec) for spec in specs]
    assert [p.name for p in flt(request_profile, pools)] == expected


ALL_FILTERS: list[Filter] = [ShapeFilter(), HealthFilter(), SloFilter(), CapacityFilter()]


@pytest.mark.parametrize("flt", ALL_FILTERS, ids=lambda f: f.name)
def test_filter_of_nothing_is_nothing(flt: Filter) -> None:
    assert flt(RequestProfile(), []) == []


def test_filters_preserve_input_order(make_pool: Any) -> None:
    pools = [make_pool(name) for name in "zyxw"]
    for flt in ALL_FILTERS:
        assert [p.name for p in flt(RequestProfile(), pools)] == list("zyxw")
