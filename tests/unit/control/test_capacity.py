"""The capacity state machine on a manual clock: pool states, mode, hysteresis."""

from __future__ import annotations

import pytest

from backends.clock import ManualClock
from gateway.control.capacity import CapacityStateMachine, Mode, PoolSignal, Transition
from gateway.scheduling.types import CapacityState

CAPACITY = 10.0  # images/s of usable target capacity in every tick below


def ok(name: str, replicas: int = 2) -> PoolSignal:
    return PoolSignal(name, replicas, replicas, capacity_errors=False)


def capacity_errors(name: str) -> PoolSignal:
    return PoolSignal(name, 2, 2, capacity_errors=True)


def lost_one(name: str) -> PoolSignal:
    return PoolSignal(name, 1, 2, capacity_errors=False)


def down(name: str) -> PoolSignal:
    return PoolSignal(name, 0, 2, capacity_errors=False)


class Rig:
    def __init__(self, **kw: float) -> None:
        self.clock = ManualClock()
        self.transitions: list[Transition] = []
        options = {"hold_s": 30.0, "recovery_hold_s": 10.0} | kw
        self.machine = CapacityStateMachine(on_transition=self.transitions.append, **options)

    def tick(
        self, *signals: PoolSignal, demand: float = 1.0, preferred: str = "inf2", dt: float = 1.0
    ) -> Mode:
        self.clock.advance(dt)
        return self.machine.update(
            self.clock.now(),
            signals or (ok("inf2"), ok("g5")),
            demand_per_s=demand,
            capacity_per_s=CAPACITY,
            preferred=frozenset({preferred}),
        )

    def modes(self) -> list[str]:
        return [t.new for t in self.transitions if t.subject == "mode"]


@pytest.mark.parametrize(
    ("signal", "state"),
    [
        (ok("inf2"), CapacityState.AVAILABLE),
        (capacity_errors("inf2"), CapacityState.CONSTRAINED),
        (lost_one("inf2"), CapacityState.CONSTRAINED),
        (down("inf2"), CapacityState.UNAVAILABLE),
        (PoolSignal("inf2", 2, 2, capacity_errors=False, draining=True), CapacityState.UNAVAILABLE),
    ],
    ids=["healthy", "capacity-errors", "lost-a-replica", "no-replica", "drained"],
)
def test_raw_pool_states(signal: PoolSignal, state: CapacityState) -> None:
    rig = Rig()
    rig.tick(ok("inf2"), ok("g5"))
    rig.tick(signal, ok("g5"))
    assert rig.machine.pools["inf2"] is state


def test_pool_recovers_through_recovering_after_the_hold() -> None:
    rig = Rig(recovery_hold_s=10.0)
    rig.tick()
    rig.tick(capacity_errors("inf2"), ok("g5"))
    rig.tick(ok("inf2"), ok("g5"))
    assert rig.machine.pools["inf2"] is CapacityState.RECOVERING
    for _ in range(9):
        rig.tick()
    assert rig.machine.pools["inf2"] is CapacityState.RECOVERING
    rig.tick()
    assert rig.machine.pools["inf2"] is CapacityState.AVAILABLE
    pool_moves = [(t.old, t.new) for t in rig.transitions if t.subject == "inf2"]
    assert pool_moves == [
        ("available", "constrained"),
        ("constrained", "recovering"),
        ("recovering", "available"),
    ]


def test_relapse_while_recovering_goes_back_to_constrained() -> None:
    rig = Rig()
    rig.tick()
    rig.tick(capacity_errors("inf2"), ok("g5"))
    rig.tick()
    rig.tick(capacity_errors("inf2"), ok("g5"))
    assert rig.machine.pools["inf2"] is CapacityState.CONSTRAINED


@pytest.mark.parametrize(
    "fault",
    [capacity_errors("inf2"), down("inf2"), lost_one("inf2")],
    ids=["capacity-errors", "unavailable", "lost-a-replica"],
)
def test_preferred_pool_shortfall_switches_to_capacity_mode_at_once(fault: PoolSignal) -> None:
    rig = Rig()
    assert rig.tick() is Mode.COST
    assert rig.tick(fault, ok("g5")) is Mode.CAPACITY
    reason = rig.transitions[-1].reason
    assert "inf2" in reason


def test_shortfall_in_a_pool_not_preferred_keeps_cost_mode() -> None:
    rig = Rig()
    rig.tick()
    assert rig.tick(ok("inf2"), capacity_errors("g5")) is Mode.COST
    assert rig.machine.pools["g5"] is CapacityState.CONSTRAINED


def test_returns_to_cost_mode_only_after_the_hold_once_capacity_is_back() -> None:
    rig = Rig(hold_s=30.0, recovery_hold_s=5.0)
    rig.tick()
    rig.tick(down("inf2"), ok("g5"))
    for _ in range(20):
        assert rig.tick(down("inf2"), ok("g5")) is Mode.CAPACITY
    # capacity comes back: RECOVERING counts as clear, the hold starts now
    modes = [rig.tick() for _ in range(31)]
    assert modes[:30] == [Mode.CAPACITY] * 30
    assert modes[30] is Mode.COST
    assert rig.modes() == ["capacity", "cost"]
    assert "cleared" in rig.transitions[-1].reason


def test_demand_above_the_enter_share_switches_and_the_band_prevents_flapping() -> None:
    rig = Rig(enter_share=0.9, exit_share=0.75, hold_s=10.0)
    rig.tick(demand=5.0)
    assert rig.tick(demand=9.5) is Mode.CAPACITY  # 95 % of capacity
    # demand oscillating around the enter threshold: 85 % .. 95 %, for 5 minutes
    for i in range(300):
        rig.tick(demand=8.5 if i % 2 else 9.5)
    assert rig.modes() == ["capacity"]
    # below the exit share, but not for the whole hold
    for i in range(20):
        rig.tick(demand=7.0 if i % 3 else 8.0)
    assert rig.modes() == ["capacity"]
    for _ in range(11):
        rig.tick(demand=5.0)
    assert rig.modes() == ["capacity", "cost"]


def test_oscillating_demand_below_enter_share_never_leaves_cost_mode() -> None:
    rig = Rig(enter_share=0.9, exit_share=0.75)
    for i in range(600):
        rig.tick(demand=8.9 if i % 2 else 7.0)
    assert rig.modes() == []


def test_zero_capacity_with_demand_is_a_shortfall() -> None:
    rig = Rig()
    rig.tick()
    rig.clock.advance(1)
    mode = rig.machine.update(
        rig.clock.now(), [ok("inf2")], demand_per_s=1.0, capacity_per_s=0.0, preferred=frozenset()
    )
    assert mode is Mode.CAPACITY


def test_bad_shares_are_refused() -> None:
    with pytest.raises(ValueError, match="exit_share"):
        CapacityStateMachine(enter_share=0.5, exit_share=0.8)
