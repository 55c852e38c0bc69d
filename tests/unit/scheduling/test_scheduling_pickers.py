"""Pickers: smooth weighted round-robin, round-robin, power of two choices."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.scheduling.pickers import PowerOfTwoChoices, RoundRobin, SmoothWeightedRoundRobin
from gateway.scheduling.types import ReplicaView


def shares_of(picks: list[str]) -> dict[str, float]:
    counts = Counter(picks)
    return {k: v / len(picks) for k, v in counts.items()}


@pytest.mark.parametrize(
    "weights",
    [
        {"inf2": 40.0, "trn1": 20.0, "g5-cuda": 15.0, "g5-triton": 15.0, "g6": 10.0},
        {"a": 0.7, "b": 0.2, "c": 0.1},
        {"a": 1e-6, "b": 3e-6},
        {"a": 1.0, "b": 1.0, "c": 1.0},
    ],
    ids=["paper-cost-weights", "float-shares", "tiny-scale", "equal"],
)
def test_swrr_distribution_follows_weights(weights: dict[str, float]) -> None:
    picker = SmoothWeightedRoundRobin()
    picks = [picker.pick(weights) for _ in range(10_000)]
    total = sum(weights.values())
    observed = shares_of(picks)
    for key, weight in weights.items():
        assert observed[key] == pytest.approx(weight / total, abs=0.01)


def test_swrr_is_smooth_like_nginx() -> None:
    picker = SmoothWeightedRoundRobin()
    picks = [picker.pick({"a": 5, "b": 1, "c": 1}) for _ in range(14)]
    assert "".join(picks) == "aabacaa" * 2


def test_swrr_never_bursts_beyond_share() -> None:
    picker = SmoothWeightedRoundRobin()
    picks = "".join(picker.pick({"a": 5.0, "b": 1.0, "c": 1.0}) for _ in range(700))
    # Weighted round-robin without smoothing would give runs of five a's.
    longest_run = max(len(run) for run in picks.replace("b", " ").replace("c", " ").split())
    assert longest_run < 5
    # Every window of one period holds each key exactly its weight's worth.
    for start in range(len(picks) - 7):
        window = picks[start : start + 7]
        assert (window.count("a"), window.count("b"), window.count("c")) == (5, 1, 1)


def test_swrr_never_picks_zero_or_negative_weight() -> None:
    picker = SmoothWeightedRoundRobin()
    weights = {"zero": 0.0, "neg": -3.0, "nan": float("nan"), "a": 1.0, "b": 2.0}
    picks = Counter(picker.pick(weights) for _ in range(3000))
    assert set(picks) == {"a", "b"}
    assert picks["b"] == 2 * picks["a"]


def test_swrr_all_zero_falls_back_to_equal() -> None:
    picker = SmoothWeightedRoundRobin()
    picks = Counter(picker.pick({"a": 0.0, "b": 0.0, "c": -1.0}) for _ in range(300))
    assert picks == {"a": 100, "b": 100, "c": 100}


def test_swrr_follows_weights_changing_between_calls() -> None:
    picker = SmoothWeightedRoundRobin()
    for _ in range(1000):
        picker.pick({"a": 1.0, "b": 1.0})
    after = shares_of([picker.pick({"a": 3.0, "b": 1.0}) for _ in range(1000)])
    assert after["a"] == pytest.approx(0.75, abs=0.01)
    # A drop in scale (loop weights in images/s going to shares) leaves no stale state.
    for _ in range(1000):
        picker.pick({"a": 1000.0, "b": 1.0})
    after = shares_of([picker.pick({"a": 0.001, "b": 0.003}) for _ in range(100)])
    assert after["b"] == pytest.approx(0.75, abs=0.02)


def test_swrr_keys_appear_and_disappear() -> None:
    picker = SmoothWeightedRoundRobin()
    for _ in range(100):
        picker.pick({"a": 1.0, "b": 1.0})
    picks = [picker.pick({"b": 1.0, "c": 1.0}) for _ in range(100)]
    assert "a" not in picks
    assert Counter(picks) == {"b": 50, "c": 50}
    picks = [picker.pick({"a": 1.0, "b": 1.0, "c": 1.0}) for _ in range(300)]
    assert Counter(picks) == {"a": 100, "b": 100, "c": 100}


def test_swrr_state_stays_bounded_under_churn() -> None:
    rng = random.Random(7)
    picker = SmoothWeightedRoundRobin(max_paused_keys=4)
    keys = [f"k{i}" for i in range(12)]
    for _ in range(20_000):
        chosen = rng.sample(keys, rng.randint(1, len(keys)))
        weights = {k: rng.choice([0.0, rng.random(), 100 * rng.random()]) for k in chosen}
        assert picker.pick(weights) in weights
    current = picker._current
    assert len(current) <= len(keys)
    assert sum(current.values()) == pytest.approx(0.0, abs=1e-6)
    assert max(abs(v) for v in current.values()) < len(keys)


def test_swrr_rejects_no_keys() -> None:
    with pytest.raises(ValueError, match="no keys"):
        SmoothWeightedRoundRobin().pick({})


def test_round_robin_cycles_and_survives_key_changes() -> None:
    picker = RoundRobin()
    assert [picker.pick(["b", "a", "c"]) for _ in range(6)] == list("abcabc")
    # "b" left and "d" joined: the cycle goes on after "c", where it was.
    assert [picker.pick(["c", "a", "d"]) for _ in range(4)] == list("dacd")
    assert picker.pick(["z"]) == "z"
    with pytest.raises(ValueError, match="no keys"):
        picker.pick([])


def replica(url: str, *, in_flight: int = 0, healthy: bool = True) -> ReplicaView:
    return ReplicaView(url=url, pool="p", healthy=healthy, in_flight=in_flight)


def test_p2c_prefers_less_loaded(rng: random.Random) -> None:
    picker = PowerOfTwoChoices(rng)
    pair = [replica("busy", in_flight=3), replica("idle")]
    assert {picker.pick(pair).url for _ in range(200)} == {"idle"}

    trio = [replica("idle"), replica("some", in_flight=1), replica("busy", in_flight=5)]
    picks = Counter(picker.pick(trio).url for _ in range(6000))
    # The most loaded loses every pair; the least loaded wins the 2 of 3 pairs it is in.
    assert picks["busy"] == 0
    assert picks["idle"] / 6000 == pytest.approx(2 / 3, abs=0.03)


def test_p2c_never_picks_unhealthy(rng: random.Random) -> None:
    picker = PowerOfTwoChoices(rng)
    replicas = [
        replica("sick-idle", healthy=False),
        replica("a", in_flight=4),
        replica("sick-idle-2", healthy=False),
        replica("b", in_flight=9),
    ]
    picks = Counter(picker.pick(replicas).url for _ in range(500))
    assert set(picks) <= {"a", "b"}
    assert picks["a"] == 500


def test_p2c_breaks_ties_randomly(rng: random.Random) -> None:
    picker = PowerOfTwoChoices(rng)
    replicas = [replica("a"), replica("b"), replica("c")]
    picks = Counter(picker.pick(replicas).url for _ in range(6000))
    for url in "abc":
        assert picks[url] / 6000 == pytest.approx(1 / 3, abs=0.03)


def test_p2c_single_and_none(rng: random.Random) -> None:
    picker = PowerOfTwoChoices(rng)
    only = replica("only", in_flight=100)
    assert picker.pick([only, replica("sick", healthy=False)]) is only
    with pytest.raises(ValueError, match="no healthy replica"):
        picker.pick([replica("sick", healthy=False)])


def test_p2c_custom_load(rng: random.Random) -> None:
    picker = PowerOfTwoChoices(rng)
    pair = [replica("a"), replica("b", in_flight=3)]
    chosen = {picker.pick(pair, load=lambda r: -r.load).url for _ in range(50)}
    assert chosen == {"b"}
