"""Pickers: the last stage, which turns weights or loads into one choice.

Pickers hold only their own small state (current weights, a cursor, a seeded
random generator); they read no clock and do no I/O. They are not thread-safe:
one policy instance serves one event loop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gateway.scheduling.types import ReplicaView


class KeyPicker(Protocol):
    """Chooses one key of a weight mapping."""

    def pick(self, weights: Mapping[str, float]) -> str: ...


class ReplicaPicker(Protocol):
    """Chooses one healthy replica."""

    def pick(
        self,
        replicas: Sequence[ReplicaView],
        load: Callable[[ReplicaView], float] | None = None,
    ) -> ReplicaView: ...


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin over string keys, with float weights.

    Each call adds every key's weight to its current weight, picks the key with
    the largest current weight (first in mapping order on a tie) and subtracts
    the total from it. Over any run of picks each key's share follows its
    weight, and a heavy key is interleaved with light ones rather than picked
    in a burst (weights 5, 1, 1 give a, a, b, a, c, a, a).

    - Weights are divided by their total on every call, so their scale does not
      matter and a change of scale between calls leaves no stale state behind.
    - Keys with a zero, negative or non-finite weight are never picked, unless
      no key has a positive weight: then every key counts with equal weight.
    - Keys may appear and disappear between calls. A new key starts at 0. A key
      that is absent, or has no positive weight, is paused: its current weight
      is kept, so a pool excluded for one retry keeps its place in the cycle.
      Paused state is dropped once more than `max_paused_keys` keys are paused.

    The current weights, paused ones included, always sum to 0: each call adds
    1 (the normalised total) and takes 1 from the picked key. Raises
    ValueError on an empty mapping.
    """

    def __init__(self, max_paused_keys: int = 64) -> None:
        self._current: dict[str, float] = {}
        self._max_paused_keys = max_paused_keys

    def pick(self, weights: Mapping[str, float]) -> str:
        if not weights:
            raise ValueError("no keys to pick from")
        active = {k: w for k, w in weights.items() if math.isfinite(w) and w > 0.0}
        if not active:
            active = dict.fromkeys(weights, 1.0)
        total = math.fsum(active.values())

        current = self._current
        for key in active:
            current.setdefault(key, 0.0)
        if len(current) > len(active) + self._max_paused_keys:
            current = self._forget_paused(active)

        best_key = ""
        best_value = -math.inf
        for key, weight in active.items():
            value = current[key] + weight / total
            current[key] = value
            if value > best_value:
                best_key, best_value = key, value
        current[best_key] -= 1.0
        return best_key

    def _forget_paused(self, active: Mapping[str, float]) -> dict[str, float]:
        # Re-centre on the survivors so the current weights again sum to 0,
        # which is what keeps them bounded; their order is unchanged.
        kept = {k: self._current[k] for k in active}
        mean = math.fsum(kept.values()) / len(kept)
        self._current = {k: v - mean for k, v in kept.items()}
        return self._current


class RoundRobin:
    """Plain round-robin over string keys, robust to the key set changing.

    It remembers the last key it returned and picks the smallest key greater
    than it, wrapping to the smallest key: every present key is visited once
    per cycle in sorted order, even when keys join or leave between calls.
    O(len(keys)) per call, no sorting. Raises ValueError on no keys.
    """

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, keys: Sequence[str]) -> str:
        if not keys:
            raise ValueError("no keys to pick from")
        smallest = min(keys)
        last = self._last
        following = None
        if last is not None:
            for key in keys:
                if key > last and (following is None or key < following):
                    following = key
        chosen = following if following is not None else smallest
        self._last = chosen
        return chosen


class PowerOfTwoChoices:
    """Power of two choices: of two distinct random healthy replicas, the less loaded wins.

    Load defaults to `ReplicaView.load` (outstanding work per slot, slow start
    included); `load` overrides it, e.g. to penalise a constrained pool. Ties
    go to either with equal chance. One healthy replica is returned as is.
    Raises ValueError when no replica is healthy.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(
        self,
        replicas: Sequence[ReplicaView],
        load: Callable[[ReplicaView], float] | None = None,
    ) -> ReplicaView:
        healthy = [r for r in replicas if r.healthy]
        count = len(healthy)
        if count == 0:
            raise ValueError("no healthy replica to pick from")
        if count == 1:
            return healthy[0]
        rng = self._rng
        i = rng.randrange(count)
        j = rng.randrange(count - 1)
        if j >= i:
            j += 1
        first, second = healthy[i], healthy[j]
        load_of = load if load is not None else _replica_load
        load_first, load_second = _sane(load_of(first)), _sane(load_of(second))
        if load_first == load_second:
            # i and j are already a uniformly random ordered pair, so on a tie
            # the first is a fair coin flip without another draw.
            return first
        return first if load_first < load_second else second


def _replica_load(replica: ReplicaView) -> float:
    return replica.load


def _sane(load: float) -> float:
    """NaN compares false both ways; count it as the worst load instead."""
    return math.inf if math.isnan(load) else load
