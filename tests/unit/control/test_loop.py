"""The control loop's tick on a manual clock: what it publishes for the hot path."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from backends.clock import ManualClock
from gateway.control.loop import ControlLoop
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry
from gateway.scheduling.types import Priority
from gateway.settings import ConfigError, settings_from_dict

POOLS = [
    {
        "name": "inf2",
        "accelerator": "inf2.xlarge",
        "price_per_hour": 0.7582,
        "expected_latency_seconds": 0.67,
        "replicas": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
    },
    {
        "name": "g5",
        "accelerator": "g5.xlarge",
        "price_per_hour": 1.006,
        "expected_latency_seconds": 0.92,
        "replicas": ["http://127.0.0.1:9003"],
    },
]


class Rig:
    def __init__(self, **overrides: Any) -> None:
        self.clock = ManualClock(1000.0)
        self.settings = settings_from_dict(
            {"pools": POOLS, "capacity_mode_hold_s": 5.0} | overrides
        )
        self.registry = PoolRegistry(self.settings, self.clock)
        self.metrics = GatewayMetrics(self.registry.snapshot, lambda: self.settings.mode)
        self.loop = ControlLoop(self.registry, self.settings, self.clock, self.metrics)

    def demand(self, interactive_per_s: float, batch_per_s: float = 0.0, seconds: int = 10) -> None:
        for _ in range(seconds):
            self.registry.arrivals_by_class[Priority.INTERACTIVE].add(
                self.clock.now(), interactive_per_s
            )
            self.registry.arrivals_by_class[Priority.BATCH].add(self.clock.now(), batch_per_s)
            self.clock.advance(1.0)

    def weights(self, priority: Priority = Priority.INTERACTIVE) -> dict[str, float]:
        return dict(self.registry.weights.get(priority, {}))


def test_low_load_goes_to_the_cheapest_pool() -> None:
    rig = Rig()
    rig.demand(0.5)
    status = rig.loop.tick()
    assert status.effective_mode == "cost"
    assert rig.weights() == pytest.approx({"inf2": 1.0})
    assert status.allocation is not None
    # 0.5 img/s x 0.67 s / (1 slot x 0.8) = 0.42 -> one inf2 replica, none of g5
    assert status.allocation.desired_replicas == {"inf2": 1, "g5": 0}


def test_cheap_pool_constrained_switches_mode_and_moves_weight() -> None:
    rig = Rig()
    rig.demand(0.5)
    rig.loop.tick()
    rig.registry.get("inf2").constrained_until = rig.clock.now() + 30
    status = rig.loop.tick()
    assert status.effective_mode == "capacity"
    assert rig.weights() == pytest.approx({"g5": 1.0})
    assert [(t.subject, t.new) for t in status.transitions] == [
        ("inf2", "constrained"),
        ("mode", "capacity"),
    ]
    text = generate_latest(rig.metrics.registry).decode()
    assert 'sd_gateway_transitions_total{kind="mode",subject="mode",to="capacity"} 1.0' in text
    # the fault clears: RECOVERING, then back to cost after the hold
    rig.clock.advance(31)
    rig.loop.tick()
    assert rig.registry.control_states["inf2"].value == "recovering"
    for _ in range(5):
        rig.clock.advance(1)
        rig.loop.tick()
    assert rig.loop.status.effective_mode == "cost"
    assert rig.weights() == pytest.approx({"inf2": 1.0})


def test_demand_above_capacity_spreads_sheds_batch_and_asks_for_replicas() -> None:
    rig = Rig()
    # capacity at 0.8: inf2 2/0.67*0.8 = 2.39, g5 1/0.92*0.8 = 0.87 -> 3.26 img/s
    rig.demand(3.0, batch_per_s=1.0)
    status = rig.loop.tick()
    assert status.effective_mode == "capacity"
    assert status.allocation is not None
    assert status.allocation.total_deficit_per_s > 0
    assert 0.0 <= status.batch_admit_fraction < 1.0
    assert status.allocation.desired_replicas["inf2"] > 2
    assert set(rig.weights()) == {"inf2", "g5"}
    text = generate_latest(rig.metrics.registry).decode()
    assert 'sd_gateway_pool_desired_replicas{pool="inf2"}' in text


def test_spend_guardrail_defers_batch_first() -> None:
    rig = Rig(max_spend_per_hour_usd=1.0)
    rig.demand(0.5, batch_per_s=2.0)
    status = rig.loop.tick()
    assert status.spend_limited is not None
    assert "batch" in status.spend_limited
    assert status.batch_admit_fraction < 1.0
    assert status.allocation is not None
    assert status.allocation.spend_per_hour_usd <= 1.0 + 1e-9


def test_spend_guardrail_sends_interactive_to_the_cheapest_pool_when_it_must() -> None:
    rig = Rig(max_spend_per_hour_usd=0.8)
    rig.demand(2.2)  # wants inf2 x2 + g5: $2.52/h
    status = rig.loop.tick()
    assert status.batch_admit_fraction == 0.0
    assert status.spend_limited is not None
    assert "interactive" in status.spend_limited


@pytest.mark.parametrize("mode", ["latency", "round_robin", "least_request"])
def test_plain_policies_get_no_loop_weights(mode: str) -> None:
    rig = Rig()
    rig.loop.set_mode(mode)
    assert rig.registry.weights == {}
    assert rig.loop.status.effective_mode == mode


def test_pinned_capacity_mode_spreads_even_at_low_load() -> None:
    rig = Rig()
    rig.demand(0.5)
    rig.loop.set_mode("capacity")
    weights = rig.weights()
    assert weights["inf2"] > weights["g5"] > 0


def test_batch_work_may_use_part_of_the_headroom_above_the_target() -> None:
    # inf2 may grow to 10 replicas, so 3.4 img/s is no shortfall: the loop stays in cost
    # mode while the autoscaler catches up. What the pools have now takes, at 0.8,
    # 0.8 x (2 / 0.67 + 1 / 0.92) = 3.26 img/s, and at the default batch limit, halfway
    # to full (0.9), 0.9 x 4.07 = 3.66 img/s.
    pools = [POOLS[0] | {"max_replicas": 10}, POOLS[1]]
    capacity = 2 / 0.67 + 1 / 0.92

    rig = Rig(pools=pools)
    rig.demand(2.4, batch_per_s=1.0)
    status = rig.loop.tick()
    assert status.effective_mode == "cost"
    assert status.allocation is not None
    assert status.allocation.total_deficit_per_s > 0  # above the target...
    assert status.batch_admit_fraction == 1.0  # ...but within what batch may use

    rig.demand(3.0, batch_per_s=1.0)  # 4.0 img/s: beyond 3.66, the excess is shed
    status = rig.loop.tick()
    assert status.effective_mode == "cost"
    assert status.batch_admit_fraction == pytest.approx(1.0 - (4.0 - 0.9 * capacity))

    strict = Rig(pools=pools, batch_admit_utilization=0.8)  # no headroom for batch
    strict.demand(2.4, batch_per_s=1.0)
    status = strict.loop.tick()
    assert status.batch_admit_fraction == pytest.approx(1.0 - (3.4 - 0.8 * capacity))


def test_batch_may_not_be_held_below_the_target() -> None:
    with pytest.raises(ConfigError, match=r"batch_admit_utilization: must be at least target_u"):
        settings_from_dict(
            {"pools": POOLS, "target_utilization": 0.8, "batch_admit_utilization": 0.7}
        )
