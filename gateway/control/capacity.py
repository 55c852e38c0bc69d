"""Capacity dynamics: per-pool states and the global mode, with hysteresis.

Pool states (`CapacityState`):
- AVAILABLE -> CONSTRAINED when the pool answers with capacity errors or has
  lost replicas; -> UNAVAILABLE when no replica is healthy (or it is drained).
- CONSTRAINED / UNAVAILABLE -> RECOVERING once the condition clears;
  RECOVERING -> AVAILABLE after `recovery_hold_s` without a relapse.

Global mode (`auto` only; an operator may pin one):
- cost -> capacity when a preferred pool (one the cost-optimal plan would use)
  is CONSTRAINED or UNAVAILABLE, or demand exceeds `enter_share` of the usable
  target capacity;
- capacity -> cost only after every preferred pool is AVAILABLE or RECOVERING
  and demand is below `exit_share` of capacity, continuously for `hold_s`.

The gap between the shares and the hold time keep a demand that oscillates
around a threshold from flapping the mode. Every transition is reported with
its reason to `on_transition`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.scheduling.types import CapacityState

log = logging.getLogger("gateway.control")

BAD = (CapacityState.CONSTRAINED, CapacityState.UNAVAILABLE)


class Mode(StrEnum):
    COST = "cost"
    CAPACITY = "capacity"


@dataclass(frozen=True, slots=True)
class PoolSignal:
    """What one tick observed of a pool."""

    name: str
    healthy_replicas: int
    known_replicas: int
    capacity_errors: bool  # capacity answers seen within the hold period
    draining: bool = False

    def raw_state(self) -> CapacityState:
        if self.draining or self.healthy_replicas == 0:
            return CapacityState.UNAVAILABLE
        if self.capacity_errors or self.healthy_replicas < self.known_replicas:
            return CapacityState.CONSTRAINED
        return CapacityState.AVAILABLE

    def why(self) -> str:
        if self.draining:
            return "drained by the operator"
        if self.healthy_replicas == 0:
            return "no healthy replica"
        if self.capacity_errors:
            return "capacity errors"
        if self.healthy_replicas < self.known_replicas:
            return f"{self.healthy_replicas} of {self.known_replicas} replicas healthy"
        return "healthy"


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    subject: str  # "mode" or a pool name
    old: str
    new: str
    reason: str


TransitionListener = Callable[[Transition], None]


class CapacityStateMachine:
    """Holds pool states and the global mode; `update` once per control tick."""

    def __init__(
        self,
        *,
        enter_share: float = 0.9,
        exit_share: float = 0.75,
        hold_s: float = 30.0,
        recovery_hold_s: float = 10.0,
        on_transition: TransitionListener | None = None,
    ) -> None:
        if not 0 < exit_share <= enter_share:
            raise ValueError("need 0 < exit_share <= enter_share")
        self.enter_share = enter_share
        self.exit_share = exit_share
        self.hold_s = hold_s
        self.recovery_hold_s = recovery_hold_s
        self.on_transition = on_transition
        self.pools: dict[str, CapacityState] = {}
        self._recovering_since: dict[str, float] = {}
        self.mode = Mode.COST
        self._clear_since: float | None = None

    def update(
        self,
        now: float,
        signals: Sequence[PoolSignal],
        *,
        demand_per_s: float,
        capacity_per_s: float,
        preferred: frozenset[str],
    ) -> Mode:
        """Advance every pool's state and the mode; returns the mode."""
        for signal in signals:
            self._update_pool(now, signal)
        bad = sorted(p for p in preferred if self.pools.get(p) in BAD)
        load = demand_per_s / capacity_per_s if capacity_per_s > 0 else float("inf")
        if demand_per_s <= 0:
            load = 0.0
        if self.mode is Mode.COST:
            if bad:
                self._set_mode(
                    now,
                    Mode.CAPACITY,
                    f"preferred pool {', '.join(bad)} "
                    + "/".join(self.pools[p].value for p in bad),
                )
            elif load > self.enter_share:
                self._set_mode(now, Mode.CAPACITY, f"demand at {load:.0%} of usable capacity")
            return self.mode
        clear = not bad and load < self.exit_share
        if not clear:
            self._clear_since = None
        elif self._clear_since is None:
            self._clear_since = now
        elif now - self._clear_since >= self.hold_s:
            self._set_mode(now, Mode.COST, f"shortfall cleared for {now - self._clear_since:.0f} s")
        return self.mode

    def _update_pool(self, now: float, signal: PoolSignal) -> None:
        current = self.pools.get(signal.name)
        raw = signal.raw_state()
        if current is None:
            self.pools[signal.name] = raw
            return
        new = current
        if raw in BAD:
            new = raw
        elif current in BAD:
            new = CapacityState.RECOVERING
            self._recovering_since[signal.name] = now
        elif current is CapacityState.RECOVERING:
            since = self._recovering_since.get(signal.name, now)
            if now - since >= self.recovery_hold_s:
                new = CapacityState.AVAILABLE
        if new is not current:
            reason = (
                signal.why()
                if raw in BAD
                else ("condition cleared" if new is CapacityState.RECOVERING else "stable")
            )
            self.pools[signal.name] = new
            self._emit(Transition(now, signal.name, current.value, new.value, reason))

    def _set_mode(self, now: float, mode: Mode, reason: str) -> None:
        old = self.mode
        self.mode = mode
        self._clear_since = None
        self._emit(Transition(now, "mode", old.value, mode.value, reason))

    def _emit(self, transition: Transition) -> None:
        log.info(
            "%s: %s -> %s (%s)",
            transition.subject,
            transition.old,
            transition.new,
            transition.reason,
        )
        if self.on_transition is not None:
            self.on_transition(transition)
