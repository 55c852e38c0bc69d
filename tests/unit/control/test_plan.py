"""The control loop's replica plan: what `sd_gateway_pool_desired_replicas` asks autoscalers for.

Figures: inf2 $0.7582/h at 0.67 s, g5 $1.006/h at 0.92 s (FACTS.md, the paper's
sample deployment), one slot per replica, target utilization 0.8.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import generate_latest

from backends.clock import ManualClock
from gateway.control.loop import ControlLoop
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry
from gateway.scheduling.types import Priority, RequestProfile
from gateway.settings import settings_from_dict

I = Priority.INTERACTIVE  # noqa: E741


def urls(first_port: int, count: int) -> list[str]:
    return [f"http://127.0.0.1:{first_port + i}" for i in range(count)]


def pools(
    inf2: int = 2,
    *,
    inf2_max: int | None = 10,
    g5_min: int = 0,
    inf2_shapes: list[str] | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "name": "inf2",
            "accelerator": "inf2.xlarge",
            "price_per_hour": 0.7582,
            "expected_latency_seconds": 0.67,
            "replicas": urls(9001, inf2),
            "max_replicas": inf2_max,
            "shapes": inf2_shapes,
        },
        {
            "name": "g5",
            "accelerator": "g5.xlarge",
            "price_per_hour": 1.006,
            "expected_latency_seconds": 0.92,
            "replicas": urls(9101, 1),
            "min_replicas": g5_min,
            "max_replicas": 4,
        },
    ]


class Rig:
    def __init__(self, pool_list: list[dict[str, Any]], **overrides: Any) -> None:
        self.clock = ManualClock(1000.0)
        self.settings = settings_from_dict({"pools": pool_list} | overrides)
        self.registry = PoolRegistry(self.settings, self.clock)
        self.metrics = GatewayMetrics(self.registry.snapshot, lambda: self.settings.mode)
        self.loop = ControlLoop(self.registry, self.settings, self.clock, self.metrics)

    def run(self, interactive_per_s: float, seconds: int) -> dict[str, int]:
        """Steady demand, one tick a second; returns the last plan's desired replicas."""
        for _ in range(seconds):
            self.registry.arrivals_by_class[I].add(self.clock.now(), interactive_per_s)
            self.clock.advance(1.0)
            self.loop.tick()
        return self.desired()

    def desired(self) -> dict[str, int]:
        plan = self.loop.status.plan
        assert plan is not None
        return dict(plan.desired_replicas)

    def capped(self) -> frozenset[str]:
        plan = self.loop.status.plan
        assert plan is not None
        return plan.capped

    def resize(self, pool: str, count: int) -> None:
        first = 9001 if pool == "inf2" else 9101
        self.registry.get(pool).set_replicas(urls(first, count), self.clock.now())


def test_the_plan_grows_the_cheapest_pool_past_what_it_has() -> None:
    rig = Rig(pools(inf2=2))

    desired = rig.run(5.0, seconds=10)

    # All 5 img/s fit inf2's maximum: ceil(5 x 0.67 / 0.8) = 5 replicas. g5 keeps the one
    # replica the current routing fills while inf2 grows (2 inf2 carry 2.39 img/s only).
    assert desired == {"inf2": 5, "g5": 1}
    allocation = rig.loop.status.allocation
    assert allocation is not None
    # What the replicas it has take: both full at target.
    assert allocation.placed_replicas == pytest.approx({"inf2": 2.0, "g5": 1.0})
    # The metric exports the unrounded share, so that a sum over gateway pods rounds once:
    # 5 x 0.67 / 0.8 = 4.1875 inf2 replicas.
    plan = rig.loop.status.plan
    assert plan is not None
    assert plan.replicas_share == pytest.approx({"inf2": 5 * 0.67 / 0.8, "g5": 1.0})
    text = generate_latest(rig.metrics.registry).decode()
    assert 'sd_gateway_pool_desired_replicas{pool="inf2"} 4.1875' in text


def test_a_pool_that_does_not_scale_is_planned_at_what_it_has() -> None:
    rig = Rig(pools(inf2=2, inf2_max=None))

    desired = rig.run(5.0, seconds=10)

    # inf2 cannot grow: its 2 replicas take 2.39 img/s, the rest goes to g5 (max 4):
    # ceil((5 - 1.6 / 0.67) x 0.92 / 0.8) = 3.
    assert desired == {"inf2": 2, "g5": math.ceil((5 - 1.6 / 0.67) * 0.92 / 0.8)}


def test_replicas_that_run_anyway_take_traffic_first() -> None:
    rig = Rig(pools(inf2=2, g5_min=1))

    desired = rig.run(0.5, seconds=10)

    # g5's minimum replica is paid for whatever happens: 0.5 img/s fits it at 0.8.
    assert dict(rig.registry.weights[I]) == pytest.approx({"g5": 1.0})
    assert desired == {"inf2": 0, "g5": 1}


def test_losing_replicas_nobody_asked_to_lose_caps_the_pool_and_asks_for_one_more() -> None:
    rig = Rig(pools(inf2=5))
    assert rig.run(5.0, seconds=310) == {"inf2": 5, "g5": 0}  # wanted 5 for 300 s

    rig.resize("inf2", 2)  # evicted: no nodes to be had
    desired = rig.run(5.0, seconds=2)

    assert rig.capped() == {"inf2"}
    # Planned at 2 (carrying 2.39 img/s), asking for a third; g5 takes the rest, to its max.
    assert desired["inf2"] == 3
    plan = rig.loop.status.plan
    assert plan is not None
    assert plan.replicas_share["inf2"] == pytest.approx(3.0)  # 2 full replicas x 3 / 2
    assert desired["g5"] == min(4, math.ceil((5 - 1.6 / 0.67) * 0.92 / 0.8))

    rig.resize("inf2", 3)  # the cluster granted one: capacity is back
    desired = rig.run(5.0, seconds=2)

    assert rig.capped() == frozenset()
    assert desired["inf2"] == 5


def test_a_pool_that_never_gets_what_it_asks_for_is_capped_after_the_timeout() -> None:
    rig = Rig(pools(inf2=2), scale_up_timeout_s=60.0)

    assert rig.run(5.0, seconds=55)["inf2"] == 5
    assert rig.capped() == frozenset()
    desired = rig.run(5.0, seconds=10)  # 60 s after it last had what it was asked for

    assert rig.capped() == {"inf2"}
    assert desired["inf2"] == 3


def test_scaling_down_as_asked_is_not_a_shortfall() -> None:
    rig = Rig(pools(inf2=5))
    rig.run(5.0, seconds=10)

    rig.run(1.0, seconds=400)  # demand falls; the plan asks for fewer, for long enough
    rig.resize("inf2", 2)
    rig.run(1.0, seconds=2)

    assert rig.capped() == frozenset()


def test_a_shape_only_some_pools_serve_gets_its_own_weights() -> None:
    rig = Rig(pools(inf2=2, inf2_shapes=["512x512"]))
    for _ in range(10):
        rig.registry.record_arrival(I, 1, "768x768", RequestProfile(width=768, height=768).size)
        rig.registry.record_arrival(I, 1, "512x512", RequestProfile().size)
        rig.clock.advance(1.0)
    rig.loop.tick()

    large = rig.registry.snapshot(I, "768x768")
    small = rig.registry.snapshot(I, "512x512")

    assert {p.name: p.weight for p in large.pools} == {"inf2": 0.0, "g5": 1.0}
    assert {p.name: p.weight for p in small.pools} == {"inf2": 1.0, "g5": 0.0}
    # The group's 768x768 demand is 2.25 times the work per image on g5.
    demand = {(d.priority, d.pools): d for d in rig.loop.demand()}
    assert demand[(I, frozenset({"g5"}))].size == pytest.approx(2.25)


@pytest.mark.parametrize(("busy", "inf2_planned"), [(True, 5), (False, 0)])
def test_capacity_errors_leave_the_plan_only_from_a_pool_with_room(
    busy: bool, inf2_planned: int
) -> None:
    rig = Rig(pools(inf2=2))
    rig.run(5.0, seconds=10)
    inf2 = rig.registry.get("inf2")
    inf2.constrained_until = rig.clock.now() + 60.0  # 429s for the next minute
    for replica in inf2.replicas.values():
        replica.in_flight = 1 if busy else 0  # one slot each: full, or idle

    desired = rig.run(5.0, seconds=15)

    # A full queue answers 429: the pool needs the replicas it was planned. An idle pool
    # answering 429 cannot serve, and after 10 s its share goes to g5 (up to g5's max).
    assert desired["inf2"] == inf2_planned
    assert desired["g5"] == (1 if busy else 4)


def arrive(rig: Rig, per_s: int, seconds: int) -> dict[str, int]:
    """Requests through `record_arrival`, as the router counts them; a tick a second."""
    for _ in range(seconds):
        for _ in range(per_s):
            rig.registry.record_arrival(I, 1, "512x512", 1.0)
        rig.clock.advance(1.0)
        rig.loop.tick()
    return rig.desired()


@pytest.mark.parametrize(("sigmas", "inf2_after_blip"), [(2.0, 5), (0.0, 6)])
def test_the_plan_follows_a_rise_at_once_only_beyond_poisson_noise(
    sigmas: float, inf2_after_blip: int
) -> None:
    rig = Rig(pools(inf2=2, inf2_max=20), plan_rise_sigmas=sigmas)
    # Steady 5 img/s for two minutes: ceil(5 x 0.67 / 0.8) = ceil(4.19) = 5 inf2 replicas.
    assert arrive(rig, 5, seconds=120)["inf2"] == 5

    # 6 img/s for 10 s: the one-minute rate is 5.17, the 10 s rate 6; the rise of 0.83 is
    # within twice the noise of a 10 s rate, 2 x sqrt(6 / 10) = 1.55. Planned on the
    # one-minute rate, ceil(5.17 x 0.67 / 0.8) = 5; on the 10 s rate it would be
    # ceil(6 x 0.67 / 0.8) = ceil(5.03) = 6.
    assert arrive(rig, 6, seconds=10)["inf2"] == inf2_after_blip

    # A real step, to 10 img/s: 10 - 5.83 = 4.17 is beyond 2 x sqrt(10 / 10) = 2, and the
    # plan takes the 10 s rate at once: ceil(10 x 0.67 / 0.8) = ceil(8.38) = 9.
    assert arrive(rig, 10, seconds=10)["inf2"] == 9


def test_a_pool_with_a_max_share_is_planned_for_that_share_and_the_next_pool_for_the_rest() -> None:
    hedged = pools(inf2=2, inf2_max=20)
    hedged[0]["max_share"] = 0.5
    rig = Rig(hedged)

    desired = rig.run(5.0, seconds=10)

    # inf2 carries half of 5 img/s: ceil(2.5 x 0.67 / 0.8) = ceil(2.09) = 3 replicas; g5
    # the other half: ceil(2.5 x 0.92 / 0.8) = ceil(2.88) = 3, within its maximum of 4.
    assert desired == {"inf2": 3, "g5": 3}
    unhedged = Rig(pools(inf2=2, inf2_max=20)).run(5.0, seconds=10)
    assert unhedged == {"inf2": 5, "g5": 1}


def test_a_burst_spilling_onto_a_dearer_pool_adds_no_replica_there_once_the_cheap_pool_is_up() -> (
    None
):
    rig = Rig(pools(inf2=5, inf2_max=10))
    # Steady 5 img/s: ceil(5 x 0.67 / 0.8) = 5 inf2 replicas, which it has.
    assert arrive(rig, 5, seconds=120) == {"inf2": 5, "g5": 0}

    # 6 img/s for 10 s is within the noise (see above): the plan stays on the one-minute
    # rate and inf2 has what it asks for. Routing sends the 10 s rate, 6 img/s, and inf2's
    # 5 replicas take 5 x 0.8 / 0.67 = 5.97 at target: the rest spills onto g5. That spill
    # is inf2's headroom's business, not a g5 replica the autoscaler would hold for minutes.
    desired = arrive(rig, 6, seconds=10)

    allocation = rig.loop.status.allocation
    assert allocation is not None
    assert allocation.placed_replicas["g5"] > 0
    assert desired == {"inf2": 5, "g5": 0}
