"""The simulator's parts on their own: rate curves, the oracle, the scaler, the baselines."""

from __future__ import annotations

import random
from typing import Any

import pytest

from backends.clock import ManualClock
from gateway.health import Failure
from gateway.scheduling.types import PoolView, ReplicaView, RequestProfile, Snapshot
from loadtest.sim.autoscaler import Autoscaler, InsufficientCapacity
from loadtest.sim.baselines import ALB_POLL_S, LatencyEwmaPolicy, StaticAlbPolicy
from loadtest.sim.oracle import PoolOffer, cheapest_whole_replicas, oracle_cost
from loadtest.sim.scenario import parse_scenario
from loadtest.sim.workload import Arrival


@pytest.mark.parametrize(
    ("rate", "t_s", "expected"),
    [
        ({"kind": "constant", "per_s": 2.0}, 100.0, 2.0),
        (
            {
                "kind": "steps",
                "steps": [{"at_s": 0, "per_s": 1}, {"at_s": 10, "per_s": 3, "ramp_s": 10}],
            },
            15.0,
            2.0,
        ),
        (
            {
                "kind": "steps",
                "steps": [{"at_s": 0, "per_s": 1}, {"at_s": 10, "per_s": 3, "ramp_s": 10}],
            },
            25.0,
            3.0,
        ),
        (
            {
                "kind": "diurnal",
                "trough_per_s": 2,
                "peak_per_s": 10,
                "period_s": 100,
                "peak_at_s": 50,
            },
            50.0,
            10.0,
        ),
        (
            {
                "kind": "diurnal",
                "trough_per_s": 2,
                "peak_per_s": 10,
                "period_s": 100,
                "peak_at_s": 50,
            },
            0.0,
            2.0,
        ),
        (
            {
                "kind": "diurnal",
                "trough_per_s": 2,
                "peak_per_s": 10,
                "period_s": 100,
                "peak_at_s": 50,
            },
            25.0,
            6.0,
        ),
    ],
    ids=["constant", "mid-ramp", "after-ramp", "diurnal-peak", "diurnal-trough", "diurnal-half"],
)
def test_rate_curves(rate: dict[str, Any], t_s: float, expected: float, small_data: Any) -> None:
    small_data["arrivals"]["rate"] = rate
    scenario = parse_scenario(small_data)
    assert scenario.arrivals.rate.at(t_s) == pytest.approx(expected)


def _one_pool(**pool: Any) -> Any:
    return parse_scenario(
        {
            "name": "one",
            "duration_s": 3600,
            "oracle_bucket_s": 3600,
            "autoscaler": {"target_utilization": 0.5},
            "arrivals": {"rate": {"kind": "constant", "per_s": 1.0}},
            "pools": [
                {
                    "name": "p",
                    "accelerator": "x",
                    "price_per_hour": 2.0,
                    "latency_s": 0.5,
                    "replicas": {"initial": 1, "min": 1, "max": 10},
                }
                | pool
            ],
        }
    )


def test_oracle_pays_for_the_work_at_target_utilization_above_the_minimum() -> None:
    scenario = _one_pool()
    # 7200 images x 0.5 s = 3600 busy seconds; at utilization 0.5 that is 2 replica-hours.
    arrivals = [Arrival(t_s=i * 0.5, batch=False, shape=0, n=1) for i in range(7200)]
    result = oracle_cost(scenario, arrivals)
    assert result.cost_usd == pytest.approx(2 * 2.0)
    assert result.images_served == 7200
    # Demand below the minimum's capacity costs only the minimum.
    few = arrivals[:100]
    assert oracle_cost(scenario, few).cost_usd == pytest.approx(1 * 2.0)


def test_oracle_counts_demand_beyond_every_maximum_as_unservable() -> None:
    scenario = _one_pool(replicas={"initial": 1, "min": 1, "max": 1})
    arrivals = [Arrival(t_s=i * 0.1, batch=False, shape=0, n=1) for i in range(36000)]
    result = oracle_cost(scenario, arrivals)
    # One replica at 0.5 utilization serves 3600 images an hour.
    assert result.images_served == 3600
    assert result.unservable_requests == 36000 - 3600


def test_oracle_in_whole_replicas_rounds_up_and_holds_what_the_scaler_holds() -> None:
    scenario = _one_pool()
    # 10800 images x 0.5 s at utilization 0.5: 3 replica-hours, in whole replicas too.
    arrivals = [Arrival(t_s=i / 3.0, batch=False, shape=0, n=1) for i in range(10800)]
    result = oracle_cost(scenario, arrivals)
    assert result.cost_usd == pytest.approx(3 * 2.0)
    assert result.whole_cost_usd == pytest.approx(3 * 2.0)
    # 2.5 replicas' worth takes 3 whole ones.
    result = oracle_cost(scenario, arrivals[:9000])
    assert result.cost_usd == pytest.approx(2.5 * 2.0)
    assert result.whole_cost_usd == pytest.approx(3 * 2.0)
    summary = result.summary()
    assert summary["whole_replicas"]["replica_hours"] == {"p": pytest.approx(3.0)}


def test_oracle_held_through_the_scaler_pays_for_the_window_after_a_peak() -> None:
    scenario = parse_scenario(
        {
            "name": "peak",
            "duration_s": 600,
            "oracle_bucket_s": 60,
            "autoscaler": {"target_utilization": 0.5, "scale_down_cooldown_s": 180},
            "arrivals": {"rate": {"kind": "constant", "per_s": 1.0}},
            "pools": [
                {
                    "name": "p",
                    "accelerator": "x",
                    "price_per_hour": 3.6,
                    "latency_s": 0.5,
                    "cold_start_s": 60,
                    "replicas": {"initial": 1, "min": 1, "max": 10},
                }
            ],
        }
    )
    # 4 images/s (4 replicas at 0.5) in the fifth minute, 1 image/s otherwise.
    arrivals = [
        Arrival(t_s=t / rate, batch=False, shape=0, n=1)
        for minute in range(10)
        for rate in [4.0 if minute == 4 else 1.0]
        for t in range(int(minute * 60 * rate), int((minute + 1) * 60 * rate))
    ]
    result = oracle_cost(scenario, arrivals)
    per_minute = 3.6 / 60
    assert result.whole_cost_usd == pytest.approx((9 * 1 + 4) * per_minute)
    # Held: started a minute ahead (minute 3) and kept 3 minutes after (to minute 7).
    assert result.held_cost_usd == pytest.approx((5 * 1 + 5 * 4) * per_minute)


def test_cheapest_whole_replicas_mixes_pools_where_rounding_one_up_costs_more() -> None:
    big = PoolOffer("big", units=10.0, price=8.0, least=0, most=5)  # 0.8 $ a unit
    small = PoolOffer("small", units=3.0, price=3.0, least=0, most=5)  # 1.0 $ a unit
    both = frozenset({"big", "small"})
    # 12 units: two big replicas (16 $) or four small (12 $) lose to one of each (11 $).
    assert cheapest_whole_replicas([big, small], [(both, 12.0)]) == {"big": 1, "small": 1}
    # 4 units only the small pool may serve (a shape, an objective) and 12 in all.
    needs = [(frozenset({"small"}), 4.0), (both, 12.0)]
    assert cheapest_whole_replicas([big, small], needs) == {"big": 0, "small": 4}
    # A pool's minimum is paid for whatever the demand; beyond every maximum, the most.
    floor = PoolOffer("small", units=3.0, price=3.0, least=2, most=5)
    assert cheapest_whole_replicas([big, floor], [(both, 1.0)]) == {"big": 0, "small": 2}
    assert cheapest_whole_replicas([big, small], [(both, 1000.0)]) == {"big": 5, "small": 5}


def test_scaler_scales_up_at_once_and_down_after_the_window(small_scenario: Any) -> None:
    scenario = small_scenario()
    scaler = Autoscaler(scenario.autoscaler, scenario.pools)
    assert scaler.apply("inf2", 0.0, 6, cluster_max=8) == 6
    assert scaler.apply("inf2", 15.0, 2, cluster_max=8) == 6  # held by the stabilization window
    assert scaler.apply("inf2", 15.0 + scenario.autoscaler.scale_down_cooldown_s + 1, 2, 8) == 2
    # Wanting more than the cluster has is a shortfall, logged for the ALB checker.
    assert scaler.apply("inf2", 400.0, 8, cluster_max=3) == 6  # at most +4 per sync
    assert scaler.events == [InsufficientCapacity(400.0, "inf2", 6, 3)]


def test_scaler_tolerance_is_on_the_unrounded_ratio_as_hpa_does(small_scenario: Any) -> None:
    scenario = small_scenario()  # target utilization 0.7, tolerance 0.1
    scaler = Autoscaler(scenario.autoscaler, scenario.pools)
    scaler.apply("inf2", 0.0, 4, cluster_max=8)
    # KEDA's metric asks for 4.2 replicas' worth over 4: a ratio of 1.05, no change (a
    # rounded rule would read it as 5 / 4 = 1.25 and add a replica).
    assert scaler.recommendation("inf2", 4.2, live=4) == 4
    assert scaler.recommendation("inf2", 4.5, live=4) == 5  # 1.125: ceil(4.5)
    assert scaler.recommendation("inf2", 3.5, live=4) == 4  # 0.875: ceil(3.5)
    assert scaler.recommendation("inf2", 3.4, live=4) == 4  # 0.85: ceil(3.4)
    assert scaler.recommendation("inf2", 2.9, live=4) == 3
    # On its own utilization: 0.74 / 0.7 = 1.057 over 4 ready replicas stays at 4.
    for t in range(30):
        scaler.observe("inf2", float(t), busy=74, ready_slots=100)
    assert scaler.utilization_recommendation("inf2", ready=4, live=4) == 4
    for t in range(30, 60):
        scaler.observe("inf2", float(t), busy=80, ready_slots=100)
    # 0.8 / 0.7 = 1.14: ceil(4 x 1.14) = 5.
    assert scaler.utilization_recommendation("inf2", ready=4, live=4) == 5


def _pool(name: str, replicas: int = 1) -> PoolView:
    views = tuple(ReplicaView(url=f"http://{name}-{i}", pool=name) for i in range(replicas))
    return PoolView(name, "x", 1.0, 1, 1.0, views)


def test_latency_ewma_herds_onto_untried_pools_and_cools_down_on_429() -> None:
    clock = ManualClock()
    policy = LatencyEwmaPolicy(random.Random(1), clock)
    snap = Snapshot(pools=(_pool("a"), _pool("b")))
    request = RequestProfile()
    policy.on_success("a", 1.5, 0.0)
    assert {policy.decide(request, snap, frozenset()).pool for _ in range(20)} == {"b"}  # type: ignore[union-attr]
    policy.on_success("b", 3.0, 0.0)
    assert policy.decide(request, snap, frozenset()).pool == "a"  # type: ignore[union-attr]
    policy.on_failure("a", Failure.CAPACITY, 0.0)
    assert policy.decide(request, snap, frozenset()).pool == "b"  # type: ignore[union-attr]
    policy.on_failure("b", Failure.CAPACITY, 0.0)
    assert policy.decide(request, snap, frozenset()) is None  # every deployment cooled down
    clock.advance(5.0)
    assert policy.decide(request, snap, frozenset()) is not None


def test_static_alb_switches_to_equal_weights_at_the_next_poll_for_good() -> None:
    policy = StaticAlbPolicy({"a": 3.0, "b": 1.0})
    snap = Snapshot(pools=(_pool("a", 2), _pool("b", 2)))
    request = RequestProfile()
    picks = [policy.decide(request, snap, frozenset()).pool for _ in range(400)]  # type: ignore[union-attr]
    assert picks.count("a") == 300
    shortfall = [InsufficientCapacity(10.0, "a", 5, 2)]
    policy.on_tick(ALB_POLL_S - 1, shortfall)
    assert policy.mode == "cost"  # not polled yet
    policy.on_tick(ALB_POLL_S, shortfall)
    assert policy.mode == "capacity"
    policy.on_tick(2 * ALB_POLL_S, [])
    assert policy.mode == "capacity"  # nothing checks that capacity came back
    picks = [policy.decide(request, snap, frozenset()).pool for _ in range(400)]  # type: ignore[union-attr]
    assert picks.count("a") == 200
