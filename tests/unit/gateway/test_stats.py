"""Table tests for the running statistics: Ewma and WindowCounter, with `now` passed by hand."""

from __future__ import annotations

import math

import pytest

from gateway.stats import Ewma, WindowCounter

# Ewma ------------------------------------------------------------------------


def test_ewma_is_the_prior_before_any_sample() -> None:
    ewma = Ewma(prior=0.67)
    assert ewma.value == 0.67
    assert ewma.samples == 0


@pytest.mark.parametrize(
    ("prior", "sample", "expected"),
    [
        pytest.param(1.0, 3.0, 2.0, id="slower-than-prior"),
        pytest.param(2.0, 0.0, 1.0, id="faster-than-prior"),
        pytest.param(0.5, 0.5, 0.5, id="equal-to-prior"),
    ],
)
def test_ewma_first_sample_blends_half_way(prior: float, sample: float, expected: float) -> None:
    # alpha=1 would replace the value outright: the half-way blend is a rule of its own.
    ewma = Ewma(prior=prior, alpha=1.0, alpha_up=1.0)
    assert ewma.update(sample) == pytest.approx(expected)
    assert ewma.value == pytest.approx(expected)
    assert ewma.samples == 1


@pytest.mark.parametrize(
    ("alpha", "alpha_up", "sample", "expected"),
    [
        pytest.param(0.2, 0.5, 2.0, 1.5, id="up-uses-alpha-up"),
        pytest.param(0.2, 0.5, 0.0, 0.8, id="down-uses-alpha"),
        pytest.param(0.2, 0.5, 1.0, 1.0, id="unchanged"),
        # alpha_up below alpha is raised to alpha: a slowdown never shows more slowly.
        pytest.param(0.6, 0.3, 2.0, 1.6, id="alpha-up-at-least-alpha"),
        pytest.param(0.6, 0.3, 0.0, 0.4, id="alpha-up-at-least-alpha-down"),
    ],
)
def test_ewma_moves_by_direction(
    alpha: float, alpha_up: float, sample: float, expected: float
) -> None:
    ewma = Ewma(prior=1.0, alpha=alpha, alpha_up=alpha_up)
    ewma.update(1.0)  # past the half-way first sample; the value stays 1.0
    assert ewma.update(sample) == pytest.approx(expected)
    assert ewma.samples == 2


def test_ewma_rises_faster_than_it_falls() -> None:
    up, down = Ewma(prior=1.0), Ewma(prior=1.0)
    up.update(1.0)
    down.update(1.0)
    for _ in range(3):
        up.update(2.0)
        down.update(0.0)
    # Same distance to travel; the slowdown has covered more of it.
    assert (up.value - 1.0) > (1.0 - down.value) > 0
    assert up.value == pytest.approx(2.0 - 0.5**3)
    assert down.value == pytest.approx(0.8**3)


@pytest.mark.parametrize("sample", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("seeded", [False, True], ids=["before-first", "after-first"])
def test_ewma_ignores_non_finite_samples(sample: float, seeded: bool) -> None:
    ewma = Ewma(prior=1.0)
    if seeded:
        ewma.update(3.0)
    before = (ewma.value, ewma.samples)
    assert ewma.update(sample) == before[0]
    assert (ewma.value, ewma.samples) == before


@pytest.mark.parametrize(
    ("alpha", "alpha_up"),
    [
        pytest.param(0.0, 0.5, id="alpha-zero"),
        pytest.param(-0.1, 0.5, id="alpha-negative"),
        pytest.param(1.5, 0.5, id="alpha-above-one"),
        pytest.param(math.nan, 0.5, id="alpha-nan"),
        pytest.param(0.2, 0.0, id="alpha-up-zero"),
        pytest.param(0.2, 1.01, id="alpha-up-above-one"),
    ],
)
def test_ewma_rejects_bad_alpha(alpha: float, alpha_up: float) -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        Ewma(prior=1.0, alpha=alpha, alpha_up=alpha_up)


@pytest.mark.parametrize(("alpha", "alpha_up"), [(1.0, 1.0), (0.01, 0.01)], ids=["one", "small"])
def test_ewma_accepts_alpha_bounds(alpha: float, alpha_up: float) -> None:
    assert Ewma(prior=1.0, alpha=alpha, alpha_up=alpha_up).alpha == alpha


# WindowCounter ---------------------------------------------------------------

Events = list[tuple[float, float]]  # (now, n) passed to add()


@pytest.mark.parametrize(
    ("events", "now", "expected_rate"),
    [
        pytest.param([], 5.0, 0.0, id="never-used"),
        # 10 events a second for 10 s (t = 0 .. 9), read at t = 10: the full window.
        pytest.param([(float(t), 10.0) for t in range(10)], 10.0, 10.0, id="steady-full-window"),
        # A counter 2 s old divides by 2 s, not by the 10 s window.
        pytest.param([(0.0, 5.0), (1.5, 5.0)], 2.0, 5.0, id="young-counter-not-biased-low"),
        # ...but never by less than one second.
        pytest.param([(0.0, 4.0)], 0.25, 4.0, id="first-second"),
        pytest.param([(0.0, 30.0), (15.0, 20.0)], 15.5, 2.0, id="old-bucket-dropped"),
        pytest.param([(0.0, 30.0)], 40.0, 0.0, id="all-buckets-dropped"),
        pytest.param([(3.2, 1.0), (3.7, 2.0), (3.9, 1.0)], 4.0, 4.0, id="same-bucket-summed"),
    ],
)
def test_window_counter_rate(events: Events, now: float, expected_rate: float) -> None:
    counter = WindowCounter(window_s=10.0)
    for at, n in events:
        counter.add(at, n)
    assert counter.rate(now) == pytest.approx(expected_rate)


@pytest.mark.parametrize(
    ("now", "expected_count"),
    [
        pytest.param(3.0, 6.0, id="all-in-window"),
        pytest.param(10.0, 6.0, id="oldest-exactly-one-window-old"),
        # One-second buckets: a bucket goes once all of it is older than the window.
        pytest.param(11.0, 5.0, id="first-bucket-dropped"),
        pytest.param(12.5, 3.0, id="second-bucket-dropped"),
        pytest.param(13.0, 0.0, id="all-dropped"),
    ],
)
def test_window_counter_count_drops_old_buckets(now: float, expected_count: float) -> None:
    counter = WindowCounter(window_s=10.0)
    counter.add(0.0)
    counter.add(1.0, 2.0)
    counter.add(2.9, 3.0)
    assert counter.count(now) == expected_count


def test_window_counter_keeps_counting_after_a_gap() -> None:
    counter = WindowCounter(window_s=5.0)
    counter.add(0.0, 100.0)
    counter.add(60.0, 3.0)
    assert counter.count(60.0) == 3.0
    # The counter is older than the window now: the full window divides.
    assert counter.rate(60.0) == pytest.approx(3.0 / 5.0)


@pytest.mark.parametrize("window_s", [0.0, -1.0], ids=["zero", "negative"])
def test_window_counter_rejects_non_positive_window(window_s: float) -> None:
    with pytest.raises(ValueError, match="window_s must be positive"):
        WindowCounter(window_s=window_s)
